"""Evaluation of any artefact (checkpoint, ONNX, engine) on an MVTec-style category folder.

Pixel metrics are computed at the model resolution S: each ground-truth mask is resized to S×S
with nearest-neighbour and compared with the ``(S, S)`` anomaly map. Image metrics use the image
scores; decisions use the stored threshold unless one is given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fmabs_edge.artefacts import ensure_output_path, write_text_atomic
from fmabs_edge.data import TestSample, list_test_samples
from fmabs_edge.errors import DataError, UsageError
from fmabs_edge.metrics import aupro, decision_rates, f1_max, image_auroc, pixel_auroc
from fmabs_edge.runtime.runners import Runner, load_runner
from fmabs_edge.score_folder import score_files

logger = logging.getLogger(__name__)

#: The metrics a person looks at first: the terminal table and the reproduction summaries.
HEADLINE_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "threshold",
    "precision_at_threshold",
    "recall_at_threshold",
    "fpr_at_threshold",
    "n_images",
    "n_skipped",
)


@dataclass
class Predictions:
    """Runner outputs on a test set: ``maps (N, S, S)``, ``masks (N, S, S) bool``."""

    samples: list[TestSample]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    skipped: list[tuple[Path, str]]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.is_anomalous for s in self.samples], dtype=bool)


def load_mask(path: Path, size: int) -> np.ndarray:
    """A ground-truth mask as ``(size, size) bool`` (nonzero = defect), nearest-neighbour resized."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(
            f"Mask {path} cannot be read; replace it with a 0/255 PNG of the image's size."
        )
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 127


def predict_samples(runner: Runner, samples: list[TestSample], batch_size: int = 8) -> Predictions:
    """Score every readable test image and load its mask at the model resolution."""
    by_path = {s.image: s for s in samples}
    scored = score_files(runner, [s.image for s in samples], batch_size=batch_size, keep_maps=True)
    kept = [by_path[p] for p in scored.files]
    size = runner.image_size
    masks = (
        np.stack(
            [
                load_mask(s.mask, size) if s.mask is not None else np.zeros((size, size), bool)
                for s in kept
            ]
        )
        if kept
        else np.zeros((0, size, size), bool)
    )
    maps = np.stack(scored.maps) if kept else np.zeros((0, size, size), np.float32)
    return Predictions(kept, np.array(scored.scores, dtype=np.float64), maps, masks, scored.skipped)


def metrics_from_predictions(predictions: Predictions, threshold: float) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO, F1-max and decision rates at ``threshold``."""
    scores = predictions.scores
    bad = [str(s.image) for s, v in zip(predictions.samples, scores) if not np.isfinite(v)]
    if bad:
        raise DataError(
            f"{len(bad)} images have non-finite scores, so metrics are meaningless: {', '.join(bad[:10])}. "
            "Check the artefact (precision variant, engine) against the FP32 ONNX file."
        )
    labels = predictions.labels
    rejected = scores > threshold
    return {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(predictions.masks, predictions.maps),
        "aupro": aupro(predictions.masks, predictions.maps),
        "f1_max": f1_max(labels, scores),
        "threshold": float(threshold),
        **decision_rates(labels, rejected),
        "n_rejected": int(rejected.sum()),
    }


def evaluate_runner(
    runner: Runner, data: str | Path, batch_size: int = 8, threshold: float | None = None
) -> dict[str, Any]:
    """Evaluate an open runner on the category folder ``data``; returns the metrics dict."""
    samples = list_test_samples(data)
    predictions = predict_samples(runner, samples, batch_size)
    if not predictions.samples:
        raise DataError(f"No test image of {data} could be read; see the warnings above.")
    limit = runner.metadata.threshold if threshold is None else float(threshold)
    metrics = metrics_from_predictions(predictions, limit)
    metrics.update(
        {
            "pixel_resolution": runner.image_size,
            "n_images": len(predictions.samples),
            "n_skipped": len(predictions.skipped),
            "skipped": [str(p) for p, _ in predictions.skipped],
            "backend": runner.backend,
            "artefact": str(runner.path),
            "model_hash": runner.model_hash,
            "metadata": runner.metadata.to_dict(),
            "files": [str(s.image) for s in predictions.samples],
            "labels": [s.label for s in predictions.samples],
            "scores": [float(v) for v in predictions.scores],
        }
    )
    return metrics


def evaluate(
    model: str | Path,
    data: str | Path,
    backend: str | None = None,
    batch_size: int = 8,
    threshold: float | None = None,
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """Open ``model`` with ``backend``, evaluate it on ``data`` and optionally write the JSON."""
    if threshold is not None and not np.isfinite(threshold):
        raise UsageError(f"threshold={threshold}: must be a finite number.")
    if json_path is not None:
        ensure_output_path(json_path)
    with load_runner(model, backend) as runner:
        metrics = evaluate_runner(runner, data, batch_size=batch_size, threshold=threshold)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(metrics, indent=2, allow_nan=True))
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small table of the headline metrics for the terminal."""

    def show(value: Any) -> str:
        return (
            "undefined"
            if value is None
            else (f"{value:.4f}" if isinstance(value, float) else str(value))
        )

    keys = HEADLINE_METRICS
    width = max(len(k) for k in keys)
    return "\n".join(f"{key:<{width}}  {show(metrics.get(key))}" for key in keys)
