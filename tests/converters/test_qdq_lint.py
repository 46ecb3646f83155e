"""The Q/DQ linter on small hand-built graphs: a good one passes, each broken rule is named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fmabs_edge.converters.export import SCORING_SCOPE
from fmabs_edge.converters.qdq_lint import check_qdq, lint_qdq
from fmabs_edge.errors import ModelError

CHANNELS = 4


def _graph(
    *,
    zero_point_dtype: np.dtype = np.int8,
    zero_point: int = 0,
    weight_axis: int = 0,
    weight_scales: int = CHANNELS,
    scale_dtype: np.dtype = np.float32,
    compute_dtype: int = TensorProto.FLOAT,
    int32_bias: bool = False,
    conv_op: str = "Conv",
    qdq_name_prefix: str = "",
    opset: int = 17,
    with_zero_point: bool = True,
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(weights), bias) -> y, in ``compute_dtype``."""
    rng = np.random.default_rng(0)
    float_np = np.float16 if compute_dtype == TensorProto.FLOAT16 else np.float32
    weight_shape = (CHANNELS, 3, 3, 3) if conv_op == "Conv" else (3, CHANNELS, 3, 3)
    weight = rng.integers(-100, 100, weight_shape).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, dtype=scale_dtype), "x_scale"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(weight_scales, 0.01, dtype=scale_dtype).reshape(-1)
                                if weight_scales > 1 else np.array(0.01, dtype=scale_dtype), "w_scale"),
    ]
    x_zp = np.array(zero_point, dtype=zero_point_dtype)
    w_zp = np.zeros(weight_scales, dtype=np.int8) if weight_scales > 1 else np.array(0, np.int8)
    inits += [numpy_helper.from_array(x_zp, "x_zp"), numpy_helper.from_array(w_zp, "w_zp")]
    zp = ["x_zp"] if with_zero_point else []
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", *zp], ["x_q"], name=f"{qdq_name_prefix}q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", *zp], ["x_dq"], name=f"{qdq_name_prefix}dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w",
                         axis=weight_axis if conv_op == "Conv" else 1),
    ]
    if int32_bias:
        inits += [
            numpy_helper.from_array(np.zeros(CHANNELS, np.int32), "b_q"),
            numpy_helper.from_array(np.full(CHANNELS, 2e-4, np.float32), "b_scale"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["bias"], name="dq_bias", axis=0))
    else:
        inits.append(numpy_helper.from_array(np.zeros(CHANNELS, dtype=float_np), "bias"))
    nodes.append(helper.make_node(conv_op, ["x_dq", "w_dq", "bias"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "lint", [helper.make_tensor_value_info("x", compute_dtype, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", compute_dtype, [1, CHANNELS, 8, 8])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rules(model: onnx.ModelProto, float_nodes=()) -> set[str]:
    return {v.rule for v in lint_qdq(model, float_nodes)}


def test_a_good_graph_passes_and_runs():
    import onnxruntime as ort

    model = _graph()
    onnx.checker.check_model(model, full_check=True)
    assert lint_qdq(model) == []
    assert check_qdq(model, "good.onnx") == 3
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert y.shape == (1, CHANNELS, 8, 8) and np.isfinite(y).all()


def test_a_good_fp16_graph_with_fp16_scales_passes():
    assert lint_qdq(_graph(compute_dtype=TensorProto.FLOAT16, scale_dtype=np.float16, opset=19)) == []


@pytest.mark.parametrize(
    ("options", "rule"),
    [
        ({"zero_point_dtype": np.uint8}, "int8"),
        ({"with_zero_point": False}, "int8"),
        ({"zero_point": 3}, "zero-point"),
        ({"int32_bias": True}, "bias-float"),
        ({"weight_axis": 1}, "conv-weight"),
        ({"weight_scales": 1}, "conv-weight"),
        ({"conv_op": "ConvTranspose", "weight_scales": CHANNELS}, "deconv-weight"),
        ({"opset": 12}, "opset"),
        ({"compute_dtype": TensorProto.FLOAT16, "scale_dtype": np.float32, "opset": 19}, "scale-dtype"),
        ({"qdq_name_prefix": SCORING_SCOPE}, "float-island"),
    ],
)
def test_each_broken_rule_is_named(options, rule):
    model = _graph(**options)
    violations = lint_qdq(model)
    assert rule in {v.rule for v in violations}, violations
    with pytest.raises(ModelError, match=rule):
        check_qdq(model, "broken.onnx")


def test_a_node_kept_in_float_must_not_read_a_dequantised_tensor():
    assert _rules(_graph(), float_nodes={"conv"}) == {"float-island"}
    violation = next(v for v in lint_qdq(_graph(), float_nodes={"conv"}))
    assert violation.node == "conv" and "dq_x" in violation.message


def test_a_per_channel_activation_is_refused():
    model = _graph()
    for init in model.graph.initializer:
        if init.name == "x_scale":
            init.CopyFrom(numpy_helper.from_array(np.full(3, 0.02, np.float32), "x_scale"))
        if init.name == "x_zp":
            init.CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), "x_zp"))
    assert "activation-axis" in _rules(model)


def test_the_cpu_target_allows_uint8_activations_and_int32_biases_but_not_bad_weights():
    cpu_form = _graph(zero_point_dtype=np.uint8, zero_point=3, int32_bias=True)
    assert {"int8", "zero-point", "bias-float"} <= _rules(cpu_form)
    assert lint_qdq(cpu_form, target="cpu") == []
    assert "conv-weight" in {v.rule for v in lint_qdq(_graph(weight_axis=1), target="cpu")}
