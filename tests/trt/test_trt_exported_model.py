"""The real exported model (the lead's tiny checkpoint) through the stand-in build and runner.

This is where the exported graph meets TensorRT's rules as TENSORRT.md states them: the stand-in
parser refuses a uint8 input consumed by anything but a Cast, as TensorRT's parser does.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fmabs_edge.converters.tensorrt_build import build_engine
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.runtime.trt_runner import TrtRunner


def _first_consumers(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node if "images" in node.input]


@pytest.mark.slow
def test_exported_uint8_input_feeds_a_cast_first(tiny_onnx) -> None:
    assert _first_consumers(tiny_onnx) == ["Cast"]


@pytest.mark.slow
def test_exported_model_builds_and_matches_onnx_runtime_on_the_stand_in(
    standin_trt, fake_cuda, tiny_onnx, tmp_path
) -> None:
    engine = tmp_path / "tiny.engine"
    build_engine(tiny_onnx, engine, max_batch=2, cuda=fake_cuda)
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    with TrtRunner.open(engine, cuda=fake_cuda) as runner, OrtRunner.open(tiny_onnx) as reference:
        got, want = runner.infer(frames), reference.infer(frames)
    np.testing.assert_allclose(got.image_score, want.image_score, rtol=1e-5, atol=1e-6)
    assert runner.model_hash == reference.model_hash
