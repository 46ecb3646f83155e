"""The JSON manifest beside every TensorRT engine, and the check made before deserialising one.

TensorRT has no API that says which version or GPU built a plan (see TENSORRT.md §5), and a
mismatched plan only shows up as ``deserialize_cuda_engine`` returning None with a logged message.
So ``fmabs-edge build`` writes ``MODEL.engine.json`` next to ``MODEL.engine`` with:

- what built it: TensorRT, CUDA runtime and driver versions, GPU name, compute capability, CPU
  architecture and OS, the Jetson L4T/JetPack release where ``/etc/nv_tegra_release`` exists;
- how: optimisation profile, hardware/version compatibility, TF32, optimisation level,
  workspace, timing cache, precision;
- from what: the ONNX file's path and graph hash (:func:`fmabs_edge.artefacts.graph_sha256`,
  which excludes metadata, so re-fitting the threshold never makes an engine stale) and its
  :class:`~fmabs_edge.metadata.ModelMetadata`;
- the engine's own size and sha256, so truncation or corruption is found before TensorRT sees it.

The runner takes the operating point (threshold) from the manifest's metadata;
:func:`update_manifest_operating_point` rewrites that and nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmabs_edge import __version__
from fmabs_edge.artefacts import write_text_atomic
from fmabs_edge.errors import ModelError
from fmabs_edge.metadata import ModelMetadata, sha256_file

logger = logging.getLogger(__name__)

#: Bumped whenever a manifest field changes meaning; readers refuse newer formats.
MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".json"
L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")

#: L4T release (major.minor) -> JetPack release. JetPack 6.0 shipped TensorRT 8.6 and is refused;
#: 6.1 and 6.2 ship TensorRT 10.3. From NVIDIA's JetPack archive as remembered, not re-checked
#: this session (TENSORRT.md §5 marks the 6.0/8.6 pairing UNCONFIRMED); the TensorRT version
#: itself is what the code gates on.
JETPACK_FOR_L4T = {"36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2"}

#: Hardware-compatibility levels (TensorRT enum member names) that fmabs-edge records.
HARDWARE_LEVELS = ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")


class EngineMismatchError(ModelError):
    """An engine cannot be used here (other TensorRT/GPU, other graph, corrupt or truncated).

    ``rebuild_command`` is the ``fmabs-edge build`` line that makes a fitting engine;
    ``can_rebuild`` says whether the ONNX file it needs is known.
    """

    def __init__(self, message: str, rebuild_command: str, can_rebuild: bool) -> None:
        super().__init__(message)
        self.rebuild_command = rebuild_command
        self.can_rebuild = can_rebuild


@dataclass
class Platform:
    """Where an engine was built, or where it is about to run."""

    #: ``trt.__version__``, e.g. ``"10.3.0.30"``.
    tensorrt_version: str
    #: ``"8.7"``.
    compute_capability: str
    gpu_name: str = ""
    cuda_runtime_version: str | None = None
    cuda_driver_version: str | None = None
    #: ``platform.machine()`` and ``platform.system()``: plans are not portable across them.
    machine: str = field(default_factory=platform.machine)
    system: str = field(default_factory=platform.system)
    #: ``"36.4.0"`` on Jetson (from /etc/nv_tegra_release), else None.
    l4t_release: str | None = None
    jetpack_release: str | None = None

    def describe(self) -> str:
        """One phrase: ``TensorRT 10.3.0.30 on Orin (compute 8.7, aarch64, L4T 36.4.0)``."""
        extra = [f"compute {self.compute_capability}", self.machine]
        if self.l4t_release:
            extra.append(f"L4T {self.l4t_release}")
        gpu = self.gpu_name or "an unnamed GPU"
        return f"TensorRT {self.tensorrt_version} on {gpu} ({', '.join(extra)})"


@dataclass
class EngineProfile:
    """The optimisation profile on the dynamic batch of input ``input_name`` ``(N, H, W, 3)``."""

    min_batch: int
    opt_batch: int
    max_batch: int
    input_name: str = "images"
    #: ``(H, W)`` of the input frames (the camera size when the ONNX file resizes in the graph).
    input_hw: tuple[int, int] = (0, 0)


@dataclass
class EngineManifest:
    """Everything known about one engine file; stored as ``<engine>.json``."""

    engine_file: str
    engine_sha256: str
    engine_nbytes: int
    built_on: Platform
    profile: EngineProfile
    precision: str
    onnx_path: str
    onnx_graph_sha256: str
    #: The ONNX file's ModelMetadata as a dict; its threshold is the engine's operating point.
    metadata: dict[str, Any]
    #: A HardwareCompatibilityLevel member name (one of :data:`HARDWARE_LEVELS`).
    hardware_compatibility: str = "NONE"
    version_compatible: bool = False
    #: Whether FP32 layers were allowed TF32 math (cleared for FP32 parity builds).
    tf32: bool = True
    builder_optimization_level: int | None = None
    workspace_mb: int | None = None
    timing_cache: str | None = None
    built_at: str = ""
    fmabs_edge_version: str = __version__
    format: int = MANIFEST_FORMAT

    # -- serialisation -------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "EngineManifest":
        """Parse a manifest; ModelError naming ``source`` if it is not one this version reads."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelError(f"{source}: engine manifest is not valid JSON ({err}).") from err
        if not isinstance(data, dict):
            raise ModelError(f"{source}: engine manifest is not a JSON object.")
        fmt = int(data.get("format", 0))
        if fmt > MANIFEST_FORMAT:
            raise ModelError(
                f"{source}: manifest format {fmt} is newer than this fmabs-edge reads "
                f"({MANIFEST_FORMAT}); upgrade fmabs-edge."
            )
        try:
            profile = dict(data.pop("profile"))
            profile["input_hw"] = tuple(profile.get("input_hw", (0, 0)))
            return cls(
                built_on=Platform(**data.pop("built_on")), profile=EngineProfile(**profile), **data
            )
        except (KeyError, TypeError) as err:
            raise ModelError(
                f"{source}: engine manifest is missing or has unknown fields ({err})."
            ) from err

    def model_metadata(self) -> ModelMetadata:
        return ModelMetadata.from_dict(self.metadata, f"{self.engine_file} manifest")


