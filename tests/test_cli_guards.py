"""Bad values that used to slip through: non-finite thresholds, rates out of range, --out on a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fmabs_edge.cli import main


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_run_refuses_non_finite_threshold(
    tiny_onnx: Path, synthetic_category: Path, tmp_path: Path, value: str
) -> None:
    result = _invoke(
        "run",
        tiny_onnx,
        synthetic_category / "test",
        "--out",
        tmp_path / "out",
        "--threshold",
        value,
    )
    assert result.exit_code == 2
    assert "finite" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_refuses_non_finite_threshold(tiny_onnx: Path, synthetic_category: Path) -> None:
    result = _invoke("eval", tiny_onnx, synthetic_category, "--threshold", "nan")
    assert result.exit_code == 2 and "finite" in result.output


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "nan", "150%"])
def test_train_refuses_rate_out_of_range_before_training(
    synthetic_category: Path, tmp_path: Path, rate: str
) -> None:
    result = _invoke(
        "train", synthetic_category, "--out", tmp_path / "run", "--max-false-reject", rate
    )
    assert result.exit_code == 2
    assert "--max-false-reject" in result.output
    assert not (tmp_path / "run").exists()


def test_train_accepts_percent_rate_like_threshold_command(
    synthetic_category: Path, tmp_path: Path
) -> None:
    from fmabs_edge.cli import _rate

    assert _rate(None, None, "0.5%") == pytest.approx(0.005)
    assert _rate(None, None, "0.005") == pytest.approx(0.005)


def test_run_out_on_existing_file_fails_before_scoring(
    tiny_onnx: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    occupied = tmp_path / "taken"
    occupied.write_bytes(b"keep me")
    result = _invoke("run", tiny_onnx, synthetic_category / "test", "--out", occupied)
    assert result.exit_code == 2
    assert "choose another output path" in result.output.replace("\n", " ")
    assert occupied.read_bytes() == b"keep me"


def test_eval_json_under_a_file_fails_before_evaluating(
    tiny_onnx: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    occupied = tmp_path / "taken"
    occupied.write_bytes(b"keep me")
    result = _invoke("eval", tiny_onnx, synthetic_category, "--json", occupied / "metrics.json")
    assert result.exit_code == 2
    assert occupied.read_bytes() == b"keep me"
