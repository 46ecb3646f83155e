"""A model -> a Triton Inference Server model repository (``config.pbtxt`` plus ``1/model.*``).

Layout written by :func:`export_triton`::

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.plan     (platform "tensorrt_plan",    from a TensorRT engine)
    REPO/<name>/1/model.onnx     (platform "onnxruntime_onnx", from an ONNX file)

``config.pbtxt`` declares the inputs and outputs with their names and data types taken from the
model; with ``max_batch_size > 0`` their ``dims`` leave out the batch dimension, and the rank-1
per-image score ``image_score (N,)``, which has nothing left, is declared ``dims: [ 1 ]`` with
``reshape: { shape: [ ] }`` (Triton shows ``(N, 1)`` to clients and feeds ``(N,)`` to the model).
Dynamic batching is on with a preferred batch size, and the operating point and the model's
identity are ``parameters`` (``string_value``).

What is checked for a plan, from the engine's manifest (``MODEL.engine.json``): the engine file is
the one the manifest describes (size, sha256); its optimisation profile starts at batch 1
(Triton sends batches of any size from 1 to ``max_batch_size``) and ``max_batch_size`` is at most
the profile's maximum; given the TensorRT version inside the target Triton release
(``triton_tensorrt_version``), that the plan deserialises there. What cannot be checked here: that
the Triton host has the GPU (compute capability) the plan was built for, and which TensorRT a
Triton release ships (see NVIDIA's framework support matrix); both are listed in the report.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

from fmabs_edge import __version__
from fmabs_edge.artefacts import (
    INPUT_NAME,
    MAP_OUTPUT,
    SCORE_OUTPUT,
    check_contract,
    graph_sha256,
    load_onnx,
    read_metadata,
)
from fmabs_edge.errors import ModelError, UsageError
from fmabs_edge.metadata import ModelMetadata, sha256_file

logger = logging.getLogger(__name__)

#: ONNX element type -> Triton data type.
ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
PLAN_SUFFIXES = (".engine", ".plan", ".trt")
INSTANCE_KINDS = ("auto", "gpu", "cpu")
DEFAULT_MAX_BATCH = 8
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``dims`` is the full shape with -1 for a dynamic dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass
class ModelIO:
    """A model's inputs and outputs and whether its first dimension is a dynamic batch."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool


@dataclass
class TritonExport:
    """What :func:`export_triton` wrote and decided; ``unchecked`` lists what is left to the user."""

    model_dir: Path
    config_path: Path
    model_file: Path
    platform: str
    max_batch_size: int
    preferred_batch_sizes: list[int]
    parameters: dict[str, str]
    checks: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "config": str(self.config_path),
            "model_file": str(self.model_file),
            "platform": self.platform,
            "max_batch_size": self.max_batch_size,
            "preferred_batch_sizes": self.preferred_batch_sizes,
            "parameters": self.parameters,
            "checks": self.checks,
            "unchecked": self.unchecked,
        }


# ----------------------------------------------------------------------------------------------
# reading the model's I/O


def onnx_io(model: onnx.ModelProto, source: str) -> ModelIO:
    """Names, Triton data types and shapes of an ONNX graph's inputs and outputs."""
    initializers = {i.name for i in model.graph.initializer}

    def spec(info: onnx.ValueInfoProto) -> TensorSpec:
        elem = info.type.tensor_type.elem_type
        if elem not in ONNX_TO_TRITON:
            raise ModelError(
                f"{source}: tensor '{info.name}' has ONNX type {elem}, which Triton cannot declare."
            )
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in info.type.tensor_type.shape.dim
        )
        return TensorSpec(info.name, ONNX_TO_TRITON[elem], dims)

    inputs = [spec(i) for i in model.graph.input if i.name not in initializers]
    outputs = [spec(o) for o in model.graph.output]
    firsts = [t.dims[0] for t in inputs + outputs if t.dims]
    return ModelIO(inputs, outputs, dynamic_batch=bool(firsts) and all(d == -1 for d in firsts))


