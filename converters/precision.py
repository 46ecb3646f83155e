"""FP32 ONNX -> FP16 or INT8 ONNX, each checked, linted and scored against FP32 on the CPU.

Precision lives inside the file, so one file builds the same way on TensorRT 10 and 11 as a
strongly typed network and runs in ONNX Runtime before any engine exists:

- **FP16**: explicit casts (:mod:`fmabs_edge.converters.float16`); the FP32 islands of
  :data:`~fmabs_edge.converters.islands.FP32_ISLANDS` and every node whose FP32 output on normal
  images comes within 8x of the FP16 limit stay FP32.
- **INT8**: static QuantizeLinear/DequantizeLinear pairs from ONNX Runtime's quantiser in QDQ
  format, calibrated on normal training images; Conv weights per channel on axis 0, ConvTranspose
  weights per tensor. The FP32 islands and, by default, the anomaly signal
  (:func:`~fmabs_edge.converters.islands.signal_nodes`) carry no Q/DQ and read un-quantised
  inputs. Target ``trt``: symmetric INT8 activations, float biases, the non-quantised layers in
  FP16 with FP16 scales (opset 19), as strongly typed TensorRT needs. Target ``cpu``: ONNX
  Runtime's fast CPU form (asymmetric UINT8 activations, INT32 biases, 7-bit weights) with the
  non-quantised layers in FP32.

Why ONNX Runtime's quantiser: it ships with the ``onnxruntime`` base dependency, is maintained
with the runtime that scores every variant, and exposes each setting TensorRT needs (QDQ format,
symmetric INT8, per-channel axes, ``QuantizeBias=False``, exclusions, per-tensor overrides).
NVIDIA ModelOpt's ONNX PTQ is the other well-kept choice but needs onnxruntime-gpu and pins
onnx 1.21, which the CPU install cannot carry.

Stages of :func:`convert_precision`: check the input and options (every bad input fails here,
before anything is built); find the islands; load the calibration images; build; lint the Q/DQ
rules; check that ONNX Runtime loads and runs the result; write it atomically with the FP32
metadata carried over; score it against FP32 (the gate) and record the verdict in the file.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx

from fmabs_edge.artefacts import (
    INPUT_NAME,
    OUTPUT_NAMES,
    atomic_output,
    check_contract,
    graph_sha256,
    input_hw,
    load_onnx,
    read_metadata,
    write_metadata,
)
from fmabs_edge.calib.cache import CalibrationCache, CalibrationKey, image_set_fingerprint
from fmabs_edge.calib.reader import (
    DEFAULT_MAX_IMAGES,
    MIN_CALIBRATION_IMAGES,
    CalibrationReader,
    CalibrationSet,
    calibration_files,
    load_calibration_set,
)
from fmabs_edge.converters.export import SCORING_SCOPE
from fmabs_edge.converters.float16 import FP16_MAX, convert_to_mixed_fp16
from fmabs_edge.converters.gate import (
    DISABLE_QDQ_FUSION,
    GateCriteria,
    GateReport,
    gate_variant,
    score_reference,
)
from fmabs_edge.converters.islands import island_nodes, signal_nodes
from fmabs_edge.converters.qdq_lint import check_qdq
from fmabs_edge.errors import DataError, GateError, ModelError, UsageError
from fmabs_edge.metadata import ModelMetadata
from fmabs_edge.runtime.preprocess import RESIZE_RULE

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8")
INT8_TARGETS = ("trt", "cpu")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Opsets the converters handle: Q/DQ axes need 13; the quantiser and TensorRT 10.0 reach 21/20.
SUPPORTED_OPSETS = (13, 21)
#: A node whose FP32 output on normal images exceeds this stays FP32 in FP16 regions (8x headroom
#: below the FP16 maximum for the larger activations of defects).
FP16_SAFE_MAX = FP16_MAX / 8
#: Normal images used to find FP16 overflows.
OVERFLOW_CHECK_IMAGES = 16
#: Percentile of the ``percentile`` calibration method.
CALIBRATION_PERCENTILE = 99.999


@dataclass
class PrecisionReport:
    """What :func:`convert_precision` built, and the gate's verdict."""

    out: Path
    precision: str
    islands: dict[str, list[str]]
    overflow_nodes: dict[str, float] = field(default_factory=dict)
    float_signal_nodes: list[str] = field(default_factory=list)
    qdq_nodes: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    gate: GateReport | None = None

    @property
    def passed(self) -> bool:
        """True unless the gate ran and failed."""
        return self.gate is None or self.gate.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "precision": self.precision,
            "fp32_islands": {name: len(nodes) for name, nodes in self.islands.items()},
            "fp16_overflow_nodes": self.overflow_nodes,
            "float_signal_nodes": len(self.float_signal_nodes),
            "qdq_nodes": self.qdq_nodes,
            "calibration": self.calibration,
            "gate": self.gate.to_dict() if self.gate else {"status": "not run"},
        }


