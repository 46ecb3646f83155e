"""Engine manifest checks made before deserialising (CPU only; no TensorRT involved).

A fake engine file (random bytes) and a hand-made manifest stand for a built engine; each test
tampers with one fact and expects the check to refuse it with "built with ... / running ..."
and the rebuild command.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from fmabs_edge.artefacts import graph_sha256, load_onnx
from fmabs_edge.errors import ModelError
from fmabs_edge.runtime.engine_manifest import (
    EngineManifest,
    EngineMismatchError,
    EngineProfile,
    Platform,
    check_manifest,
    compute_capability_supported,
    jetpack_for,
    manifest_path,
    read_l4t_release,
    read_manifest,
    update_manifest_operating_point,
    version_combination_supported,
    write_manifest,
)


def _platform(**changes) -> Platform:
    values = dict(
        tensorrt_version="10.3.0.30",
        compute_capability="8.7",
        gpu_name="Orin",
        machine="aarch64",
        system="Linux",
    )
    values.update(changes)
    return Platform(**values)


@pytest.fixture
def engine(tmp_path: Path, contract_onnx) -> tuple[Path, EngineManifest, Path]:
    """``(engine_path, manifest, onnx_path)`` with the manifest written beside the engine."""
    onnx_path = contract_onnx()
    data = bytes(range(256)) * 40
    path = tmp_path / "model.engine"
    path.write_bytes(data)
    model = load_onnx(onnx_path)
    from fmabs_edge.artefacts import read_metadata

    manifest = EngineManifest(
        engine_file=path.name,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_nbytes=len(data),
        built_on=_platform(),
        profile=EngineProfile(1, 4, 8, "images", (16, 16)),
        precision="fp32",
        onnx_path=str(onnx_path),
        onnx_graph_sha256=graph_sha256(model),
        metadata=read_metadata(model, "test").to_dict(),
        timing_cache="/tmp/cache.bin",
    )
    write_manifest(manifest, manifest_path(path))
    return path, manifest, onnx_path


def test_matching_manifest_passes(engine) -> None:
    path, manifest, onnx_path = engine
    check = check_manifest(path, read_manifest(path), _platform(), onnx_path=onnx_path)
    assert check.manifest == manifest
    assert check.host_code_allowed is False


def test_other_tensorrt_version_is_refused_with_rebuild_command(engine) -> None:
    path, manifest, onnx_path = engine
    with pytest.raises(EngineMismatchError) as caught:
        check_manifest(path, manifest, _platform(tensorrt_version="10.4.0.26"))
    message = str(caught.value)
    assert "built with TensorRT 10.3.0.30 / running TensorRT 10.4.0.26" in message
    assert f"fmabs-edge build {onnx_path} --out {path}" in message
    assert "--min-batch 1 --opt-batch 4 --max-batch 8" in message
    assert "--timing-cache /tmp/cache.bin" in message
    assert caught.value.can_rebuild


def test_tampered_version_in_the_manifest_file_is_refused(engine) -> None:
    path, _, _ = engine
    raw = json.loads(manifest_path(path).read_text())
    raw["built_on"]["tensorrt_version"] = "10.7.0.23"
    manifest_path(path).write_text(json.dumps(raw))
    with pytest.raises(
        EngineMismatchError, match="built with TensorRT 10.7.0.23 / running TensorRT 10.3.0.30"
    ):
        check_manifest(path, read_manifest(path), _platform())


def test_other_compute_capability_is_refused(engine) -> None:
    path, manifest, _ = engine
    with pytest.raises(
        EngineMismatchError,
        match=r"built with compute capability 8\.7 \(Orin\) / running compute "
        r"capability 8\.6 \(RTX 3090\)",
    ):
        check_manifest(path, manifest, _platform(compute_capability="8.6", gpu_name="RTX 3090"))


def test_hardware_compatible_engine_runs_on_a_newer_ampere_but_not_on_turing(engine) -> None:
    path, manifest, _ = engine
    manifest.hardware_compatibility = "AMPERE_PLUS"
    check_manifest(path, manifest, _platform(compute_capability="8.9", gpu_name="L4"))
    with pytest.raises(EngineMismatchError, match="hardware compatibility AMPERE_PLUS"):
        check_manifest(path, manifest, _platform(compute_capability="7.5"))


def test_other_cpu_architecture_is_refused(engine) -> None:
    path, manifest, _ = engine
    with pytest.raises(EngineMismatchError, match="not portable across platforms"):
        check_manifest(path, manifest, _platform(machine="x86_64"))


def test_changed_graph_is_refused_but_a_threshold_change_is_not(engine, contract_onnx) -> None:
    path, manifest, onnx_path = engine
    from fmabs_edge.threshold import write_operating_point

    write_operating_point(onnx_path, 0.123, "refit", 10)
    check_manifest(path, manifest, _platform(), onnx_path=onnx_path)

    contract_onnx(onnx_path.name, size=24)  # same file name, another graph
    with pytest.raises(EngineMismatchError, match="built from ONNX graph"):
        check_manifest(path, manifest, _platform(), onnx_path=onnx_path)


def test_truncated_engine_is_refused(engine) -> None:
    path, manifest, _ = engine
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(
        EngineMismatchError, match="truncated: manifest says 10240 bytes, file has 1000"
    ):
        check_manifest(path, manifest, _platform())


def test_corrupt_engine_of_the_same_size_is_refused(engine) -> None:
    path, manifest, _ = engine
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match="differs from the one its manifest describes"):
        check_manifest(path, manifest, _platform())


def test_empty_and_missing_engines_are_refused(engine, tmp_path: Path) -> None:
    path, manifest, _ = engine
    with pytest.raises(EngineMismatchError, match="not found"):
        check_manifest(tmp_path / "absent.engine", None, _platform())
    path.write_bytes(b"")
    with pytest.raises(EngineMismatchError, match="empty"):
        check_manifest(path, manifest, _platform())


def test_missing_manifest_is_a_warning(engine, caplog: pytest.LogCaptureFixture) -> None:
    path, _, _ = engine
    manifest_path(path).unlink()
    assert read_manifest(path) is None
    with caplog.at_level(logging.WARNING):
        check = check_manifest(path, None, _platform())
    assert check.manifest is None
    assert "no manifest" in caplog.text and "TensorRT's own check" in caplog.text


def test_unreadable_manifest_is_a_model_error(engine) -> None:
    path, _, _ = engine
    manifest_path(path).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_manifest(path)
    manifest_path(path).write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelError, match="newer than this fmabs-edge"):
        read_manifest(path)


def test_version_compatible_engine_allows_host_code_on_a_newer_runtime(engine) -> None:
    path, manifest, _ = engine
    manifest.version_compatible = True
    check = check_manifest(path, manifest, _platform(tensorrt_version="11.1.0.106"))
    assert check.host_code_allowed


@pytest.mark.parametrize(
    ("built", "running", "vc", "ok"),
    [
        ("10.3.0.30", "10.3.0.30", False, True),
        ("10.3.0.30", "10.3.0.31", False, False),
        ("10.3.0.30", "10.8.0.43", True, True),
        ("10.8.0.43", "10.3.0.30", True, False),  # newer-built never runs on an older runtime
        ("10.3.0.30", "11.1.0.106", True, True),  # the one supported cross-major combination
        ("10.3.0.30", "11.1.0.106", False, False),
        ("11.1.0.106", "10.16.0.1", True, False),
        ("11.0.0.1", "11.1.0.106", True, True),
        ("10.3.0.30", "12.0.0.1", True, False),
    ],
)
def test_version_rules(built: str, running: str, vc: bool, ok: bool) -> None:
    assert version_combination_supported(built, running, vc) is ok


def test_compute_capability_rules() -> None:
    assert compute_capability_supported("8.7", "8.7", "NONE")
    assert not compute_capability_supported("8.6", "8.7", "NONE")
    assert not compute_capability_supported("8.6", "8.7", "SAME_COMPUTE_CAPABILITY")
    assert compute_capability_supported("8.6", "9.0", "AMPERE_PLUS")
    assert not compute_capability_supported("8.6", "7.5", "AMPERE_PLUS")


def test_l4t_release_is_read_from_nv_tegra_release(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: x\n"
    )
    assert read_l4t_release(release) == "36.4.0"
    assert jetpack_for("36.4.0") == "6.1/6.2"
    assert jetpack_for("36.3.0") == "6.0"
    assert read_l4t_release(tmp_path / "absent") is None


def test_operating_point_update_touches_only_the_threshold(engine) -> None:
    path, manifest, onnx_path = engine
    before = path.read_bytes()
    updated = update_manifest_operating_point(
        path, threshold=0.75, threshold_rule="refit on 50 good images"
    )
    assert updated.model_metadata().threshold == 0.75
    reread = read_manifest(path)
    assert reread.model_metadata().threshold_rule == "refit on 50 good images"
    assert reread.onnx_graph_sha256 == manifest.onnx_graph_sha256
    assert reread.engine_sha256 == manifest.engine_sha256
    assert path.read_bytes() == before
    check_manifest(path, reread, _platform(), onnx_path=onnx_path)