def contract_io(image_size: int, input_hw: tuple[int, int]) -> ModelIO:
    """The fmabs-edge contract's I/O (for an engine whose ONNX file is not at hand)."""
    return ModelIO(
        [TensorSpec(INPUT_NAME, "TYPE_UINT8", (-1, int(input_hw[0]), int(input_hw[1]), 3))],
        [
            TensorSpec(MAP_OUTPUT, "TYPE_FP32", (-1, 1, image_size, image_size)),
            TensorSpec(SCORE_OUTPUT, "TYPE_FP32", (-1,)),
        ],
        dynamic_batch=True,
    )


# ----------------------------------------------------------------------------------------------
# config.pbtxt


def render_config(
    name: str,
    platform: str,
    io: ModelIO,
    max_batch_size: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instance_kind: str,
    instance_count: int,
    parameters: dict[str, str],
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""

    def tensor(spec: TensorSpec) -> str:
        dims = list(spec.dims[1:] if max_batch_size > 0 else spec.dims)
        lines = [f'    name: "{spec.name}"', f"    data_type: {spec.data_type}"]
        if dims:
            lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
        else:  # (N,) with batching: Triton needs one dim; reshape to the model's rank-1 tensor
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        return "  {\n" + "\n".join(lines) + "\n  }"

    text = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(tensor(t) for t in io.inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(t) for t in io.outputs) + "\n]",
    ]
    if max_batch_size > 0:
        sizes = ", ".join(str(s) for s in preferred_batch_sizes)
        text.append(
            f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}"
        )
    if instance_kind != "auto":
        group = f"count: {instance_count}\n    kind: KIND_{instance_kind.upper()}"
        text.append(f"instance_group [\n  {{\n    {group}\n  }}\n]")
    for key, value in parameters.items():
        text.append(
            f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{_escape(value)}" }}\n}}'
        )
    return "\n".join(text) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` with Triton's own protobuf definitions (needs ``tritonclient``)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        from fmabs_edge.errors import missing_extra

        raise missing_extra("tritonclient", "triton", "Checking a Triton config.pbtxt") from err
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise ModelError(f"config.pbtxt does not parse as Triton's ModelConfig: {err}") from err


def check_config(config: Any, io: ModelIO) -> list[str]:
    """Problems of a parsed ``ModelConfig`` against the model's I/O (empty list: consistent).

    Checks names, data types, ``dims`` without the batch dimension when ``max_batch_size > 0``,
    the reshape of rank-1 outputs, and preferred batch sizes within ``1..max_batch_size``.
    """
    from tritonclient.grpc import model_config_pb2

    problems = []
    batching = config.max_batch_size > 0
    if batching and not io.dynamic_batch:
        problems.append("max_batch_size > 0 but the model's first dimension is not a dynamic batch")
    for kind, declared, specs in (
        ("input", config.input, io.inputs),
        ("output", config.output, io.outputs),
    ):
        by_name = {t.name: t for t in declared}
        if set(by_name) != {s.name for s in specs}:
            problems.append(
                f"{kind} names {sorted(by_name)} != model {sorted(s.name for s in specs)}"
            )
            continue
        for spec in specs:
            entry = by_name[spec.name]
            dtype = model_config_pb2.DataType.Name(entry.data_type)
            if dtype != spec.data_type:
                problems.append(
                    f"{kind} '{spec.name}': data_type {dtype} != model {spec.data_type}"
                )
            expected = list(spec.dims[1:] if batching else spec.dims)
            if not expected:
                if (
                    list(entry.dims) != [1]
                    or not entry.HasField("reshape")
                    or list(entry.reshape.shape)
                ):
                    problems.append(
                        f"{kind} '{spec.name}': rank-1 tensor needs dims [1] and reshape {{ shape: [] }}"
                    )
            elif list(entry.dims) != expected:
                problems.append(
                    f"{kind} '{spec.name}': dims {list(entry.dims)} != model {expected}"
                )
    if batching and config.HasField("dynamic_batching"):
        bad = [
            s
            for s in config.dynamic_batching.preferred_batch_size
            if not 1 <= s <= config.max_batch_size
        ]
        if bad:
            problems.append(f"preferred_batch_size {bad} outside 1..{config.max_batch_size}")
    return problems


# ----------------------------------------------------------------------------------------------
# the export


def export_triton(
    model: str | Path,
    out: str | Path,
    name: str | None = None,
    onnx_path: str | Path | None = None,
    max_batch_size: int | None = None,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = 100,
    instance_kind: str = "auto",
    instance_count: int = 1,
    threshold: float | None = None,
    pixel_threshold: float | None = None,
    min_defect_area: int = 0,
    triton_tensorrt_version: str | None = None,
    overwrite: bool = False,
) -> TritonExport:
    """Write ``out/<name>/`` for an ONNX file (ONNX Runtime) or an engine (TensorRT plan).

    ``model``: ``.onnx``, or ``.engine``/``.plan``/``.trt`` (its manifest ``MODEL.engine.json``
    supplies the profile and metadata; ``onnx_path`` names the ONNX file it was built from when
    the manifest's path is not valid here). ``name``: the Triton model name (default: the file
    stem). ``max_batch_size``: default the engine profile's maximum, or 8 for ONNX.
    ``preferred_batch_sizes``: default the profile's optimum and maximum (ONNX: the maximum).
    ``instance_kind``: ``auto`` (Triton decides), ``gpu`` or ``cpu``; plans are always GPU.
    ``threshold``/``pixel_threshold``/``min_defect_area``: the operating point written as
    parameters (default: the model's threshold, the same for pixels, 0 px).
    ``triton_tensorrt_version``: the TensorRT version of the target Triton release, checked
    against the engine's. An existing ``out/<name>`` is replaced only with ``overwrite``.
    """
    model = Path(model)
    if not model.is_file():
        raise UsageError(f"Model file not found: {model}.")
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", model.stem)
    if not _NAME.match(name):
        raise UsageError(f"Triton model name '{name}' must be letters, digits, '_', '.' or '-'.")
    if instance_kind not in INSTANCE_KINDS:
        raise UsageError(
            f"instance_kind '{instance_kind}' unknown; choose one of {INSTANCE_KINDS}."
        )
    if max_queue_delay_us < 0 or instance_count < 1 or min_defect_area < 0:
        raise UsageError(
            "max_queue_delay_us and min_defect_area must be >= 0 and instance_count >= 1."
        )

    is_plan = model.suffix.lower() in PLAN_SUFFIXES
    if is_plan:
        plan = _plan_facts(model, onnx_path, max_batch_size, triton_tensorrt_version)
        io, metadata, limit, default_preferred = (
            plan["io"],
            plan["metadata"],
            plan["max_batch"],
            plan["preferred"],
        )
        checks, unchecked, extra = plan["checks"], plan["unchecked"], plan["parameters"]
        platform, file_name = "tensorrt_plan", "model.plan"
        instance_kind = "gpu" if instance_kind == "auto" else instance_kind
        if instance_kind != "gpu":
            raise UsageError(
                "A TensorRT plan runs on the GPU only; use instance_kind 'gpu' or 'auto'."
            )
    else:
        if model.suffix.lower() != ".onnx":
            raise UsageError(
                f"{model}: expected an .onnx file or an engine ({', '.join(PLAN_SUFFIXES)})."
            )
        graph = load_onnx(model)
        metadata = read_metadata(graph, str(model))
        check_contract(graph, str(model), metadata.image_size)
        _refuse_external_data(graph, model)
        io = onnx_io(graph, str(model))
        limit = max_batch_size or DEFAULT_MAX_BATCH
        default_preferred = [limit]
        checks = ["ONNX file follows the fmabs-edge contract (names, dtypes, ranks)"]
        unchecked = []
        extra = {"fmabs_edge.model_hash": graph_sha256(graph)}
        platform, file_name = "onnxruntime_onnx", "model.onnx"

    if io.dynamic_batch:
        if limit < 1:
            raise UsageError(f"max_batch_size must be at least 1, got {limit}.")
        preferred = sorted(set(preferred_batch_sizes or default_preferred))
        if not preferred or not all(1 <= s <= limit for s in preferred):
            raise UsageError(
                f"preferred batch sizes {preferred} must lie in 1..{limit} (max_batch_size)."
            )
    else:
        limit, preferred = 0, []
        unchecked.append(
            "the model's batch dimension is fixed: max_batch_size 0, no dynamic batching"
        )

    image_threshold = metadata.threshold if threshold is None else float(threshold)
    parameters = {
        "fmabs_edge.threshold": _number(image_threshold),
        "fmabs_edge.threshold_rule": (
            metadata.threshold_rule if threshold is None else "set at export-triton"
        ),
        "fmabs_edge.pixel_threshold": _number(
            image_threshold if pixel_threshold is None else float(pixel_threshold)
        ),
        "fmabs_edge.min_defect_area": str(int(min_defect_area)),
        "fmabs_edge.image_size": str(metadata.image_size),
        "fmabs_edge.precision": metadata.precision,
        "fmabs_edge.score_reduction": metadata.scoring.reduction,
        "fmabs_edge.version": __version__,
        **extra,
    }
    if not math.isfinite(image_threshold):
        unchecked.append(
            "the model has no decision threshold (inf): fit one with 'fmabs-edge threshold'"
        )

    text = render_config(
        name,
        platform,
        io,
        limit,
        preferred,
        max_queue_delay_us,
        instance_kind,
        instance_count,
        parameters,
    )
    checks += _self_check(text, io, unchecked)
    model_dir = _write_repository(Path(out), name, text, model, file_name, overwrite)
    result = TritonExport(
        model_dir,
        model_dir / "config.pbtxt",
        model_dir / "1" / file_name,
        platform,
        limit,
        preferred,
        parameters,
        checks,
        unchecked,
    )
    for item in unchecked:
        logger.warning("export-triton: not checked: %s", item)
    return result


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _refuse_external_data(graph: onnx.ModelProto, model: Path) -> None:
    for tensor in graph.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            # TODO(fmabs): copy external weights into a model.onnx directory (#6)
            raise ModelError(
                f"{model} keeps weights in external files; export it as one file for Triton."
            )


def _plan_facts(
    engine: Path,
    onnx_path: str | Path | None,
    max_batch_size: int | None,
    triton_tensorrt_version: str | None,
) -> dict[str, Any]:
    """Checks and I/O for a TensorRT engine, from its manifest (and its ONNX file if present)."""
    from fmabs_edge.runtime.engine_manifest import (
        parse_version,
        read_manifest,
        version_combination_supported,
    )

    manifest = read_manifest(engine)
    checks, unchecked = [], []
    onnx_file = Path(onnx_path) if onnx_path else None
    if manifest is None:
        if onnx_file is None or max_batch_size is None:
            raise ModelError(
                f"{engine} has no manifest ({engine.name}.json), so its profile and metadata are unknown. "
                "Build engines with 'fmabs-edge build', or pass the ONNX file it was built from (--onnx) "
                "and --max-batch-size."
            )
        graph = load_onnx(onnx_file)
        metadata = read_metadata(graph, str(onnx_file))
        io = onnx_io(graph, str(onnx_file))
        unchecked += [
            "no engine manifest: the optimisation profile must cover batch 1..max_batch_size",
            "no engine manifest: the TensorRT version that built the plan is unknown",
        ]
        return {
            "io": io,
            "metadata": metadata,
            "max_batch": max_batch_size,
            "preferred": [max_batch_size],
            "checks": checks,
            "unchecked": unchecked,
            "parameters": {},
        }

    # the engine file is the one the manifest describes
    size = engine.stat().st_size
    if size != manifest.engine_nbytes or sha256_file(engine) != manifest.engine_sha256:
        raise ModelError(
            f"{engine} is not the engine its manifest describes (size {size} vs {manifest.engine_nbytes} bytes, or "
            "another sha256): corrupt, truncated or replaced. Rebuild it with 'fmabs-edge build'."
        )
    checks.append("engine file matches its manifest (size and sha256)")

    # the profile: Triton sends any batch from 1 to max_batch_size
    profile = manifest.profile
    if profile.min_batch != 1:
        raise ModelError(
            f"{engine}: its optimisation profile starts at batch {profile.min_batch}, but Triton sends batches "
            f"as small as 1. Rebuild with --min-batch 1 (e.g. fmabs-edge build MODEL.onnx --min-batch 1 "
            f"--max-batch {profile.max_batch})."
        )
    limit = profile.max_batch if max_batch_size is None else max_batch_size
    if limit > profile.max_batch:
        raise UsageError(
            f"max_batch_size {limit} is above the engine profile's maximum {profile.max_batch}; "
            f"use at most {profile.max_batch} or rebuild with a larger --max-batch."
        )
    checks.append(f"profile covers batch 1..{profile.max_batch} (max_batch_size {limit})")

    # the TensorRT version of the target Triton release
    built = manifest.built_on.tensorrt_version
    if triton_tensorrt_version:
        parse_version(triton_tensorrt_version)
        if not version_combination_supported(
            built, triton_tensorrt_version, manifest.version_compatible
        ):
            raise ModelError(
                f"{engine} was built with TensorRT {built}; a Triton release with TensorRT {triton_tensorrt_version} "
                "cannot load it (a standard plan needs the identical version; a version-compatible plan a newer "
                "runtime). Build the engine inside the Triton container's TensorRT, or pick the Triton release "
                f"that ships TensorRT {built}."
            )
        checks.append(
            f"TensorRT {built} plan loads on the target's TensorRT {triton_tensorrt_version}"
        )
    else:
        unchecked.append(
            f"the plan was built with TensorRT {built}: the Triton release must ship this exact version "
            "(pass triton_tensorrt_version / --triton-tensorrt-version to check)"
        )
    cc = manifest.built_on.compute_capability
    unchecked.append(
        f"the plan was built for compute capability {cc} ({manifest.built_on.gpu_name or 'unknown GPU'}, "
        f"hardware compatibility {manifest.hardware_compatibility}): the Triton host's GPU must match"
    )

    metadata = ModelMetadata.from_dict(manifest.metadata, f"{engine} manifest")
    onnx_file = onnx_file or Path(manifest.onnx_path)
    if onnx_file.is_file():
        graph = load_onnx(onnx_file)
        if graph_sha256(graph) != manifest.onnx_graph_sha256:
            raise ModelError(
                f"{onnx_file} is not the graph {engine} was built from (graph hash differs)."
            )
        io = onnx_io(graph, str(onnx_file))
        checks.append(f"I/O from {onnx_file} (graph hash matches the manifest)")
    else:
        io = contract_io(metadata.image_size, profile.input_hw)
        unchecked.append("the ONNX file is not at hand: I/O declared from the fmabs-edge contract")
    preferred = sorted({min(profile.opt_batch, limit), limit})
    parameters = {
        "fmabs_edge.model_hash": manifest.onnx_graph_sha256,
        "fmabs_edge.tensorrt_version": built,
        "fmabs_edge.compute_capability": cc,
    }
    return {
        "io": io,
        "metadata": metadata,
        "max_batch": limit,
        "preferred": preferred,
        "checks": checks,
        "unchecked": unchecked,
        "parameters": parameters,
    }


def _self_check(text: str, io: ModelIO, unchecked: list[str]) -> list[str]:
    """Parse the config back with Triton's protobuf definitions where tritonclient is installed."""
    try:
        config = parse_config(text)
    except ModelError:
        raise
    except Exception as err:  # MissingExtraError: tritonclient absent
        unchecked.append(f"config.pbtxt not parsed with Triton's protobuf definitions ({err})")
        return []
    problems = check_config(config, io)
    if problems:
        raise ModelError("config.pbtxt does not match the model: " + "; ".join(problems))
    return ["config.pbtxt parses as Triton's ModelConfig and matches the model's I/O"]


def _write_repository(
    out: Path, name: str, text: str, model: Path, file_name: str, overwrite: bool
) -> Path:
    """Write ``out/name`` through a temporary folder renamed into place (old one kept on failure)."""
    target = out / name
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists; pass overwrite=True (--overwrite) to replace it.")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(model, staging / "1" / file_name)
        (staging / "config.pbtxt").write_text(text)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out))
            os.replace(target, retired / name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
