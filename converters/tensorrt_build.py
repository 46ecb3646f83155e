"""ONNX -> TensorRT engine, strongly typed, with a JSON manifest beside it.

One code path for TensorRT 10.3 (Jetson, JetPack 6.1/6.2), later 10.x and 11.x:

- the network is created with ``1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)``,
  so precision comes from the ONNX file alone (FP32, FP16 casts or INT8 Q/DQ): no precision
  builder flags and no calibrator, which 11.x removed;
- enum members are used by name only (10.x and 11.x number them differently), optional features
  are probed with ``hasattr`` before use, and nothing 11.x removed is called;
- a parser failure lists each error with its node name and operator; a ``None`` from the builder
  is an error carrying what TensorRT logged;
- the engine and its manifest are written through temporary files and renamed only after a
  successful build, so a failed build never replaces a good engine.

Stages of :func:`build_engine`: resolve options -> import and gate TensorRT -> read the ONNX
file -> parse -> configure (profile, workspace, level, TF32, compatibility, timing cache) ->
build -> save the timing cache -> write engine and manifest.

Nothing here has run against a real TensorRT: it was checked against stand-in ``tensorrt``
modules exposing the 10.3 and the 11.x Python surfaces (tests/trt).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fmabs_edge.artefacts import (
    INPUT_NAME,
    atomic_output,
    check_contract,
    graph_sha256,
    load_onnx,
    read_metadata,
)
from fmabs_edge.artefacts import write_bytes_atomic
from fmabs_edge.errors import ModelError, UsageError
from fmabs_edge.runtime.cuda_buffers import CudaBackend, open_cuda
from fmabs_edge.runtime.engine_manifest import (
    EngineManifest,
    EngineMismatchError,
    EngineProfile,
    check_manifest,
    manifest_path,
    parse_version,
    read_manifest,
    utc_now,
)
from fmabs_edge.runtime.trt_runner import import_tensorrt, make_logger, probe_platform

logger = logging.getLogger(__name__)

#: Defaults, resolved in :func:`resolve_build_options` only.
DEFAULT_MIN_BATCH = 1
DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 8
#: TensorRT's builder optimisation levels (its own default is 3).
OPTIMIZATION_LEVELS = range(0, 6)
#: AMPERE_PLUS engines can only be built on Ampere or newer; VERSION_COMPATIBLE needs Volta+.
AMPERE = (8, 0)
VOLTA = (7, 0)


@dataclass(frozen=True)
class BuildOptions:
    """Every build setting after defaults are resolved (see :func:`resolve_build_options`)."""

    min_batch: int
    opt_batch: int
    max_batch: int
    #: Workspace pool limit in MiB; None leaves TensorRT's default (the device's memory).
    workspace_mb: int | None
    timing_cache: Path | None
    #: 0..5; None leaves TensorRT's default (3).
    builder_optimization_level: int | None
    hardware_compatibility: bool
    version_compatible: bool
    #: Forbid TF32 math in FP32 layers (parity with ONNX Runtime's FP32).
    clear_tf32: bool


def resolve_profile(
    min_batch: int | None = None, opt_batch: int | None = None, max_batch: int | None = None
) -> tuple[int, int, int]:
    """The optimisation profile ``(min, opt, max)`` on the batch dimension.

    ``min`` defaults to 1; ``max`` to the larger of :data:`DEFAULT_MAX_BATCH`, ``min`` and
    ``opt``; ``opt`` to :data:`DEFAULT_OPT_BATCH` clamped into ``[min, max]``. Given values must
    satisfy ``1 <= min <= opt <= max``. Pure: no TensorRT needed.
    """
    for name, value in (
        ("min_batch", min_batch),
        ("opt_batch", opt_batch),
        ("max_batch", max_batch),
    ):
        if value is not None and int(value) < 1:
            raise UsageError(f"{name} must be at least 1, got {value}.")
    low = DEFAULT_MIN_BATCH if min_batch is None else int(min_batch)
    high = int(max_batch) if max_batch is not None else max(DEFAULT_MAX_BATCH, low, opt_batch or 0)
    opt = int(opt_batch) if opt_batch is not None else min(max(DEFAULT_OPT_BATCH, low), high)
    if not low <= opt <= high:
        raise UsageError(
            f"Batch profile must satisfy min <= opt <= max, got min={low}, opt={opt}, max={high}. "
            "Change --min-batch/--opt-batch/--max-batch."
        )
    return low, opt, high


def resolve_build_options(
    precision: str,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    builder_optimization_level: int | None = None,
    hardware_compatibility: bool = False,
    version_compatible: bool = False,
    clear_tf32: bool | None = None,
) -> BuildOptions:
    """Resolve every ``None`` to its default, in this one place, and validate the values.

    ``clear_tf32=None`` clears TF32 for FP32 graphs (``precision`` starting with ``fp32``),
    which are the parity reference, and leaves TensorRT's default for FP16/INT8 graphs.
    """
    low, opt, high = resolve_profile(min_batch, opt_batch, max_batch)
    if low > 1:
        logger.warning(
            "Profile min batch %d: 'run', 'eval' and the benchmark need batches of 1 and will "
            "refuse this engine; use --min-batch 1 for serving.",
            low,
        )
    if workspace_mb is not None and int(workspace_mb) < 1:
        raise UsageError(f"workspace_mb must be at least 1 MiB, got {workspace_mb}.")
    if (
        builder_optimization_level is not None
        and int(builder_optimization_level) not in OPTIMIZATION_LEVELS
    ):
        raise UsageError(
            "builder_optimization_level must be one of 0..5 (TensorRT's default 3), got "
            f"{builder_optimization_level}."
        )
    if clear_tf32 is None:
        clear_tf32 = precision.strip().lower().startswith("fp32")
    return BuildOptions(
        min_batch=low,
        opt_batch=opt,
        max_batch=high,
        workspace_mb=None if workspace_mb is None else int(workspace_mb),
        timing_cache=Path(timing_cache) if timing_cache is not None else None,
        builder_optimization_level=(
            None if builder_optimization_level is None else int(builder_optimization_level)
        ),
        hardware_compatibility=bool(hardware_compatibility),
        version_compatible=bool(version_compatible),
        clear_tf32=bool(clear_tf32),
    )


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    builder_optimization_level: int | None = None,
    hardware_compatibility: bool = False,
    version_compatible: bool = False,
    clear_tf32: bool | None = None,
    rebuild_if_stale: bool = False,
    cuda: str | CudaBackend | None = None,
    device: int = 0,
) -> EngineManifest:
    """Build ``engine_path`` (and ``<engine_path>.json``) from an fmabs-edge ONNX file.

    ``rebuild_if_stale``: keep an existing engine whose manifest matches this TensorRT, this GPU,
    this ONNX graph and these options, and build only otherwise. ``cuda``/``device`` pick the
    CUDA binding used to read the GPU's name and compute capability. Returns the manifest.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)

    # Resolve what can be checked without TensorRT.
    if engine_path.suffix.lower() == ".onnx":
        raise UsageError(
            f"--out {engine_path} would overwrite an ONNX file; name the engine MODEL.engine."
        )
    trt = import_tensorrt("'fmabs-edge build'")
    model = load_onnx(onnx_path)
    metadata = read_metadata(model, str(onnx_path))
    check_contract(model, str(onnx_path), metadata.image_size)
    options = resolve_build_options(
        metadata.precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        builder_optimization_level=builder_optimization_level,
        hardware_compatibility=hardware_compatibility,
        version_compatible=version_compatible,
        clear_tf32=clear_tf32,
    )
    graph_hash = graph_sha256(model)
    del model

    backend = open_cuda(cuda, device)
    owns_cuda = not isinstance(cuda, CudaBackend)
    try:
        platform = probe_platform(trt, backend)
        if rebuild_if_stale:
            current = _up_to_date(engine_path, onnx_path, platform, options)
            if current is not None:
                return current
        with backend.current():
            plan, input_hw = _build_plan(trt, onnx_path, options, platform)
    finally:
        if owns_cuda:
            backend.close()

    manifest = EngineManifest(
        engine_file=engine_path.name,
        engine_sha256=hashlib.sha256(plan).hexdigest(),
        engine_nbytes=len(plan),
        built_on=platform,
        profile=EngineProfile(
            options.min_batch, options.opt_batch, options.max_batch, INPUT_NAME, input_hw
        ),
        precision=metadata.precision,
        onnx_path=str(onnx_path.resolve()),
        onnx_graph_sha256=graph_hash,
        metadata=metadata.to_dict(),
        hardware_compatibility="AMPERE_PLUS" if options.hardware_compatibility else "NONE",
        version_compatible=options.version_compatible,
        tf32=not options.clear_tf32,
        builder_optimization_level=options.builder_optimization_level,
        workspace_mb=options.workspace_mb,
        timing_cache=str(options.timing_cache.resolve()) if options.timing_cache else None,
        built_at=utc_now(),
    )
    # Engine first, manifest second: a crash in between leaves a manifest whose sha256 no
    # longer matches, which check_manifest reports as a mismatch rather than loading blindly.
    with (
        atomic_output(manifest_path(engine_path)) as manifest_temp,
        atomic_output(engine_path) as engine_temp,
    ):
        engine_temp.write_bytes(plan)
        manifest_temp.write_text(manifest.to_json())
    logger.info(
        "Wrote %s (%.1f MB, %s, batch %d/%d/%d) and its manifest",
        engine_path,
        len(plan) / 1e6,
        metadata.precision,
        options.min_batch,
        options.opt_batch,
        options.max_batch,
    )
    return manifest


