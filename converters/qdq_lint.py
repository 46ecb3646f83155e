"""A linter for explicit INT8 quantisation (QuantizeLinear/DequantizeLinear) as TensorRT needs it.

Runs after every quantisation (written with onnx-graphsurgeon) and names the offending node. For
the ``cpu`` target the TensorRT-only rules on activations and biases are left out
(:data:`TRT_ONLY_RULES`). Rules:

``opset``            default-domain opset >= 13 (per-channel ``axis`` needs it);
``int8``             Q/DQ zero points present and INT8 (ONNX defaults to UINT8 when absent);
``zero-point``       every zero point is 0 (TensorRT supports symmetric quantisation only);
``scale``            scales are finite and positive;
``bias-float``       no DequantizeLinear of INT32 data (a bias quantised by ONNX Runtime; TensorRT
                     wants biases in float);
``activation-axis``  activations are quantised per tensor (per-channel is for weights only);
``conv-weight``      Conv weights per channel on axis 0, one scale per output channel;
``deconv-weight``    ConvTranspose weights per tensor (the per-channel axis TensorRT expects for
                     them differs across versions);
``scale-dtype``      a Q's scale has its input's type; a DQ's scale (its output type) matches the
                     other float inputs of its consumers (strongly typed networks: FP16 scales in
                     FP16 regions);
``float-island``     no Q/DQ inside, into or out of the nodes kept in float (the scoring scope
                     always, and whatever the caller adds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx

from fmabs_edge.converters.export import SCORING_SCOPE
from fmabs_edge.converters.float16 import FP32_ONLY_INPUTS
from fmabs_edge.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

MIN_OPSET = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _is_constant(tensor) -> bool:
    import onnx_graphsurgeon as gs

    return isinstance(tensor, gs.Constant)


def _values(tensor) -> np.ndarray | None:
    """The values of a gs.Constant (or of a Constant node's output), else None."""
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if tensor.inputs and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return None if value is None else np.asarray(value.values)
    return None


def _dtype(tensor) -> np.dtype | None:
    values = _values(tensor)
    if values is not None:
        return values.dtype
    return np.dtype(tensor.dtype) if tensor.dtype is not None else None


#: Rules that only TensorRT imposes; a file meant for ONNX Runtime on a CPU may break them
#: (asymmetric UINT8 activations and INT32 biases are its fast path).
TRT_ONLY_RULES = frozenset({"int8", "zero-point", "bias-float"})
TARGETS = ("trt", "cpu")


def lint_qdq(
    model: onnx.ModelProto, float_nodes: Iterable[str] = (), target: str = "trt"
) -> list[Violation]:
    """Every rule violation in ``model``; ``float_nodes`` adds node names that must stay Q/DQ-free.

    ``target="cpu"`` leaves out :data:`TRT_ONLY_RULES` for activations and biases (weights keep
    INT8 with zero points of 0 on both targets).
    """
    if target not in TARGETS:
        raise UsageError(f"target={target!r}; choose one of {TARGETS}.")
    import onnx_graphsurgeon as gs

    violations: list[Violation] = []
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        violations.append(
            Violation(
                "opset", "<graph>", f"opset {opset}; Q/DQ per-channel axes need >= {MIN_OPSET}"
            )
        )
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = gs.import_onnx(inferred)
    kept = set(float_nodes)

    def in_float(node) -> bool:
        return node.name.startswith(SCORING_SCOPE) or node.name in kept

    for node in graph.nodes:
        if node.op in QDQ_OPS:
            found = _check_qdq_node(node, in_float)
            if target == "cpu" and not _is_weight(node):
                found = [v for v in found if v.rule not in TRT_ONLY_RULES]
            violations.extend(found)
        elif in_float(node):
            for tensor in node.inputs:
                if tensor.inputs and tensor.inputs[0].op == "DequantizeLinear":
                    violations.append(
                        Violation(
                            "float-island",
                            node.name,
                            f"kept in float but reads '{tensor.name}' from DequantizeLinear '{tensor.inputs[0].name}'",
                        )
                    )
            for tensor in node.outputs:
                for reader in tensor.outputs:
                    if reader.op == "QuantizeLinear":
                        violations.append(
                            Violation(
                                "float-island",
                                node.name,
                                f"kept in float but its output '{tensor.name}' is quantised by '{reader.name}'",
                            )
                        )
    for violation in violations:
        logger.debug("Q/DQ lint: %s", violation)
    return violations


def _is_weight(node) -> bool:
    """A DequantizeLinear of constant INT8 data (a weight), as opposed to activations or biases."""
    return (
        node.op == "DequantizeLinear"
        and _values(node.inputs[0]) is not None
        and (_dtype(node.inputs[0]) == np.dtype(np.int8))
    )


def _check_qdq_node(node, in_float) -> list[Violation]:
    """Rules that concern one QuantizeLinear/DequantizeLinear node."""
    found: list[Violation] = []
    name = node.name or node.outputs[0].name
    data, scale = node.inputs[0], node.inputs[1]
    zero_point = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    scale_values = _values(scale)

    if in_float(node):
        found.append(
            Violation(
                "float-island", name, f"{node.op} inside the float islands ({SCORING_SCOPE}...)"
            )
        )

    # Integer side: INT8, zero point 0; DequantizeLinear of INT32 is a quantised bias.
    if node.op == "DequantizeLinear" and _dtype(data) == np.dtype(np.int32):
        found.append(
            Violation(
                "bias-float", name, "dequantises INT32 data (a quantised bias); keep biases float"
            )
        )
    elif zero_point is None:
        found.append(
            Violation(
                "int8", name, "no zero point, so ONNX uses UINT8; give an INT8 zero point of 0"
            )
        )
    else:
        zp_values = _values(zero_point)
        if _dtype(zero_point) != np.dtype(np.int8):
            found.append(
                Violation(
                    "int8",
                    name,
                    f"zero point '{zero_point.name}' is {_dtype(zero_point)}, not int8",
                )
            )
        if zp_values is None:
            found.append(
                Violation("zero-point", name, f"zero point '{zero_point.name}' is not a constant")
            )
        elif np.any(zp_values != 0):
            found.append(
                Violation(
                    "zero-point", name, f"zero point(s) {np.unique(zp_values)[:5].tolist()} != 0"
                )
            )

    # Scales: constant, finite, positive.
    if scale_values is None:
        found.append(Violation("scale", name, f"scale '{scale.name}' is not a build-time constant"))
    elif not np.all(np.isfinite(scale_values)) or np.any(scale_values <= 0):
        found.append(
            Violation("scale", name, f"scale '{scale.name}' has non-finite or non-positive values")
        )

    # Granularity: activations per tensor; Conv weights per channel on axis 0; ConvTranspose per tensor.
    size = 1 if scale_values is None else int(scale_values.size)
    axis = int(node.attrs.get("axis", 1))
    weight = node.op == "DequantizeLinear" and _values(data) is not None
    if node.op == "QuantizeLinear" and _values(data) is None and size > 1:
        found.append(
            Violation("activation-axis", name, f"activation quantised per channel ({size} scales)")
        )
    if weight:
        for reader in node.outputs[0].outputs:
            if reader.op == "Conv" and reader.inputs[1] is node.outputs[0]:
                channels = int(_values(data).shape[0])
                if scale_values is None or scale_values.ndim != 1 or size != channels or axis != 0:
                    found.append(
                        Violation(
                            "conv-weight",
                            name,
                            f"Conv '{reader.name}' weights need {channels} scales on axis 0; "
                            f"found {size} scale(s), axis {axis}",
                        )
                    )
            if reader.op == "ConvTranspose" and reader.inputs[1] is node.outputs[0] and size != 1:
                found.append(
                    Violation(
                        "deconv-weight",
                        name,
                        f"ConvTranspose '{reader.name}' weights are per channel ({size} scales, axis {axis}); "
                        "use one scale",
                    )
                )

    # Types: the scale's type is the float type on both sides of the pair.
    scale_dtype = _dtype(scale)
    if node.op == "QuantizeLinear":
        input_dtype = _dtype(data)
        if input_dtype is not None and scale_dtype is not None and input_dtype != scale_dtype:
            found.append(
                Violation("scale-dtype", name, f"input is {input_dtype} but scale is {scale_dtype}")
            )
    else:
        for reader in node.outputs[0].outputs:
            fixed = FP32_ONLY_INPUTS.get(reader.op, ())
            others = {
                _dtype(t)
                for position, t in enumerate(reader.inputs)
                if t is not node.outputs[0] and t.name and position not in fixed
            }
            others = {d for d in others if d is not None and d.kind == "f"}
            if scale_dtype is not None and others and scale_dtype not in others:
                found.append(
                    Violation(
                        "scale-dtype",
                        name,
                        f"scale is {scale_dtype} but '{reader.name}' computes in {sorted(str(d) for d in others)}",
                    )
                )
    return found


def check_qdq(
    model: onnx.ModelProto, source: str, float_nodes: Iterable[str] = (), target: str = "trt"
) -> int:
    """Raise ModelError listing the violations of :func:`lint_qdq`; return the number of Q/DQ nodes."""
    violations = lint_qdq(model, float_nodes, target)
    if violations:
        shown = "\n  ".join(str(v) for v in violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        raise ModelError(
            f"{source}: {len(violations)} Q/DQ rule violation(s) of the '{target}' target:\n  "
            f"{shown}{more}"
        )
    return sum(1 for node in model.graph.node if node.op_type in QDQ_OPS)
