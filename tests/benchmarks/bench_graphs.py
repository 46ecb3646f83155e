"""Small graphs and test sets made in code for the benchmark tests (no real model)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from fmabs_edge.artefacts import write_metadata
from fmabs_edge.metadata import ModelConfig, ModelMetadata


def make_brightness_onnx(
    path: Path,
    size: int = 32,
    threshold: float = 0.5,
    precision: str = "fp32",
    checkpoint_sha256: str = "tiny",
) -> Path:
    """A graph that follows the fmabs-edge contract: the map is mean(RGB)/255 by a 1x1 Conv.

    images (N, S, S, 3) uint8 -> anomaly_map (N, 1, S, S) float32, image_score (N,) = map max.
    It has S*S*3 multiply-accumulates per image.
    """
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [1.0 / 765.0] * 3)
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["anomaly_map"], name="conv"),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size]),
            helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["N"]),
        ],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(model=ModelConfig(image_size=size))
    metadata.threshold = threshold
    metadata.threshold_rule = "fixed for tests"
    metadata.precision = precision
    metadata.checkpoint_sha256 = checkpoint_sha256
    write_metadata(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_bright_defect_category(
    root: Path, n_good: int = 4, n_defect: int = 4, size: int = 48
) -> Path:
    """An MVTec-style folder: dark noisy images; defects are bright squares with their masks."""
    rng = np.random.default_rng(0)
    category = root / "bright"
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (category / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n_good):
        image = rng.integers(0, 60, size=(size, size + 8, 3), dtype=np.uint8)
        cv2.imwrite(str(category / "test" / "good" / f"{index:03d}.png"), image)
        cv2.imwrite(str(category / "train" / "good" / f"{index:03d}.png"), image)
    for index in range(n_defect):
        image = rng.integers(0, 60, size=(size, size + 8, 3), dtype=np.uint8)
        mask = np.zeros((size, size + 8), dtype=np.uint8)
        top = 4 + 3 * index
        image[top : top + 10, top : top + 12] = 250
        mask[top : top + 10, top : top + 12] = 255
        cv2.imwrite(str(category / "test" / "spot" / f"{index:03d}.png"), image)
        cv2.imwrite(str(category / "ground_truth" / "spot" / f"{index:03d}_mask.png"), mask)
    return category