def rebuild_from_manifest(
    engine_path: str | Path,
    manifest: EngineManifest | None,
    onnx_path: str | Path | None = None,
    cuda: str | CudaBackend | None = None,
) -> EngineManifest:
    """Rebuild an engine here with the options its manifest records (defaults without one)."""
    source = onnx_path or (manifest.onnx_path if manifest else None)
    if source is None or not Path(source).is_file():
        raise ModelError(
            f"Cannot rebuild {engine_path}: its source ONNX file ({source or 'unknown'}) is not "
            "available. Pass the ONNX file (onnx=... / fmabs-edge build MODEL.onnx --out ENGINE)."
        )
    if manifest is None:
        return build_engine(source, engine_path, cuda=cuda)
    profile = manifest.profile
    return build_engine(
        source,
        engine_path,
        min_batch=profile.min_batch,
        opt_batch=profile.opt_batch,
        max_batch=profile.max_batch,
        workspace_mb=manifest.workspace_mb,
        timing_cache=manifest.timing_cache,
        builder_optimization_level=manifest.builder_optimization_level,
        hardware_compatibility=manifest.hardware_compatibility != "NONE",
        version_compatible=manifest.version_compatible,
        clear_tf32=not manifest.tf32,
        cuda=cuda,
    )


def _up_to_date(
    engine_path: Path, onnx_path: Path, platform: Any, options: BuildOptions
) -> EngineManifest | None:
    """The existing engine's manifest if it fits this platform, graph and options; else None."""
    manifest = read_manifest(engine_path) if engine_path.is_file() else None
    if manifest is None:
        return None
    try:
        check_manifest(engine_path, manifest, platform, onnx_path=onnx_path)
    except EngineMismatchError as err:
        logger.info("Rebuilding: %s", err)
        return None
    wanted = (
        (options.min_batch, options.opt_batch, options.max_batch),
        "AMPERE_PLUS" if options.hardware_compatibility else "NONE",
        options.version_compatible,
        not options.clear_tf32,
        options.builder_optimization_level,
        options.workspace_mb,
    )
    profile = manifest.profile
    existing = (
        (profile.min_batch, profile.opt_batch, profile.max_batch),
        manifest.hardware_compatibility,
        manifest.version_compatible,
        manifest.tf32,
        manifest.builder_optimization_level,
        manifest.workspace_mb,
    )
    if existing != wanted or parse_version(manifest.built_on.tensorrt_version) != parse_version(
        platform.tensorrt_version
    ):
        logger.info(
            "Rebuilding %s: it was built with other options or another TensorRT.", engine_path
        )
        return None
    logger.info(
        "%s is up to date (same TensorRT, GPU, graph and options); not rebuilt.", engine_path
    )
    return manifest


