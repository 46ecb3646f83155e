"""Runners: input validation, batch splitting, closing, load_runner, and the ONNX contract check.

The graphs here are built with onnx.helper: a "brightness" model whose anomaly map is the mean of
the three channels and whose image score is the map's maximum, so every output is known by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fmabs_edge.artefacts import graph_sha256, write_metadata
from fmabs_edge.errors import ModelError, UsageError
from fmabs_edge.metadata import ModelConfig, ModelMetadata
from fmabs_edge.runtime.runners import infer_backend, load_runner

SIZE = 32


def brightness_onnx(
    path: Path,
    input_name: str = "images",
    input_type: int = TensorProto.UINT8,
    map_dims: tuple[int | str, ...] = ("N", 1, SIZE, SIZE),
    with_metadata: bool = True,
) -> Path:
    """Write a contract-shaped graph: map = channel mean ``(N, 1, S, S)``, score = its max."""
    nodes = [
        helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["as_float"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["nchw"], ["anomaly_map"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info(input_name, input_type, ["N", SIZE, SIZE, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, list(map_dims)),
            helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        write_metadata(model, ModelMetadata(model=ModelConfig(image_size=SIZE), threshold=200.0))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def brightness(tmp_path: Path) -> Path:
    return brightness_onnx(tmp_path / "brightness.onnx")


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_ort_runner_outputs_known_values(brightness: Path) -> None:
    frames = _frames(3)
    with load_runner(brightness) as runner:
        assert runner.backend == "ort"
        assert runner.input_hw == (SIZE, SIZE) and runner.image_size == SIZE
        assert runner.metadata.threshold == 200.0
        assert runner.model_hash == graph_sha256(onnx.load(str(brightness)))
        result = runner.infer(frames)
        description = runner.describe()
    expected_map = frames.astype(np.float32).mean(axis=3)[:, None]
    np.testing.assert_allclose(result.anomaly_map, expected_map, rtol=1e-6)
    expected_score = expected_map.reshape(3, -1).max(axis=1)
    np.testing.assert_allclose(result.image_score, expected_score, rtol=1e-6)
    assert result.image_score.dtype == np.float32 and result.image_score.shape == (3,)
    assert description["backend"] == "ort" and description["input_hw"] == [SIZE, SIZE]


def test_batches_above_max_batch_are_split(brightness: Path) -> None:
    frames = _frames(5)
    with load_runner(brightness) as runner:
        whole = runner.infer(frames)
        runner.max_batch = 2
        calls = []
        original = runner._infer_batch

        def counting(images: np.ndarray):
            calls.append(len(images))
            return original(images)

        runner._infer_batch = counting
        split = runner.infer(frames)
    assert calls == [2, 2, 1]
    np.testing.assert_array_equal(split.image_score, whole.image_score)
    np.testing.assert_array_equal(split.anomaly_map, whole.anomaly_map)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((1, SIZE, SIZE, 3), np.float32), "uint8"),
        (np.zeros((SIZE, SIZE, 3), np.uint8), "shape"),
        (np.zeros((1, SIZE, SIZE + 1, 3), np.uint8), "shape"),
        (np.zeros((0, SIZE, SIZE, 3), np.uint8), "N >= 1"),
        ([[1, 2, 3]], "uint8"),
    ],
    ids=["float", "no-batch-axis", "wrong-width", "empty-batch", "list"],
)
def test_infer_validates_its_input(brightness: Path, frames, message: str) -> None:
    with load_runner(brightness) as runner:
        with pytest.raises(UsageError, match=message):
            runner.infer(frames)


def test_closed_runner_refuses_work(brightness: Path) -> None:
    with load_runner(brightness) as runner:
        pass
    with pytest.raises(UsageError, match="closed"):
        runner.infer(_frames(1))


def test_load_runner_errors_name_the_file(tmp_path: Path, brightness: Path) -> None:
    with pytest.raises(UsageError, match="missing.onnx"):
        load_runner(tmp_path / "missing.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"\0")
    with pytest.raises(UsageError, match="model.bin"):
        load_runner(odd)
    with pytest.raises(UsageError, match="Unknown backend 'tflite'"):
        load_runner(brightness, backend="tflite")
    backends = [infer_backend(Path(p)) for p in ("a.onnx", "a.pt", "a.engine")]
    assert backends == ["ort", "torch", "trt"]


def test_not_an_onnx_file_is_a_model_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not protobuf at all")
    with pytest.raises(ModelError, match="garbage.onnx"):
        load_runner(garbage)


def test_onnx_without_fmabs_metadata_is_refused(tmp_path: Path) -> None:
    path = brightness_onnx(tmp_path / "foreign.onnx", with_metadata=False)
    with pytest.raises(ModelError, match="not exported by fmabs-edge") as caught:
        load_runner(path)
    assert str(path) in str(caught.value) and "fmabs-edge export" in str(caught.value)


@pytest.mark.parametrize(
    ("variant", "complaint"),
    [
        ({"input_name": "input"}, "input 'images' missing"),
        ({"input_type": TensorProto.FLOAT}, "must be uint8"),
        ({"map_dims": ("N", 1, SIZE // 2, SIZE // 2)}, f"must be (N, 1, {SIZE}, {SIZE})"),
        ({"map_dims": ("N", SIZE, SIZE)}, "must have rank 4"),
    ],
    ids=["input-name", "input-dtype", "map-shape", "map-rank"],
)
def test_onnx_breaking_the_contract_is_refused(
    tmp_path: Path, variant: dict, complaint: str
) -> None:
    path = brightness_onnx(tmp_path / "off_contract.onnx", **variant)
    with pytest.raises(ModelError) as caught:
        load_runner(path)
    message = str(caught.value)
    assert str(path) in message and "contract" in message
    assert complaint in message
    assert "fmabs-edge export" in message


def test_onnx_with_wrong_output_names_is_refused(tmp_path: Path) -> None:
    path = brightness_onnx(tmp_path / "renamed.onnx")
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.output[:] = ["score" if o == "image_score" else o for o in node.output]
    model.graph.output[1].name = "score"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="output 'image_score' missing"):
        load_runner(path)
