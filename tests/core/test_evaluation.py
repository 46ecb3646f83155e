"""Evaluation and fail-safe decisions, with a stand-in runner whose scores the test chooses."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from fmabs_edge.demo import make_synthetic_category
from fmabs_edge.errors import DataError
from fmabs_edge.evaluate import evaluate_runner, format_metrics, load_mask
from fmabs_edge.metadata import ModelConfig, ModelMetadata
from fmabs_edge.runtime.runners import Runner
from fmabs_edge.score_folder import score_paths

SIZE = 32


class ScriptedRunner(Runner):
    """Scores each frame with ``score_of(frame)``; the map is the frame's channel mean."""

    backend = "scripted"

    def __init__(self, score_of: Callable[[np.ndarray], float], threshold: float = 100.0) -> None:
        metadata = ModelMetadata(model=ModelConfig(image_size=SIZE), threshold=threshold)
        super().__init__(Path("scripted.onnx"), metadata, (SIZE, SIZE), max_batch=None)
        self.score_of = score_of
        self.model_hash = "scripted-hash"

    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = images.astype(np.float32).mean(axis=3)[:, None]
        return maps, np.array([self.score_of(frame) for frame in images], np.float32)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _flat(value: int, size: int = 40) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_decide_rejects_non_finite_scores(score: float) -> None:
    metadata = ModelMetadata(threshold=math.inf)
    reject, reason = metadata.decide(score)
    assert reject is True and "non-finite" in reason
    assert metadata.decide(1.0) == (False, "")
    assert metadata.decide(2.0, threshold=1.5) == (True, "score above threshold")


def test_nan_scores_reject_in_results_csv(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _write(folder / "a_dark.png", _flat(10))
    _write(folder / "b_nan.png", _flat(77))
    _write(folder / "c_bright.png", _flat(250))
    # Brightness 77 scores NaN; a threshold of +inf would pass every finite score.
    runner = ScriptedRunner(
        lambda f: math.nan if f[0, 0, 0] == 77 else float(f.mean()), threshold=math.inf
    )
    summary = score_paths(runner, [folder], tmp_path / "out")

    assert (summary.n_scored, summary.n_skipped, summary.n_rejected) == (3, 0, 1)
    with open(summary.results_csv, newline="") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert rows["b_nan.png"]["decision"] == "reject"
    assert "non-finite" in rows["b_nan.png"]["reason"]
    assert rows["a_dark.png"]["decision"] == rows["c_bright.png"]["decision"] == "pass"
    assert float(rows["c_bright.png"]["image_score"]) == pytest.approx(250.0)
    assert rows["a_dark.png"]["model_hash"] == "scripted-hash"


def test_threshold_override_in_score_paths(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for value in (10, 120, 250):
        _write(folder / f"{value:03d}.png", _flat(value))
    runner = ScriptedRunner(lambda f: float(f.mean()), threshold=100.0)
    assert score_paths(runner, [folder], tmp_path / "stored").n_rejected == 2
    assert score_paths(runner, [folder], tmp_path / "override", threshold=200.0).n_rejected == 1


def test_failure_mid_run_keeps_the_earlier_results(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for value in (10, 20, 30):
        _write(folder / f"{value:03d}.png", _flat(value))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("earlier results\n")

    def explode_on_third(frame: np.ndarray) -> float:
        if frame[0, 0, 0] == 30:
            raise RuntimeError("backend failed")
        return 1.0

    with pytest.raises(RuntimeError, match="backend failed"):
        score_paths(ScriptedRunner(explode_on_third), [folder], out, batch_size=1)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]
    assert (out / "results.csv").read_text() == "earlier results\n"


@pytest.fixture(scope="module")
def small_category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "category"
    return make_synthetic_category(
        root, n_train=2, n_test_good=3, n_test_defect=3, size=SIZE, seed=1
    )


def test_nan_scores_in_eval_are_an_error_listing_the_images(small_category: Path) -> None:
    runner = ScriptedRunner(lambda f: math.nan if f.mean() > 0 else 0.0)
    with pytest.raises(DataError, match="6 images have non-finite scores") as caught:
        evaluate_runner(runner, small_category)
    assert "000.png" in str(caught.value) and str(small_category) in str(caught.value)


def test_eval_metrics_from_a_scripted_runner(small_category: Path) -> None:
    samples_good = {p.name for p in (small_category / "test" / "good").iterdir()}
    runner = ScriptedRunner(lambda f: float(f.mean()), threshold=math.inf)
    metrics = evaluate_runner(runner, small_category)
    assert metrics["n_images"] == 6 and metrics["n_skipped"] == 0
    assert metrics["labels"].count("good") == len(samples_good) == 3
    assert metrics["pixel_resolution"] == SIZE
    assert metrics["threshold"] == math.inf
    # Nothing is rejected at an infinite threshold.
    assert metrics["n_rejected"] == 0 and metrics["recall_at_threshold"] == 0.0
    assert metrics["precision_at_threshold"] is None
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_single_class_eval_reports_undefined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    category = tmp_path / "only_good"
    for index in range(3):
        _write(category / "test" / "good" / f"{index}.png", _flat(20 + index))
    runner = ScriptedRunner(lambda f: float(f.mean()))
    with caplog.at_level(logging.WARNING, logger="fmabs_edge"):
        metrics = evaluate_runner(runner, category)
    assert metrics["image_auroc"] is None and metrics["pixel_auroc"] is None
    assert metrics["aupro"] is None and metrics["f1_max"] is None
    assert "Image AUROC is undefined" in caplog.text
    assert "image_auroc" in format_metrics(metrics) and "undefined" in format_metrics(metrics)


def test_defect_image_without_mask_names_the_file(tmp_path: Path) -> None:
    category = tmp_path / "category"
    _write(category / "test" / "good" / "0.png", _flat(10))
    orphan = _write(category / "test" / "crack" / "7.png", _flat(90))
    with pytest.raises(DataError) as caught:
        evaluate_runner(ScriptedRunner(lambda f: 0.0), category)
    message = str(caught.value)
    assert str(orphan) in message and "7_mask.png" in message


def test_corrupt_test_image_is_skipped_and_counted(tmp_path: Path) -> None:
    category = tmp_path / "category"
    for index in range(2):
        _write(category / "test" / "good" / f"{index}.png", _flat(10 + index))
    _write(category / "test" / "dent" / "0.png", _flat(200))
    (category / "test" / "dent" / "1.png").write_bytes(b"")
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 255
    for stem in ("0", "1"):
        mask_path = category / "ground_truth" / "dent" / f"{stem}_mask.png"
        _write(mask_path, np.repeat(mask[..., None], 3, 2))
    metrics = evaluate_runner(ScriptedRunner(lambda f: float(f.mean())), category)
    assert metrics["n_images"] == 3 and metrics["n_skipped"] == 1
    assert metrics["skipped"] == [str(category / "test" / "dent" / "1.png")]
    assert metrics["image_auroc"] == pytest.approx(1.0)


def test_masks_are_resized_nearest_neighbour(tmp_path: Path) -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :5] = 255
    path = tmp_path / "m_mask.png"
    assert cv2.imwrite(str(path), mask)
    resized = load_mask(path, 64)
    assert resized.dtype == bool and resized.shape == (64, 64)
    nearest = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST) > 127
    np.testing.assert_array_equal(resized, nearest)
    assert resized[:, :32].all() and not resized[:, 32:].any()