# -- the TensorRT calls ----------------------------------------------------------------------


def _build_plan(
    trt: ModuleType, onnx_path: Path, options: BuildOptions, platform: Any
) -> tuple[bytes, tuple[int, int]]:
    """Parse, configure and build; returns the serialised plan and the input's ``(H, W)``."""
    trt_logger = make_logger(trt)
    builder = trt.Builder(trt_logger)
    # 10.x and 11.x differ: STRONGLY_TYPED is 1 in 10.x and 0 in 11.x (where it is ignored, all
    # networks being strongly typed); computing the mask from the member is right on both.
    # EXPLICIT_BATCH is never used: ignored since 10.0, removed from 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)

    # Parse: report every error with its node name and operator. 10.x and 11.x differ:
    # supports_model and parse_with_weight_descriptors are gone in 11.x; parse_from_file is in both.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path}: "
            + ("; ".join(errors) or trt_logger.summary())
            + ". Unsupported operators need another export; a uint8 tensor may only feed a Cast."
        )
    input_hw = _network_input_hw(network, onnx_path)

    # Configure.
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    height, width = input_hw
    profile.set_shape(
        INPUT_NAME,
        (options.min_batch, height, width, 3),
        (options.opt_batch, height, width, 3),
        (options.max_batch, height, width, 3),
    )
    if config.add_optimization_profile(profile) < 0:
        raise ModelError(f"TensorRT rejected the batch profile {options}: {trt_logger.summary()}")
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if options.clear_tf32:
        # TF32 stays a builder flag in 11.x (same name and value); the precision flags (FP16,
        # INT8, ...) and int8_calibrator are gone in 11.x and never used here.
        config.clear_flag(trt.BuilderFlag.TF32)
    _configure_compatibility(trt, config, options, platform)
    cache = _load_timing_cache(config, options.timing_cache)

    # Build.
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path}: "
            f"{trt_logger.summary()}. Likely causes: too little workspace (raise --workspace-mb), "
            "an operator without a kernel on this GPU, or GPU memory taken by another process."
        )
    data = bytes(memoryview(plan))

    # Save the timing cache (after the build it holds this build's timings too).
    if options.timing_cache is not None and cache is not None:
        write_bytes_atomic(
            options.timing_cache, bytes(memoryview(config.get_timing_cache().serialize()))
        )
        logger.info("Saved timing cache %s", options.timing_cache)
    return data, input_hw