def manifest_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + MANIFEST_SUFFIX)


def read_manifest(engine_path: str | Path) -> EngineManifest | None:
    """The manifest beside ``engine_path``, or None if there is none."""
    path = manifest_path(engine_path)
    if not path.is_file():
        return None
    return EngineManifest.from_json(path.read_text(), str(path))


def write_manifest(manifest: EngineManifest, path: str | Path) -> None:
    """Write ``manifest`` to ``path`` atomically (a failure keeps the old file)."""
    write_text_atomic(path, manifest.to_json())


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- platform probing ------------------------------------------------------------------------


def read_l4t_release(path: Path = L4T_RELEASE_FILE) -> str | None:
    """``"36.4.0"`` from a Jetson's ``/etc/nv_tegra_release``; None elsewhere or if unreadable.

    The file's first line reads like ``# R36 (release), REVISION: 4.0, GCID: ..., BOARD: ...``.
    """
    try:
        first_line = path.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first_line)
    if not match:
        logger.warning("%s: unrecognised L4T release line %r", path, first_line)
        return None
    return f"{match.group(1)}.{match.group(2)}"


def jetpack_for(l4t_release: str | None) -> str | None:
    """The JetPack release for an L4T release, where :data:`JETPACK_FOR_L4T` knows it."""
    if not l4t_release:
        return None
    return JETPACK_FOR_L4T.get(".".join(l4t_release.split(".")[:2]))


