"""Static check: every ``trt.<name>`` the package uses exists in TensorRT 10.3 *and* 11.x.

The package is scanned with ``ast`` for attribute chains rooted at a name ``trt`` (the one name
the code binds ``tensorrt`` to). Names probed with ``hasattr(trt..., "name")`` need to exist in
one of the two surfaces only (that is what probing is for), but not in none (a typo).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trt_standin
import trt_surfaces

REPO = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("fmabs_edge", "converters", "runtime", "calib", "benchmarks")
VERSIONS = tuple(trt_surfaces.VERSIONS)


def _chain(node: ast.Attribute) -> list[str] | None:
    """``trt.A.B`` -> ``["A", "B"]``; None when the chain is not rooted at ``trt``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt":
        return parts[::-1]
    return None


def _scan() -> tuple[dict[tuple[str, ...], list[str]], dict[tuple[str, ...], list[str]]]:
    """``(uses, probes)``: attribute chains (first two names) and hasattr probes, with locations."""
    uses: dict[tuple[str, ...], list[str]] = {}
    probes: dict[tuple[str, ...], list[str]] = {}
    for folder in PACKAGE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = lambda node: f"{path.relative_to(REPO)}:{node.lineno}"  # noqa: E731
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and not isinstance(
                    getattr(node, "_parent", None), ast.Attribute
                ):
                    chain = _chain(node)
                    if chain:
                        key = tuple(
                            part
                            for part in chain[:2]
                            if not part.startswith("__") or part == "__version__"
                        )
                        uses.setdefault(key, []).append(where(node))
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", "") == "hasattr"
                    and len(node.args) == 2
                ):
                    target, name = node.args
                    owner = [] if isinstance(target, ast.Name) and target.id == "trt" else None
                    if isinstance(target, ast.Attribute):
                        owner = _chain(target)
                    if owner is not None and isinstance(name, ast.Constant):
                        probes.setdefault((*owner, name.value), []).append(where(node))
                for child in ast.iter_child_nodes(node):
                    child._parent = node  # type: ignore[attr-defined]
    return uses, probes


def _exists(version: str, key: tuple[str, ...]) -> bool:
    if not key or key[0] not in trt_surfaces.MODULE[version]:
        return False
    return len(key) == 1 or key[1] in trt_surfaces.attribute_names(version, key[0])


USES, PROBES = _scan()


def test_the_scan_finds_the_tensorrt_code() -> None:
    expected = {
        ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
        ("BuilderFlag", "TF32"),
        ("BuilderFlag", "VERSION_COMPATIBLE"),
        ("TensorIOMode", "INPUT"),
        ("MemoryPoolType", "WORKSPACE"),
        ("Runtime",),
        ("OnnxParser",),
    }
    assert expected <= set(USES), sorted(USES)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_used_name_exists_in_the_surface(version: str) -> None:
    missing = {".".join(key): places for key, places in USES.items() if not _exists(version, key)}
    assert not missing, f"names absent from TensorRT {version}: {missing}"


def test_probed_names_exist_in_at_least_one_surface() -> None:
    for key, places in PROBES.items():
        assert any(
            _exists(v, key) for v in VERSIONS
        ), f"probe of a name no version has: {key} at {places}"


def test_no_code_names_explicit_batch_or_precision_flags() -> None:
    forbidden = {
        "EXPLICIT_BATCH",
        "FP16",
        "INT8",
        "BF16",
        "FP8",
        "INT4",
        "int8_calibrator",
        "platform_has_fast_fp16",
    }
    used = {name for key in USES for name in key} | {name for key in PROBES for name in key}
    assert not (used & forbidden)


@pytest.mark.parametrize("version", VERSIONS)
def test_stand_in_exposes_exactly_its_surface(version: str) -> None:
    module = trt_standin.make_tensorrt(version)
    public = {name for name in vars(module) if not name.startswith("_")} | {"__version__"}
    assert public == trt_surfaces.MODULE[version]


def test_surfaces_record_the_documented_differences() -> None:
    old, new = trt_surfaces.ENUMS["10.3"], trt_surfaces.ENUMS["11.1"]
    assert old["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 1
    assert new["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"] == 0
    assert "EXPLICIT_BATCH" not in new["NetworkDefinitionCreationFlag"]
    assert (old["BuilderFlag"]["VERSION_COMPATIBLE"], new["BuilderFlag"]["VERSION_COMPATIBLE"]) == (
        13,
        12,
    )
    assert "FP16" in old["BuilderFlag"] and "FP16" not in new["BuilderFlag"]
    assert "SAME_COMPUTE_CAPABILITY" not in old["HardwareCompatibilityLevel"]
    assert "SAME_COMPUTE_CAPABILITY" in new["HardwareCompatibilityLevel"]
    members = trt_surfaces.MEMBERS
    assert "platform_has_fast_fp16" in members["10.3"]["Builder"] - members["11.1"]["Builder"]
    assert (
        "all_shape_inputs_specified"
        in members["10.3"]["IExecutionContext"] - members["11.1"]["IExecutionContext"]
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_stand_in_objects_refuse_names_outside_their_surface(version: str) -> None:
    module = trt_standin.make_tensorrt(version)
    builder = module.Builder(module.Logger(module.Logger.WARNING))
    config = builder.create_builder_config()
    with pytest.raises(AttributeError, match="no attribute 'not_a_tensorrt_name'"):
        builder.not_a_tensorrt_name  # noqa: B018
    if version == "11.1":
        with pytest.raises(AttributeError):
            builder.platform_has_fast_fp16  # noqa: B018
        with pytest.raises(AttributeError):
            config.int8_calibrator = None
        with pytest.raises(AttributeError):
            module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # noqa: B018
    else:
        with pytest.raises(AttributeError):
            module.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY  # noqa: B018