def _describe_parser_error(error: Any) -> str:
    """``node 'name' (Op): description [CODE]`` for one ``ParserError``."""
    name = error.node_name() or f"#{error.node()}"
    code = getattr(error.code(), "name", str(error.code()))
    return f"node '{name}' ({error.node_operator() or 'unknown op'}): {error.desc()} [{code}]"


def _network_input_hw(network: Any, onnx_path: Path) -> tuple[int, int]:
    """``(H, W)`` of the parsed network's ``images`` input, found by name."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    by_name = {tensor.name: tensor for tensor in inputs}
    if INPUT_NAME not in by_name:
        raise ModelError(
            f"{onnx_path}: the parsed network has no input '{INPUT_NAME}' "
            f"(found {sorted(by_name)})."
        )
    shape = tuple(by_name[INPUT_NAME].shape)
    if len(shape) != 4 or shape[3] != 3 or min(shape[1:3]) <= 0:
        raise ModelError(
            f"{onnx_path}: input '{INPUT_NAME}' has shape {shape}; "
            "expected (N, H, W, 3), H and W fixed."
        )
    return int(shape[1]), int(shape[2])


def _configure_compatibility(
    trt: ModuleType, config: Any, options: BuildOptions, platform: Any
) -> None:
    """Hardware and version compatibility, each probed and refused clearly where unsupported."""
    capability = parse_version(platform.compute_capability)
    if options.hardware_compatibility:
        if not hasattr(trt, "HardwareCompatibilityLevel") or not hasattr(
            config, "hardware_compatibility_level"
        ):
            raise UsageError(
                f"TensorRT {trt.__version__} has no hardware compatibility; drop "
                "--hardware-compatibility."
            )
        if capability < AMPERE:
            raise UsageError(
                f"--hardware-compatibility (AMPERE_PLUS) needs an Ampere or newer GPU to build on; "
                f"this one is compute {platform.compute_capability}."
            )
        # AMPERE_PLUS exists in 10.3 and 11.x; SAME_COMPUTE_CAPABILITY only from 10.9 (not used).
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            raise UsageError(f"TensorRT {trt.__version__} cannot build version-compatible engines.")
        if capability < VOLTA:
            raise UsageError(
                "--version-compatible needs a Volta or newer GPU; this one is compute "
                f"{platform.compute_capability}."
            )
        # 10.x and 11.x differ: VERSION_COMPATIBLE is 13 in 10.3 and 12 in 11.x; set by name only.
        # The lean runtime stays embedded (EXCLUDE_LEAN_RUNTIME not set), so the runner only has
        # to allow host code when deserialising.
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    """Attach a timing cache (loaded from ``path`` when it exists); None when no path is given."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch has no default in the bindings; False refuses a cache from another device.
    if not config.set_timing_cache(cache, False):
        logger.warning(
            "Timing cache %s was made on another device or TensorRT; starting a fresh one.", path
        )
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    elif data:
        logger.info("Loaded timing cache %s (%d bytes)", path, len(data))
    return cache
