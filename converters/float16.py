"""FP32 -> mixed FP16 graphs with explicit casts and FP32 islands.

Every node computes in FP16 except those named in ``keep_fp32``. Float tensors take the precision
of the node that produces them; where a consumer computes in the other precision, one ``Cast`` per
(tensor, precision) is inserted and shared by all such consumers. Float initializers and
``Constant`` values read by FP16 nodes get an FP16 copy (the FP32 original stays for FP32
readers). Graph inputs and outputs keep their types (``uint8`` in, ``float32`` out): an output made
in FP16 is produced under a new name and cast back to FP32 under its own name.

Why not onnxconverter-common's ``convert_float_to_float16``: on fmabs-edge graphs (version 1.16)
it retyped the input ``Cast`` (uint8 -> float) to FP16 in ``value_info`` without changing its
``to`` attribute (the file fails to load in ONNX Runtime), put an FP16 round trip between adjacent
blocked nodes (so an "FP32 island" was not FP32 end to end), turned the FP32 graph outputs into
FP16 when an output is also read inside the graph, and clamps initializers to +-1e4 by default.
NVIDIA ModelOpt's AutoCast needs onnxruntime-gpu and pins onnx 1.21. The rules this pass
needs are short enough to state and test here.

The result's float Q/DQ scales follow the same rule: a Q/DQ pair in an FP16 region gets FP16
scales, as strongly typed TensorRT networks require (QuantizeLinear/DequantizeLinear with FP16
scales need opset 19: a graph with Q/DQ nodes is moved there with ONNX's version converter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fmabs_edge.errors import ModelError

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
#: Inputs that ONNX requires in FP32 whatever the data type (Resize's roi and scales).
FP32_ONLY_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}
#: Ops whose float output type comes from an attribute this pass does not rewrite; kept FP32.
_DTYPE_ATTRIBUTE_OPS = frozenset(
    {
        "EyeLike",
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Bernoulli",
        "Multinomial",
    }
)
#: Opset at which QuantizeLinear/DequantizeLinear accept FP16 inputs and scales.
QDQ_FP16_OPSET = 19


@dataclass
class Fp16Report:
    """What the conversion did: counts, casts inserted and weights that left the FP16 range."""

    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts_inserted: int = 0
    #: Names of initializers/Constants with values beyond +-65 504 that were clamped.
    saturated_constants: list[str] = field(default_factory=list)
    #: Names of initializers/Constants whose nonzero values all underflow to 0 in FP16.
    flushed_constants: list[str] = field(default_factory=list)
    opset: int = 0

    def to_dict(self) -> dict:
        return {
            "fp16_nodes": self.fp16_nodes,
            "fp32_nodes": self.fp32_nodes,
            "casts_inserted": self.casts_inserted,
            "saturated_constants": self.saturated_constants,
            "flushed_constants": self.flushed_constants,
            "opset": self.opset,
        }


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor that shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for info in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        types[info.name] = info.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _to_fp16(array: np.ndarray, name: str, report: Fp16Report) -> np.ndarray:
    """FP32 values as FP16, clamped to the FP16 range; notes saturation and full underflow."""
    if array.size and np.max(np.abs(array)) > FP16_MAX:
        report.saturated_constants.append(name)
    converted = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)
    if array.size and np.any(array != 0) and not np.any(converted != 0):
        report.flushed_constants.append(name)
    return converted


def fp16_scale(scale: np.ndarray) -> np.ndarray:
    """FP32 Q/DQ scales as the nearest FP16 values not below them (never 0, never rounded down).

    Rounding up keeps ``|q * s_fp32 / s_fp16| <= |q|``, so requantised weights stay in INT8 range,
    and a scale below FP16's smallest subnormal does not become an invalid zero.
    """
    scale = np.asarray(scale, dtype=np.float32)
    flat = scale.reshape(-1)
    converted = np.clip(flat, 0, FP16_MAX).astype(np.float16)
    low = converted.astype(np.float32) < flat
    converted[low] = np.nextafter(converted[low], np.float16(np.inf))
    return converted.reshape(scale.shape)


def _requantise_weights(graph: onnx.GraphProto, fp32_nodes: set[str]) -> dict[str, np.ndarray]:
    """Rescale INT8 weights of FP16-region DequantizeLinear nodes to their FP16 scales.

    Returns ``{scale initializer name: FP16 scale}`` for every Q/DQ scale in FP16 regions.
    """
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    scales: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.name in fp32_nodes:
            continue
        scale_name = node.input[1]
        if (
            scale_name not in initializers
            or initializers[scale_name].data_type != TensorProto.FLOAT
        ):
            continue
        scale = numpy_helper.to_array(initializers[scale_name])
        scale16 = scales.setdefault(scale_name, fp16_scale(scale))
        data = initializers.get(node.input[0])
        if node.op_type != "DequantizeLinear" or data is None or data.data_type != TensorProto.INT8:
            continue
        ratio = scale / scale16.astype(np.float32)
        if np.all(ratio == 1.0):
            continue
        if readers.get(node.input[0], 0) != 1:
            raise ModelError(
                f"INT8 weight '{node.input[0]}' is shared by several nodes; cannot rescale it to FP16."
            )
        values = numpy_helper.to_array(data)
        if ratio.ndim == 1 and ratio.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % values.ndim
            shape = [1] * values.ndim
            shape[axis] = ratio.size
            ratio = ratio.reshape(shape)
        requantised = np.clip(np.round(values.astype(np.float32) * ratio), -127, 127).astype(
            np.int8
        )
        data.CopyFrom(numpy_helper.from_array(requantised, data.name))
    return scales


def _upgrade_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """``model`` at opset ``version`` or later (FP16 Q/DQ scales need 19); new nodes get names."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= version:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, version)
    except Exception as err:  # the converter raises RuntimeError and its own C++ errors
        raise ModelError(
            f"Cannot move the graph from opset {current} to {version}, which FP16 Q/DQ scales need: {err}"
        ) from err
    for position, node in enumerate(upgraded.graph.node):
        if not node.name:
            node.name = f"fmabs.opset{version}/{node.op_type}_{position}"
    logger.info("Moved the graph from opset %d to %d for FP16 Q/DQ scales", current, version)
    return upgraded


