"""FP16 and INT8 variants of the tiny model: islands, Q/DQ rules, metadata, gate, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from fmabs_edge.artefacts import read_metadata, write_metadata
from fmabs_edge.cli import main
from fmabs_edge.converters.export import SCORING_SCOPE
from fmabs_edge.converters.gate import GateCriteria
from fmabs_edge.converters.islands import FP32_ISLANDS, island_nodes, signal_nodes
from fmabs_edge.converters.precision import PrecisionReport, convert_precision
from fmabs_edge.converters.qdq_lint import lint_qdq
from fmabs_edge.errors import DataError, ModelError, UsageError
from fmabs_edge.runtime.preprocess import preprocess_file

#: The tiny model (2 epochs, 15 test images) moves by several hundredths of AUROC under any
#: perturbation; these limits separate a working calibration from a broken one on it.
LOOSE = GateCriteria(max_metric_delta=0.15, min_decision_agreement=0.8)
QDQ = ("QuantizeLinear", "DequantizeLinear")


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def _images(synthetic_category: Path, count: int = 4) -> np.ndarray:
    files = sorted((synthetic_category / "test").rglob("*.png"))[:count]
    return np.stack([preprocess_file(path, 64)[0] for path in files])


def _scores(path: Path, images: np.ndarray, optimised: bool = False) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["image_score"], {"images": images})[0]


@pytest.fixture(scope="module")
def variants(tiny_onnx: Path, tmp_path_factory) -> dict[str, tuple[Path, PrecisionReport]]:
    out = tmp_path_factory.mktemp("variants")
    cache = out / "cache"
    made = {}
    for name, precision, target in (("fp16", "fp16", "trt"), ("int8-trt", "int8", "trt"), ("int8-cpu", "int8", "cpu")):
        path = out / f"{name}.onnx"
        report = convert_precision(tiny_onnx, path, precision, target=target, cache_dir=cache, criteria=LOOSE)
        made[name] = (path, report)
    return made


def test_the_island_list_finds_each_island_on_the_exported_graph(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    islands = island_nodes(model)
    assert [rule.name for rule in FP32_ISLANDS] == list(islands)
    assert all(name.startswith(SCORING_SCOPE) for name in islands["scoring"]) and len(islands["scoring"]) > 20
    by_name = {node.name: node for node in model.graph.node}
    assert [by_name[name].op_type for name in islands["attention output"]] == ["Sigmoid"]
    assert islands["input resize"] == []  # this graph takes S×S frames


def test_fp16_keeps_the_islands_and_the_contract_in_fp32(variants, tiny_onnx):
    path, report = variants["fp16"]
    model = onnx.load(str(path))
    types = _types(model)
    islands = {name for names in island_nodes(onnx.load(str(tiny_onnx))).values() for name in names}
    nodes = {node.name: node for node in model.graph.node}
    assert islands <= set(nodes)
    for name in islands:
        floats = [t for t in (*nodes[name].input, *nodes[name].output) if types.get(t) in (TensorProto.FLOAT,
                                                                                           TensorProto.FLOAT16)]
        assert all(types[t] == TensorProto.FLOAT for t in floats), (name, [(t, types[t]) for t in floats])
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in islands]
    assert convs and all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert {o.name: o.type.tensor_type.elem_type for o in model.graph.output} == {
        "anomaly_map": TensorProto.FLOAT, "image_score": TensorProto.FLOAT}
    assert report.gate is not None and report.gate.passed


def test_fp16_scores_follow_fp32(variants, tiny_onnx, synthetic_category):
    images = _images(synthetic_category)
    reference = _scores(tiny_onnx, images, optimised=True)
    np.testing.assert_allclose(_scores(variants["fp16"][0], images), reference, rtol=5e-3)


def test_int8_for_tensorrt_follows_the_qdq_rules(variants, tiny_onnx):
    path, report = variants["int8-trt"]
    model = onnx.load(str(path))
    source = onnx.load(str(tiny_onnx))
    kept = set(signal_nodes(source)) | {n for names in island_nodes(source).values() for n in names}
    assert lint_qdq(model, kept) == []
    assert report.qdq_nodes > 100 and len(report.float_signal_nodes) > 6
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
    initializers = {init.name: init for init in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in QDQ]
    assert not [n.name for n in qdq if n.name.startswith(SCORING_SCOPE)]
    assert {initializers[n.input[1]].data_type for n in qdq} == {TensorProto.FLOAT16}
    assert {initializers[n.input[2]].data_type for n in qdq} == {TensorProto.INT8}
    assert not [n for n in qdq if n.op_type == "DequantizeLinear" and initializers.get(n.input[0]) is not None
                and initializers[n.input[0]].data_type == TensorProto.INT32]


def test_int8_for_the_cpu_is_fp32_with_7_bit_weights_and_reuses_the_calibration(variants):
    path, report = variants["int8-cpu"]
    model = onnx.load(str(path))
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in QDQ]
    assert {initializers[n.input[1]].dtype for n in qdq} == {np.dtype(np.float32)}
    weights = [initializers[n.input[0]] for n in qdq if initializers.get(n.input[0]) is not None
               and initializers[n.input[0]].dtype == np.int8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert report.calibration["reduce_range"] is True and report.calibration["biases"] == "int32"
    assert report.calibration["cache"]["hit"] is True  # same graph, images, method and batch as int8-trt
    assert lint_qdq(model, target="cpu") == []
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    assert not [node.name for node in model.graph.node if not set(node.output) & read]
    # Its UINT8 activations and INT32 biases are ONNX Runtime's fast path, not TensorRT's form.
    assert {"int8", "bias-float"} <= {v.rule for v in lint_qdq(model, target="trt")}


def test_metadata_is_carried_unchanged_into_every_variant(variants, tiny_onnx):
    source = read_metadata(onnx.load(str(tiny_onnx)), "fp32")
    for name, (path, _) in variants.items():
        metadata = read_metadata(onnx.load(str(path)), name)
        assert metadata.precision == name
        assert metadata.threshold == source.threshold and metadata.threshold_rule == source.threshold_rule
        assert metadata.normalisation == source.normalisation
        assert metadata.scoring == source.scoring and metadata.model == source.model
        assert metadata.resize_rule == source.resize_rule and metadata.training == source.training
        assert metadata.gate["status"] == "passed" and metadata.gate["datasets"]
        assert metadata.conversion["precision"]["fp32_islands"]["scoring"] > 20
    assert read_metadata(onnx.load(str(variants["int8-trt"][0])), "int8").calibration["n_images"] == 18


def test_the_gate_fails_a_model_calibrated_on_blank_images(tiny_onnx, tmp_path):
    # Grayscale frames of another size at the input mean (127): converted by the preprocessing,
    # not rejected, and they normalise to 0, so every activation range collapses.
    blank = tmp_path / "blank"
    blank.mkdir()
    for index in range(8):
        cv2.imwrite(str(blank / f"blank_{index}.png"), np.full((30, 40), 127, np.uint8))
    out = tmp_path / "blank.onnx"
    result = CliRunner().invoke(main, [
        "quantize", str(tiny_onnx), "--precision", "int8", "--calib", str(blank), "--out", str(out),
        "--no-cache", "--max-metric-delta", str(LOOSE.max_metric_delta),
        "--min-decision-agreement", str(LOOSE.min_decision_agreement),
    ])
    assert result.exit_code == 2, result.output
    assert "misses the accuracy gate" in result.output
    metadata = read_metadata(onnx.load(str(out)), "blank")
    assert metadata.gate["status"] == "failed"
    assert any("decision agreement" in failure for failure in metadata.gate["failures"])
    assert metadata.calibration["conversions"] == {"grayscale->RGB": 8, "resized": 8}


# ----------------------------------------------------------------------------------------------
# bad input: a clear message and no partial file


def _foreign_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def _with_metadata(tiny_onnx: Path, path: Path, **changes) -> Path:
    model = onnx.load(str(tiny_onnx))
    metadata = read_metadata(model, "tiny")
    for key, value in changes.items():
        setattr(metadata, key, value)
    write_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("foreign", ModelError, "not exported by fmabs-edge|contract"),
        ("opset", ModelError, "opset 11"),
        ("no_split", UsageError, "--calib"),
        ("empty_calib", DataError, "No images"),
        ("corrupt_calib", DataError, "None of the 3 calibration files"),
        ("already_int8", ModelError, "already"),
        ("same_file", UsageError, "FP32 input"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_file(tiny_onnx, tmp_path, case, error, match):
    source, calib, out = tiny_onnx, None, tmp_path / "out.onnx"
    if case == "foreign":
        source = _foreign_onnx(tmp_path / "foreign.onnx")
    elif case == "opset":
        model = onnx.load(str(tiny_onnx))
        model.opset_import[0].version = 11
        source = tmp_path / "old.onnx"
        onnx.save(model, str(source))
    elif case == "no_split":
        source = _with_metadata(tiny_onnx, tmp_path / "nosplit.onnx", training={})
    elif case == "empty_calib":
        calib = tmp_path / "empty"
        calib.mkdir()
    elif case == "corrupt_calib":
        calib = tmp_path / "corrupt"
        calib.mkdir()
        for index in range(3):
            (calib / f"bad_{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif case == "already_int8":
        source = _with_metadata(tiny_onnx, tmp_path / "int8.onnx", precision="int8-trt")
    elif case == "same_file":
        source = tmp_path / "copy.onnx"
        shutil.copy(tiny_onnx, source)
        out = source
    before = set(tmp_path.rglob("*"))
    with pytest.raises(error, match=match):
        convert_precision(source, out, "int8", calib=calib, gate=False, cache_dir=tmp_path / "cache")
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "cache"}
    if case != "same_file":
        assert not out.exists()


def test_the_cli_writes_an_fp16_variant_without_the_gate(tiny_onnx, tmp_path):
    out = tmp_path / "fp16.onnx"
    result = CliRunner().invoke(main, ["quantize", str(tiny_onnx), "--precision", "fp16", "--out", str(out),
                                       "--no-gate", "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "gate: not run" in result.output
    assert read_metadata(onnx.load(str(out)), "fp16").gate == {"status": "not run"}
    assert (tmp_path / "report.json").is_file()