# --------------------------------------------------------------------------------------------
# checks of the inputs


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _load_fp32(path: Path) -> tuple[onnx.ModelProto, ModelMetadata]:
    """The FP32 source: our metadata, our I/O contract, FP32, an opset the converters handle."""
    model = load_onnx(path)
    metadata = read_metadata(model, str(path))
    check_contract(model, str(path), metadata.image_size)
    if metadata.precision != "fp32":
        raise ModelError(
            f"{path} is already a '{metadata.precision}' variant; convert the FP32 file that "
            "'fmabs-edge export' wrote."
        )
    opset = _default_opset(model)
    low, high = SUPPORTED_OPSETS
    if not low <= opset <= high:
        raise ModelError(
            f"{path} uses opset {opset}; the precision converters handle opsets {low}-{high} "
            "(Q/DQ per-channel axes need 13). Re-export with 'fmabs-edge export' (opset 17)."
        )
    return model, metadata


def resolve_gate_data(metadata: ModelMetadata, gate_data: list[str | Path] | None) -> list[Path]:
    """The gate's test sets: those given, else the category the model was trained on (or [])."""
    if gate_data:
        folders = [Path(p) for p in gate_data]
        for folder in folders:
            if not (folder / "test").is_dir():
                raise UsageError(
                    f"Gate data {folder} has no test/ folder; give MVTec-style category folders "
                    "(test/<class>/ images and ground_truth/ masks)."
                )
        return folders
    trained_on = metadata.training.get("data")
    if trained_on:
        folder = Path(trained_on)
        if (
            folder.name == "good"
            and folder.parent.name == "train"
            and (folder.parent.parent / "test").is_dir()
        ):
            return [folder.parent.parent]
    return []


def _check_options(precision: str, target: str, calibration_method: str, batch_size: int) -> None:
    if precision not in PRECISIONS:
        raise UsageError(
            f"precision='{precision}'; choose one of {PRECISIONS} (FP32 is the exported file)."
        )
    if target not in INT8_TARGETS:
        raise UsageError(f"target='{target}'; choose one of {INT8_TARGETS}.")
    if calibration_method not in CALIBRATION_METHODS:
        raise UsageError(
            f"calibration_method='{calibration_method}'; choose one of {CALIBRATION_METHODS}."
        )
    if batch_size < 1:
        raise UsageError(f"batch_size={batch_size}: must be at least 1.")


# --------------------------------------------------------------------------------------------
# FP16 overflow analysis


def fp16_overflow_nodes(
    model: onnx.ModelProto, images: np.ndarray, skip: set[str], limit: float = FP16_SAFE_MAX
) -> dict[str, float]:
    """Nodes outside ``skip`` whose FP32 outputs on ``images`` exceed ``limit`` in magnitude.

    ``images``: ``(N, H, W, 3) uint8``. Returns ``{node name: max |value|}``.
    """
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        v.name
        for v in inferred.graph.value_info
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    producer = {out: node.name for node in inferred.graph.node for out in node.output}
    watched = [name for name in floats if name in producer and producer[name] not in skip]
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
        for n in watched
        if n not in existing
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima = dict.fromkeys(watched, 0.0)
    for start in range(0, len(images), 4):
        outputs = session.run(watched, {INPUT_NAME: images[start : start + 4]})
        for name, values in zip(watched, outputs):
            if values.size:
                maxima[name] = max(maxima[name], float(np.nanmax(np.abs(values))))
    found = {producer[name]: value for name, value in maxima.items() if value > limit}
    for node, value in sorted(found.items(), key=lambda item: -item[1]):
        logger.info("FP16 overflow risk: %s reaches %.4g on normal images; kept FP32", node, value)
    return found


# --------------------------------------------------------------------------------------------
# INT8 with ONNX Runtime's quantiser


