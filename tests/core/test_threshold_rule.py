"""The operating point: the fit rule on known scores, rate parsing, and re-fitting on copies."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from fmabs_edge.artefacts import graph_sha256, read_metadata
from fmabs_edge.checkpoint import read_checkpoint
from fmabs_edge.cli import main
from fmabs_edge.data import list_images
from fmabs_edge.errors import DataError, UsageError
from fmabs_edge.runtime.runners import load_runner
from fmabs_edge.score_folder import score_files
from fmabs_edge.threshold import fit_threshold, parse_rate, write_operating_point


def test_few_images_take_the_maximum(caplog: pytest.LogCaptureFixture) -> None:
    scores = np.random.default_rng(0).permutation(20).astype(float)
    with caplog.at_level(logging.WARNING, logger="fmabs_edge"):
        threshold, rule = fit_threshold(scores, 0.005)
    assert threshold == 19.0
    assert "maximum" in rule and "20 good images" in rule
    assert "cannot be resolved" in caplog.text


def test_thousand_images_at_half_a_percent_take_the_sixth_highest() -> None:
    scores = np.random.default_rng(1).permutation(1000).astype(float)
    threshold, rule = fit_threshold(scores, parse_rate("0.5%"))
    assert threshold == 994.0  # 999..995 (five images, 0.5 %) may lie above it
    assert int((scores > threshold).sum()) == 5
    assert "ranked 6 from the top" in rule


def test_zero_rate_is_the_maximum_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fmabs_edge"):
        assert fit_threshold(np.array([0.2, 0.7, 0.1]), 0.0)[0] == 0.7
    assert caplog.text == ""


def test_fit_refuses_nothing_or_non_finite() -> None:
    with pytest.raises(DataError, match="No good-image scores"):
        fit_threshold(np.array([]), 0.01)
    with pytest.raises(DataError, match="1 good images have non-finite scores"):
        fit_threshold(np.array([0.1, np.nan, 0.3]), 0.01)


@pytest.mark.parametrize(
    ("text", "rate"), [("0.5%", 0.005), ("0.005", 0.005), ("2%", 0.02), (" 0 ", 0.0)]
)
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["abc", "100%", "-1%", "1.5"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_rate(text)
    assert text.strip() in str(caught.value) and "0.5%" in str(caught.value)


def test_operating_point_needs_a_known_artefact(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model.tflite"):
        write_operating_point(tmp_path / "model.tflite", 1.0, "rule", 3)


def _expected_threshold(model: Path, good: Path) -> float:
    with load_runner(model) as runner:
        scores = score_files(runner, list_images(good)).scores
    assert len(scores) == 6
    return float(max(scores))


def test_threshold_command_rewrites_only_onnx_metadata(
    tiny_onnx: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, model)
    before = onnx.load(str(model))
    good = synthetic_category / "test" / "good"

    args = ["threshold", str(model), "--good", str(good), "--max-false-reject", "0.5%"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    after = onnx.load(str(model))
    assert graph_sha256(after) == graph_sha256(before)
    old, new = read_metadata(before, "before"), read_metadata(after, "after")
    assert new.threshold != old.threshold
    assert new.threshold == pytest.approx(_expected_threshold(model, good), rel=1e-6)
    assert "6 good images" in new.threshold_rule
    old.threshold, old.threshold_rule = new.threshold, new.threshold_rule
    assert new.to_dict() == old.to_dict(), "only the operating point may change"


def test_threshold_command_rewrites_only_checkpoint_metadata(
    tiny_checkpoint: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, model)
    before = read_checkpoint(model)
    good = synthetic_category / "test" / "good"

    args = [
        "threshold", str(model), "--good", str(good), "--max-false-reject", "0.005",
        "--batch-size", "3",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    after = read_checkpoint(model)
    assert after["state_dict"].keys() == before["state_dict"].keys()
    for key, tensor in before["state_dict"].items():
        assert torch.equal(after["state_dict"][key], tensor), key
    assert after["metadata"]["threshold"] != before["metadata"]["threshold"]
    expected = _expected_threshold(model, good)
    assert after["metadata"]["threshold"] == pytest.approx(expected, rel=1e-6)
    operating_point = ("threshold", "threshold_rule")
    unchanged = {k: v for k, v in before["metadata"].items() if k not in operating_point}
    assert {k: after["metadata"][k] for k in unchanged} == unchanged
