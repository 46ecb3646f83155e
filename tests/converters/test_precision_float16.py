"""The mixed FP16 pass on small hand-built graphs: casts at the borders, outputs kept FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fmabs_edge.converters.float16 import FP16_MAX, convert_to_mixed_fp16, fp16_scale


def _model() -> onnx.ModelProto:
    """u8 -> Cast -> Mul(w) -> Resize(x2) -> out_a (also read by Add) -> Add(1) -> ReduceSum -> out_b."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], name="cast_in", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "w"], ["scaled"], name="mul"),
        helper.make_node("Resize", ["scaled", "", "scales"], ["out_a"], name="resize", mode="nearest"),
        helper.make_node("Add", ["out_a", "one"], ["shifted"], name="add"),
        helper.make_node("ReduceSum", ["shifted", "axes"], ["out_b"], name="island/sum", keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "w"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
    ]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.UINT8, [2, 1, 4, 4])],
        [helper.make_tensor_value_info("out_a", TensorProto.FLOAT, [2, 1, 8, 8]),
         helper.make_tensor_value_info("out_b", TensorProto.FLOAT, [2])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out_a", "out_b"], {"x": x})


def test_outputs_made_in_fp16_are_cast_back_and_islands_stay_fp32():
    model = _model()
    converted, report = convert_to_mixed_fp16(model, keep_fp32={"island/sum"})
    types = {v.name: v.type.tensor_type.elem_type for v in converted.graph.value_info}
    types.update({o.name: o.type.tensor_type.elem_type for o in converted.graph.output})
    nodes = {n.name: n for n in converted.graph.node}

    assert types["out_a"] == TensorProto.FLOAT and types["out_b"] == TensorProto.FLOAT
    assert types["out_a/fp16"] == TensorProto.FLOAT16  # the Resize computes in FP16
    assert nodes["cast_in"].attribute[0].i == TensorProto.FLOAT16
    assert types[nodes["add"].output[0]] == TensorProto.FLOAT16
    assert all(types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT for name in nodes["island/sum"].input[:1])
    scales = next(i for i in converted.graph.initializer if i.name == nodes["resize"].input[2])
    assert scales.data_type == TensorProto.FLOAT  # Resize scales stay FP32
    assert report.fp32_nodes == 1 and report.casts_inserted == 2

    x = np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4)
    for want, got in zip(_run(model, x), _run(converted, x)):
        np.testing.assert_allclose(got, want, rtol=1e-3)


def test_constants_beyond_the_fp16_range_are_clamped_and_reported():
    model = _model()
    for init in model.graph.initializer:
        if init.name == "w":
            init.CopyFrom(numpy_helper.from_array(np.array(1e6, np.float32), "w"))
    converted, report = convert_to_mixed_fp16(model, keep_fp32=set())
    assert report.saturated_constants == ["w"]
    clamped = next(i for i in converted.graph.initializer if i.name == "w/fp16")
    assert float(numpy_helper.to_array(clamped)) == FP16_MAX


@pytest.mark.parametrize("value", [1e-9, 3e-6, 0.0123, 7.0])
def test_fp16_scales_never_round_down_or_to_zero(value):
    scale = fp16_scale(np.array([value], np.float32))
    assert scale.dtype == np.float16 and float(scale[0]) >= np.float32(value) and float(scale[0]) > 0
    assert float(scale[0]) <= value * 1.001 or value < 6.1e-5  # normal range: within FP16 precision