def convert_to_mixed_fp16(
    model: onnx.ModelProto, keep_fp32: set[str]
) -> tuple[onnx.ModelProto, Fp16Report]:
    """Return a copy of ``model`` computing in FP16 outside the nodes named in ``keep_fp32``.

    Raises ModelError when the result fails ONNX's checker or type inference.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        model = _upgrade_opset(model, QDQ_FP16_OPSET)
    graph = model.graph
    types = _float_types(model)
    report = Fp16Report()
    fp32_nodes = set(keep_fp32) | {n.name for n in graph.node if n.op_type in _DTYPE_ATTRIBUTE_OPS}
    unnamed = [n for n in graph.node if not n.name]
    if unnamed:
        raise ModelError(f"{len(unnamed)} nodes have no name; precision islands need named nodes.")

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    # Constant nodes follow their readers: FP16 when every reader computes in FP16.
    for node in graph.node:
        if node.op_type == "Constant" and node.name not in fp32_nodes:
            readers = consumers.get(node.output[0], [])
            if not readers or any(r.name in fp32_nodes for r in readers):
                fp32_nodes.add(node.name)

    def is_float(name: str) -> bool:
        return types.get(name) == TensorProto.FLOAT

    # Precision of every float tensor after conversion (graph inputs and initializers stay FP32).
    precision: dict[str, int] = {}
    for node in graph.node:
        fp16 = node.name not in fp32_nodes
        for name in node.output:
            if is_float(name):
                precision[name] = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT

    # Graph outputs made in FP16: produce them under a new name, cast back under the contract name.
    new_nodes: list[onnx.NodeProto] = []
    output_names = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    for node in graph.node:
        for position, name in enumerate(node.output):
            if name in output_names and precision.get(name) == TensorProto.FLOAT16:
                inner = f"{name}/fp16"
                node.output[position] = inner
                renamed[name] = inner
                precision[inner] = TensorProto.FLOAT16
                precision[name] = TensorProto.FLOAT

    scales = _requantise_weights(graph, fp32_nodes)
    initializers = {init.name: init for init in graph.initializer}
    fp16_copies: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}

    def fp16_constant(name: str) -> str:
        if name not in fp16_copies:
            copy = f"{name}/fp16"
            if name in scales:
                values = scales[name]
            else:
                values = _to_fp16(numpy_helper.to_array(initializers[name]), name, report)
            graph.initializer.append(numpy_helper.from_array(values, copy))
            fp16_copies[name] = copy
        return fp16_copies[name]

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            out = f"{name}/cast_{suffix}"
            producer = f"fmabs.cast/{name.lstrip('/')}->{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [out], name=producer, to=to))
            casts[key] = out
            report.casts_inserted += 1
        return casts[key]

    # Rewrite every node's inputs (and FP16 nodes' own constants and attributes).
    for node in graph.node:
        fp16 = node.name not in fp32_nodes
        report.fp16_nodes += int(fp16)
        report.fp32_nodes += int(not fp16)
        fixed = FP32_ONLY_INPUTS.get(node.op_type, ())
        for position, name in enumerate(node.input):
            if not name:
                continue
            want = TensorProto.FLOAT16 if fp16 and position not in fixed else TensorProto.FLOAT
            if name in renamed and want == TensorProto.FLOAT16:
                name = node.input[position] = renamed[name]
            if name in initializers and initializers[name].data_type == TensorProto.FLOAT:
                if want == TensorProto.FLOAT16:
                    node.input[position] = fp16_constant(name)
                continue
            have = precision.get(name, TensorProto.FLOAT if is_float(name) else 0)
            if have and have != want:
                node.input[position] = cast(name, want)
        if not fp16:
            continue
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                values = _to_fp16(numpy_helper.to_array(attr.t), node.name, report)
                attr.t.CopyFrom(numpy_helper.from_array(values, attr.t.name))

    # Contract outputs made in FP16 are cast back to FP32 under their own names.
    for name, inner in renamed.items():
        cast_back = helper.make_node(
            "Cast", [inner], [name], name=f"fmabs.cast/{name}->fp32", to=TensorProto.FLOAT
        )
        new_nodes.append(cast_back)
        report.casts_inserted += 1

    _insert_after_producers(graph, new_nodes)
    report.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ModelError(
            f"The mixed FP16 graph is inconsistent ({err}); report this with the ONNX file."
        ) from err
    if report.saturated_constants:
        logger.warning(
            "%d constants exceed the FP16 range and were clamped to +-65504: %s",
            len(report.saturated_constants),
            ", ".join(report.saturated_constants[:5]),
        )
    return model, report


def _insert_after_producers(graph: onnx.GraphProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Add ``new_nodes`` to ``graph`` keeping a topological order (each right after its input)."""
    if not new_nodes:
        return
    after: dict[str, list[onnx.NodeProto]] = {}
    first: list[onnx.NodeProto] = []
    produced = {out for node in graph.node for out in node.output}
    for new in new_nodes:
        (after.setdefault(new.input[0], []) if new.input[0] in produced else first).append(new)
    ordered = list(first)
    for node in graph.node:
        ordered.append(node)
        for out in node.output:
            ordered.extend(after.get(out, []))
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