@contextlib.contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    """Drop the quantiser's root-logger hint to run its pre-processing.

    That pre-processing runs ONNX Runtime's graph optimiser, which fuses and renames nodes and
    would lose the stable scopes the islands are found by; fmabs-edge skips it on purpose.
    """

    def drop(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _calibration_extra_options(method: str) -> dict[str, Any]:
    # One batch per calibration stretch: ranges (or histograms) are merged batch by batch, so the
    # outputs of one batch are held at a time. (CalibMaxIntermediateOutputs is not used: in
    # onnxruntime 1.32 it drops the collected outputs without computing their ranges.)
    options: dict[str, Any] = {"CalibStridedMinMax": 1}
    if method == "percentile":
        options["CalibPercentile"] = CALIBRATION_PERCENTILE
    return options


def _deconv_weight_overrides(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Per-tensor overrides for ConvTranspose weights (their per-channel axis is disputed in TRT)."""
    initializers = {init.name for init in model.graph.initializer}
    return {
        node.input[1]: [{"symmetric": True}]
        for node in model.graph.node
        if node.op_type == "ConvTranspose" and node.input[1] in initializers
    }


def quantize_int8(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    exclude: list[str],
    method: str = "minmax",
    batch_size: int = 8,
    cache: CalibrationCache | None = None,
    reduce_range: bool = False,
    target: str = "trt",
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Static INT8 Q/DQ over ``model`` (FP32), leaving the ``exclude`` nodes unquantised.

    ``target="trt"``: what TensorRT needs (symmetric INT8 activations and weights, float biases,
    activations kept explicit). ``target="cpu"``: what ONNX Runtime's CPU kernels run fastest
    (asymmetric UINT8 activations, so ReLU6 folds into the range, and INT32 biases, so each
    DQ-Conv-Q becomes one QLinearConv); symmetric INT8 weights either way. ``reduce_range``: 7-bit
    weights (-64..63), which keeps ONNX Runtime's INT8 kernels free of 16-bit saturation on x86
    CPUs without VNNI. Returns the quantised model and a record of the calibration.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    calibration_options = _calibration_extra_options(method)
    for_trt = target == "trt"
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": for_trt,
        "WeightSymmetric": True,
        "QuantizeBias": not for_trt,
        "QDQKeepRemovableActivations": for_trt,
        # Float biases need no widening of weight scales for an INT32 bias scale.
        "QDQDisableWeightAdjustForInt32Bias": for_trt,
        "TensorQuantOverrides": _deconv_weight_overrides(model),
        **calibration_options,
    }
    record: dict[str, Any] = {
        "method": method,
        "batch_size": batch_size,
        "quantiser": f"onnxruntime {ort_version}",
        "reduce_range": reduce_range,
        "activations": "int8 symmetric" if for_trt else "uint8 asymmetric",
        "biases": "float" if for_trt else "int32",
    }

    # Calibration cache, keyed on everything that changes the ranges.
    cache_kwargs: dict[str, Any] = {}
    lookup = key = None
    if cache is not None:
        if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
            logger.info(
                "This onnxruntime (%s) has no calibration cache; calibrating every time",
                ort_version,
            )
        else:
            size = calibration.images.shape[1:]
            key = CalibrationKey(
                graph_sha256=graph_sha256(model),
                input_shape="x".join(str(d) for d in size),
                preprocessing=RESIZE_RULE,
                method=method,
                options=str(sorted(calibration_options.items())),
                quantiser=f"onnxruntime {ort_version}",
                images=image_set_fingerprint(calibration.files),
                n_images=len(calibration),
                batch_size=batch_size,
            )
            lookup = cache.lookup(key)
            cache_kwargs["calibration_cache_path"] = lookup.ranges_path
            record["cache"] = {"hit": lookup.hit, "reason": lookup.reason, "key": key.digest()}

    reader = CalibrationReader(calibration, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="fmabs-int8-") as folder, _quiet_preprocess_hint():
        out = Path(folder) / "int8.onnx"
        try:
            quantize_static(
                model,
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if for_trt else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=reduce_range,
                nodes_to_exclude=exclude,
                calibrate_method=methods[method],
                extra_options=extra_options,
                **cache_kwargs,
            )
        except (ValueError, RuntimeError, KeyError) as err:
            raise ModelError(f"ONNX Runtime's quantiser failed on this graph: {err}") from err
        quantised = onnx.load(str(out))
    if cache is not None and lookup is not None and key is not None and not lookup.hit:
        cache.store(key, lookup)
    return quantised, record


def read_float_in(model: onnx.ModelProto, float_nodes: set[str]) -> int:
    """Make the ``float_nodes`` (and the scoring scope) read un-quantised tensors.

    The quantiser puts one Q/DQ pair on a tensor for all its readers, so an excluded node that
    shares its input with a quantised one would read the dequantised copy. Each such input is
    rewired to the tensor before QuantizeLinear; Q/DQ nodes left without readers are removed.
    Returns the number of rewired inputs.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for node in graph.node:
        if node.name not in float_nodes and not node.name.startswith(SCORING_SCOPE):
            continue
        for position, name in enumerate(node.input):
            dequantize = producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
            node.input[position] = quantize.input[0]
            rewired += 1
    _prune_unread_qdq(graph)
    return rewired


def _prune_unread_qdq(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ and Constant nodes nobody reads (the quantiser folds ReLU/Clip into ranges on
    the cpu target and leaves their bound Constants behind), then unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [
            node
            for node in graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant")
            and not set(node.output) & read
        ]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


# --------------------------------------------------------------------------------------------
# the conversion


def _smoke_check(data: bytes, images: np.ndarray, source: str, optimised: bool) -> None:
    """ONNX Runtime loads the graph and returns finite outputs of the contract's shapes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimised:
        options.add_session_config_entry(*DISABLE_QDQ_FUSION)
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        anomaly_map, image_score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelError(f"{source}: ONNX Runtime cannot run the converted graph ({err}).") from err
    if image_score.shape != (len(images),) or anomaly_map.shape[0] != len(images):
        raise ModelError(
            f"{source}: converted graph returns shapes {anomaly_map.shape}, {image_score.shape}."
        )
    if not (np.isfinite(image_score).all() and np.isfinite(anomaly_map).all()):
        raise ModelError(
            f"{source}: the converted graph returns non-finite values on normal images."
        )


def _overflow_images(
    metadata: ModelMetadata, calibration: CalibrationSet | None, size: tuple[int, int]
) -> np.ndarray | None:
    """Normal images for the FP16 overflow analysis: calibration images, else training images."""
    if calibration is not None:
        return calibration.images[:OVERFLOW_CHECK_IMAGES]
    try:
        files, source, excluded = calibration_files(metadata, None, OVERFLOW_CHECK_IMAGES)
        return load_calibration_set(files, size, source, excluded, min_images=0).images
    except (UsageError, DataError) as err:
        logger.warning(
            "No normal images for the FP16 overflow analysis (%s); only the fixed islands stay FP32",
            err,
        )
        return None


def convert_precision(
    onnx_in: str | Path,
    out: str | Path,
    precision: str = "fp16",
    *,
    target: str = "trt",
    calib: str | Path | None = None,
    calibration_method: str = "minmax",
    batch_size: int = 8,
    max_calib_images: int | None = DEFAULT_MAX_IMAGES,
    min_calib_images: int = MIN_CALIBRATION_IMAGES,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    signal_in_float: bool = True,
    reduce_range: bool | None = None,
    gate: bool = True,
    gate_data: list[str | Path] | None = None,
    criteria: GateCriteria | None = None,
    raise_on_gate_failure: bool = True,
) -> PrecisionReport:
    """Convert the FP32 fmabs-edge ONNX file ``onnx_in`` to ``precision`` and write ``out``.

    ``target`` (INT8 only): ``"trt"`` keeps non-quantised layers in FP16 (for strongly typed
    TensorRT), ``"cpu"`` keeps them in FP32 (for ONNX Runtime on a CPU). ``reduce_range``: 7-bit
    INT8 weights (default: on for ``cpu``, off for ``trt``). ``calib``: a folder of
    normal images (default: the training images in the metadata). ``gate_data``: MVTec-style
    category folders to score on (default: the category the model was trained on). A variant
    that misses the gate is still written, marked ``failed`` in its metadata, and (with
    ``raise_on_gate_failure``) raises GateError afterwards.
    """
    # Inputs and options; every bad input fails here, before anything is built.
    onnx_in, out = Path(onnx_in), Path(out)
    _check_options(precision, target, calibration_method, batch_size)
    if out.resolve() == onnx_in.resolve():
        raise UsageError(f"--out {out} is the FP32 input; write the variant to another file.")
    criteria = criteria or GateCriteria()
    criteria.validate()
    model, metadata = _load_fp32(onnx_in)
    datasets = resolve_gate_data(metadata, gate_data) if gate else []
    if gate and not datasets:
        raise UsageError(
            "The accuracy gate needs test sets and none is known for this model: pass --gate-data "
            "CATEGORY_DIR (MVTec-style, with test/ and ground_truth/), or --no-gate to skip it."
        )
    islands = island_nodes(model)
    fp32_nodes = {name for nodes in islands.values() for name in nodes}
    signal = signal_nodes(model) if precision == "int8" and signal_in_float else []
    calibration = None
    if precision == "int8":
        files, source, excluded = calibration_files(metadata, calib, max_calib_images)
        calibration = load_calibration_set(
            files, input_hw(model), source, excluded, min_calib_images
        )
    elif calib is not None:
        files, source, excluded = calibration_files(metadata, calib, OVERFLOW_CHECK_IMAGES)
        calibration = load_calibration_set(files, input_hw(model), source, excluded, min_images=0)
    report = PrecisionReport(
        out=out, precision=precision, islands=islands, float_signal_nodes=signal
    )
    label = precision if precision == "fp16" else f"int8-{target}"

    # Build.
    needs_fp16 = precision == "fp16" or target == "trt"
    overflow_images = (
        _overflow_images(metadata, calibration, input_hw(model)) if needs_fp16 else None
    )
    if overflow_images is not None:
        report.overflow_nodes = fp16_overflow_nodes(model, overflow_images, fp32_nodes)
    keep_fp32 = fp32_nodes | set(report.overflow_nodes)
    fp16_record: dict[str, Any] = {}
    if precision == "int8":
        cache = CalibrationCache(cache_dir) if use_cache else None
        built, report.calibration = quantize_int8(
            model,
            calibration,
            sorted(fp32_nodes | set(signal)),
            calibration_method,
            batch_size,
            cache,
            reduce_range=(target == "cpu") if reduce_range is None else reduce_range,
            target=target,
        )
        rewired = read_float_in(built, fp32_nodes | set(signal))
        report.calibration.update(calibration.summary())
        logger.info("Quantised; %d float-kept inputs rewired to un-quantised tensors", rewired)
        if target == "trt":
            built, fp16_report = convert_to_mixed_fp16(built, keep_fp32)
            fp16_record = fp16_report.to_dict()
        report.qdq_nodes = check_qdq(built, str(out), fp32_nodes | set(signal), target=target)
    else:
        built, fp16_report = convert_to_mixed_fp16(model, keep_fp32)
        fp16_record = fp16_report.to_dict()

    # Checks: the contract, and ONNX Runtime runs it on normal (or synthetic) images.
    check_contract(built, str(out), metadata.image_size)
    probe = (
        calibration.images[:2]
        if calibration is not None
        else (
            overflow_images[:2]
            if overflow_images is not None
            else np.random.default_rng(0).integers(0, 256, (2, *input_hw(model), 3), dtype=np.uint8)
        )
    )
    # The file meant for TensorRT runs with its Q/DQ arithmetic as written (see gate.ReferenceOrtRunner).
    optimised = precision == "int8" and target == "cpu"
    _smoke_check(built.SerializeToString(), probe, str(out), optimised)

    # Metadata: the FP32 file's, unchanged, plus what this conversion did.
    variant = ModelMetadata.from_dict(metadata.to_dict(), str(onnx_in))
    variant.precision = label
    variant.calibration = report.calibration
    variant.conversion = dict(metadata.conversion)
    variant.conversion["precision"] = {
        "source": str(onnx_in),
        "source_graph_sha256": graph_sha256(model),
        "fp32_islands": {name: len(nodes) for name, nodes in islands.items()},
        "fp16_overflow_nodes": report.overflow_nodes,
        "anomaly_signal_in_float": bool(signal),
        "float_signal_nodes": len(signal),
        "qdq_nodes": report.qdq_nodes,
        "fp16": fp16_record,
        "opset": _default_opset(built),
    }
    variant.gate = {"status": "pending" if gate else "not run"}

    # Write atomically; score the written file against FP32 and record the verdict in it.
    with atomic_output(out, suffix=".onnx") as temp:
        write_metadata(built, variant)
        temp.write_bytes(built.SerializeToString())
        if gate:
            from fmabs_edge.runtime.ort_runner import OrtRunner

            with OrtRunner.open(onnx_in) as runner:
                reference = score_reference(runner, datasets, batch_size)
            report.gate = gate_variant(temp, reference, criteria, batch_size, optimised=optimised)
            variant.gate = report.gate.to_dict()
            write_metadata(built, variant)
            temp.write_bytes(built.SerializeToString())
    logger.info("Wrote %s (%s, gate %s)", out, label, variant.gate.get("status"))
    if report.gate is not None and not report.gate.passed and raise_on_gate_failure:
        raise GateError(
            f"{out} misses the accuracy gate and is marked 'failed' in its metadata: "
            + "; ".join(report.gate.failures)
        )
    return report
