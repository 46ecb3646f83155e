"""Real TensorRT on a real GPU: build the tiny contract graph and compare the engine with ONNX Runtime.

Marked ``trt`` and ``gpu``: skipped (with the reason) on machines without TensorRT or a GPU, and
then it proves nothing. benchmarks/gpu_check.py is the fuller check for a TensorRT machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from fmabs_edge.converters.tensorrt_build import build_engine
from fmabs_edge.runtime.engine_manifest import read_manifest
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.runtime.trt_runner import TrtRunner


@pytest.mark.trt
@pytest.mark.gpu
def test_real_engine_matches_onnx_runtime(contract_onnx, frames, tmp_path) -> None:
    onnx_path = contract_onnx(size=32)
    engine = tmp_path / "model.engine"
    manifest = build_engine(onnx_path, engine, max_batch=4, timing_cache=tmp_path / "timing.cache")
    assert read_manifest(engine) == manifest and (tmp_path / "timing.cache").is_file()
    images = frames(9, 32)
    with TrtRunner.open(engine) as runner, OrtRunner.open(onnx_path) as reference:
        got, want = runner.infer(images), reference.infer(images)
    np.testing.assert_allclose(got.image_score, want.image_score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=1e-4, atol=1e-5)