# -- compatibility rules ---------------------------------------------------------------------


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; trailing non-numeric parts are dropped."""
    parts = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    if not parts:
        raise ModelError(f"Cannot read a TensorRT version from '{version}'.")
    return tuple(parts)


def version_combination_supported(built: str, running: str, version_compatible: bool) -> bool:
    """Whether a plan built by TensorRT ``built`` deserialises on TensorRT ``running``.

    A standard plan needs the identical version (major, minor, patch, build). A version-compatible
    plan (``BuilderFlag.VERSION_COMPATIBLE``) also runs on a newer runtime of the same major and,
    across majors, a TensorRT 10 plan on a TensorRT 11 runtime; a plan never runs on an older
    runtime (TensorRT 11.1 "engine compatibility" and 11.4 support-matrix pages).
    """
    built_v, running_v = parse_version(built), parse_version(running)
    width = min(len(built_v), len(running_v))
    if built_v[:width] == running_v[:width]:
        return True
    if not version_compatible or running_v < built_v:
        return False
    if built_v[0] == running_v[0]:
        return True
    # 10.x and 11.x differ: across majors only a 10.x version-compatible plan runs on 11.x.
    return (built_v[0], running_v[0]) == (10, 11)


def compute_capability_supported(built: str, running: str, hardware_compatibility: str) -> bool:
    """Whether a plan built for compute capability ``built`` runs on ``running``.

    ``NONE`` and ``SAME_COMPUTE_CAPABILITY`` need the same capability; ``AMPERE_PLUS`` runs on
    any GPU of compute capability 8.0 or newer.
    """
    if built == running:
        return True
    if hardware_compatibility == "AMPERE_PLUS":
        return parse_version(running) >= (8, 0)
    return False


def rebuild_command(
    engine_path: str | Path, manifest: EngineManifest | None, onnx_path: str | Path | None = None
) -> str:
    """The ``fmabs-edge build`` line that rebuilds ``engine_path`` here with the same options."""
    source = onnx_path or (manifest.onnx_path if manifest else None) or "MODEL.onnx"
    parts = ["fmabs-edge", "build", _quote(source), "--out", _quote(engine_path)]
    if manifest is not None:
        profile = manifest.profile
        parts += ["--min-batch", str(profile.min_batch), "--opt-batch", str(profile.opt_batch)]
        parts += ["--max-batch", str(profile.max_batch)]
        if manifest.workspace_mb is not None:
            parts += ["--workspace-mb", str(manifest.workspace_mb)]
        if manifest.builder_optimization_level is not None:
            parts += ["--builder-optimization-level", str(manifest.builder_optimization_level)]
        if manifest.timing_cache:
            parts += ["--timing-cache", _quote(manifest.timing_cache)]
        if manifest.hardware_compatibility != "NONE":
            parts.append("--hardware-compatibility")
        if manifest.version_compatible:
            parts.append("--version-compatible")
    return " ".join(parts)


def _quote(value: str | Path) -> str:
    text = str(value)
    return f"'{text}'" if re.search(r"[^\w@%+=:,./-]", text) else text


@dataclass
class EngineCheck:
    """What :func:`check_manifest` decided for an engine that may be loaded."""

    manifest: EngineManifest | None
    #: Set ``runtime.engine_host_code_allowed = True`` (a version-compatible plan embeds
    #: its lean runtime, which is host code).
    host_code_allowed: bool = False
    notes: list[str] = field(default_factory=list)


def check_manifest(
    engine_path: str | Path,
    manifest: EngineManifest | None,
    running: Platform,
    onnx_path: str | Path | None = None,
    verify_sha256: bool = True,
) -> EngineCheck:
    """Decide, before deserialising, whether ``engine_path`` can run on ``running``.

    Raises :class:`EngineMismatchError` listing every problem found (another TensorRT version or
    compute capability, another CPU architecture/OS, another ONNX graph than ``onnx_path``, or an
    engine file that is truncated or differs from the one the manifest describes), each as
    "built with … / running …", followed by the rebuild command. A missing manifest is a
    warning:
    TensorRT's own check at deserialisation is then the only one.
    """
    engine_path = Path(engine_path)
    command = rebuild_command(engine_path, manifest, onnx_path)
    can_rebuild = bool(onnx_path or (manifest and Path(manifest.onnx_path).is_file()))
    if not engine_path.is_file():
        raise EngineMismatchError(
            f"Engine file not found: {engine_path}. Build it with: {command}", command, can_rebuild
        )
    size = engine_path.stat().st_size
    if size == 0:
        raise EngineMismatchError(
            f"{engine_path} is empty (0 bytes). Rebuild it with: {command}", command, can_rebuild
        )

    if manifest is None:
        message = (
            f"{engine_path}: no manifest ({manifest_path(engine_path).name}); cannot check which "
            "TensorRT/GPU built it, so only TensorRT's own check at load time applies. "
            "Engines built with 'fmabs-edge build' have one."
        )
        logger.warning(message)
        return EngineCheck(manifest=None, notes=[message])

    problems = _file_problems(engine_path, manifest, size, verify_sha256)
    built = manifest.built_on
    if (built.machine, built.system) != (running.machine, running.system):
        problems.append(
            f"built on {built.system}/{built.machine} / running on "
            f"{running.system}/{running.machine} "
            "(plans are not portable across platforms)"
        )
    if not version_combination_supported(
        built.tensorrt_version, running.tensorrt_version, manifest.version_compatible
    ):
        how = (
            "a version-compatible plan"
            if manifest.version_compatible
            else "a standard plan (needs the same version)"
        )
        problems.append(
            f"built with TensorRT {built.tensorrt_version} / running TensorRT "
            f"{running.tensorrt_version}: {how}"
        )
    if not compute_capability_supported(
        built.compute_capability, running.compute_capability, manifest.hardware_compatibility
    ):
        problems.append(
            f"built with compute capability {built.compute_capability} "
            f"({built.gpu_name or 'unknown GPU'}) / "
            f"running compute capability {running.compute_capability} "
            f"({running.gpu_name or 'unknown GPU'}); "
            f"hardware compatibility {manifest.hardware_compatibility}"
        )
    if onnx_path is not None and Path(onnx_path).is_file():
        problems += _graph_problems(Path(onnx_path), manifest)

    if problems:
        raise EngineMismatchError(
            f"{engine_path} cannot be used here: "
            + "; ".join(problems)
            + f". Rebuild it with: {command} "
            "(or open it with rebuild_if_stale / --rebuild-if-stale to rebuild automatically).",
            command,
            can_rebuild,
        )

    check = EngineCheck(manifest=manifest)
    if parse_version(built.tensorrt_version) != parse_version(running.tensorrt_version):
        check.host_code_allowed = True
        check.notes.append(
            f"version-compatible plan built with TensorRT {built.tensorrt_version}, "
            f"running on {running.tensorrt_version}"
        )
    if (
        manifest.hardware_compatibility == "NONE"
        and built.gpu_name
        and built.gpu_name != running.gpu_name
    ):
        check.notes.append(
            f"built on {built.gpu_name}, running on {running.gpu_name} (same compute capability); "
            "TensorRT may refuse or run slower - rebuild on this GPU for best results"
        )
    for note in check.notes:
        logger.info("%s: %s", engine_path, note)
    return check


def _file_problems(
    engine_path: Path, manifest: EngineManifest, size: int, verify_sha256: bool
) -> list[str]:
    if size != manifest.engine_nbytes:
        state = "truncated" if size < manifest.engine_nbytes else "longer than built"
        return [
            f"engine file {state}: manifest says {manifest.engine_nbytes} bytes, file has {size}"
        ]
    if verify_sha256 and sha256_file(engine_path) != manifest.engine_sha256:
        return [
            "engine file differs from the one its manifest describes (corrupt, or replaced "
            "without its manifest)"
        ]
    return []


def _graph_problems(onnx_path: Path, manifest: EngineManifest) -> list[str]:
    from fmabs_edge.artefacts import graph_sha256, load_onnx

    current = graph_sha256(load_onnx(onnx_path))
    if current == manifest.onnx_graph_sha256:
        return []
    return [
        f"built from ONNX graph {manifest.onnx_graph_sha256[:12]} / {onnx_path} now has graph "
        f"{current[:12]} (the model changed; a threshold change alone never changes this hash)"
    ]


# -- operating point -------------------------------------------------------------------------


def update_manifest_operating_point(
    engine_path: str | Path, threshold: float, threshold_rule: str
) -> EngineManifest:
    """Set the threshold (and its rule) in an engine's manifest metadata; nothing else changes.

    The engine file, its hash and the graph hash stay as they are, so the engine stays valid.
    """
    path = manifest_path(engine_path)
    manifest = read_manifest(engine_path)
    if manifest is None:
        raise ModelError(
            f"{engine_path} has no manifest ({path.name}), so it has no stored operating point to "
            "change; rebuild it with 'fmabs-edge build' or pass --threshold when running it."
        )
    metadata = manifest.model_metadata()
    metadata.threshold = float(threshold)
    metadata.threshold_rule = str(threshold_rule)
    manifest.metadata = metadata.to_dict()
    write_manifest(manifest, path)
    logger.info("%s: operating point set to %.6g (%s)", path, threshold, threshold_rule)
    return manifest
