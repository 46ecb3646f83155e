"""Fixtures of the benchmark tests: a tiny contract ONNX graph and a bright-defect category."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_graphs import make_bright_defect_category, make_brightness_onnx


@pytest.fixture
def bright_category(tmp_path: Path) -> Path:
    return make_bright_defect_category(tmp_path / "data")


@pytest.fixture
def brightness_onnx(tmp_path: Path) -> Path:
    return make_brightness_onnx(tmp_path / "brightness.onnx")
