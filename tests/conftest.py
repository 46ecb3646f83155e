"""Shared fixtures and marker handling.

Markers: ``gpu`` (needs CUDA), ``trt`` (needs TensorRT), ``data`` (needs ../shared/datasets).
Each skips with its reason where the piece is missing; a skipped test proves nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: tests run tiny models, and two threads fight badly on a busy 2-core CI box."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {}
    if not SHARED_DATASETS.is_dir():
        reasons["data"] = f"needs the real datasets at {SHARED_DATASETS}, which is absent"
    if importlib.util.find_spec("tensorrt") is None:
        reasons["trt"] = (
            "needs TensorRT (pip install 'fmabs-edge[trt]' on a GPU machine); not installed here"
        )
    if not _cuda_available():
        reasons["gpu"] = "needs a CUDA GPU; none is visible here"
    for item in items:
        for marker, reason in reasons.items():
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def synthetic_category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-style set: 24 train, 6 good and 9 defective test images at 64 px."""
    from fmabs_edge.demo import make_synthetic_category

    root = tmp_path_factory.mktemp("synthetic") / "category"
    return make_synthetic_category(
        root, n_train=24, n_test_good=6, n_test_defect=9, size=64, seed=0
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_category: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained briefly at 64 px (EfficientNet-Lite0, attention on, default scoring)."""
    from fmabs_edge.train import TrainOptions, train

    out = tmp_path_factory.mktemp("tiny_run")
    options = TrainOptions(epochs=2, batch_size=4, image_size=64, val_fraction=0.25, progress=False)
    return train(synthetic_category, out, options).checkpoint


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to ONNX (FP32), checked against PyTorch by the export."""
    from fmabs_edge.converters.export import export_onnx

    path = tmp_path_factory.mktemp("tiny_onnx") / "model.onnx"
    export_onnx(tiny_checkpoint, path)
    return path
