"""Fixtures for the TensorRT tests: stand-in ``tensorrt`` modules, a host-memory CUDA double and
small fmabs-edge ONNX files made in code.

Every stand-in test runs twice, against the TensorRT 10.3 surface and the 11.x surface.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fmabs_edge.artefacts import write_metadata
from fmabs_edge.metadata import ModelMetadata

sys.path.insert(0, str(Path(__file__).parent))

import trt_standin  # noqa: E402
from trt_fake_cuda import HostMemoryCuda  # noqa: E402

SURFACES = ("10.3", "11.1")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Undo marker skips that matched this folder's name rather than a marker.

    tests/conftest.py skips items whose *keywords* contain ``trt``/``gpu``; pytest's keywords
    include parent folder names, so every test in tests/trt would be skipped as "needs TensorRT"
    although only tests marked ``trt`` need it. Skips stay on items that carry the marker.
    """
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        for marker, prefix in (("trt", "needs TensorRT"), ("gpu", "needs a CUDA GPU")):
            if item.get_closest_marker(marker) is None:
                item.own_markers[:] = [m for m in item.own_markers if not _is_skip(m, prefix)]


def _is_skip(mark: pytest.Mark, reason_prefix: str) -> bool:
    return mark.name == "skip" and str(mark.kwargs.get("reason", "")).startswith(reason_prefix)


@pytest.fixture(params=SURFACES, ids=lambda v: f"trt{v}")
def trt_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def standin_trt(trt_version: str, monkeypatch: pytest.MonkeyPatch):
    """The stand-in module for one surface, installed as ``tensorrt``."""
    module = trt_standin.make_tensorrt(trt_version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.fixture
def fake_cuda(standin_trt) -> HostMemoryCuda:
    """Host-memory CUDA double whose events share the stand-in's call log (one ordering)."""
    return HostMemoryCuda(events=standin_trt._state.calls)


def make_contract_onnx(
    path: Path,
    size: int = 16,
    input_hw: tuple[int, int] | None = None,
    threshold: float = 0.5,
    precision: str = "fp32",
    outputs_reversed: bool = False,
    extra_node: onnx.NodeProto | None = None,
) -> Path:
    """A tiny graph under the fmabs-edge contract, written to ``path``.

    ``images (N, S, S, 3) uint8`` -> Cast -> Transpose -> channel mean / 255 =
    ``anomaly_map (N, 1, S, S)``; its maximum is ``image_score (N,)``.
    """
    height, width = input_hw or (size, size)
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT, name="fmabs.pre/cast"),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="fmabs.pre/layout"),
        helper.make_node(
            "ReduceMean", ["nchw"], ["mean"], axes=[1], keepdims=1, name="fmabs.features/mean"
        ),
        helper.make_node("Mul", ["mean", "scale"], ["anomaly_map"], name="fmabs.scoring/scale"),
        helper.make_node(
            "ReduceMax",
            ["anomaly_map"],
            ["image_score"],
            axes=[1, 2, 3],
            keepdims=0,
            name="fmabs.scoring/max",
        ),
    ]
    if extra_node is not None:
        nodes.append(extra_node)
    outputs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, height, width]),
        helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["N"]),
    ]
    if outputs_reversed:
        outputs.reverse()
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", height, width, 3])],
        outputs,
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / 255.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata()
    metadata.model.image_size = size
    metadata.threshold = threshold
    metadata.threshold_rule = "test"
    metadata.precision = precision
    write_metadata(model, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def contract_onnx(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``contract_onnx(name="model.onnx", **make_contract_onnx options)``."""

    def factory(name: str = "model.onnx", **options) -> Path:
        return make_contract_onnx(tmp_path / name, **options)

    return factory


@pytest.fixture
def frames() -> Callable[[int, int], np.ndarray]:
    """Factory for ``(n, size, size, 3) uint8`` frames with a fixed seed."""

    def factory(n: int, size: int = 16) -> np.ndarray:
        return np.random.default_rng(n).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)

    return factory
