"""Accuracy from the benchmark's own outputs: the same pipeline that is timed scores the test set.

Pixel metrics are computed as ``fmabs-edge eval`` computes them, at each model's resolution S×S:
masks are resized to S×S with nearest-neighbour and compared with the runner's ``(N, 1, S, S)``
maps. Decisions are taken at the threshold stored in each artefact (a non-finite score always
rejects). Agreement compares a variant's decisions and scores with its FP32 reference, image by
image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fmabs_edge import metrics
from fmabs_edge.benchmarks.protocol import Clock, Frame, TimedVariant, run_batch
from fmabs_edge.data import TestSample
from fmabs_edge.errors import DataError
from fmabs_edge.evaluate import load_mask

logger = logging.getLogger(__name__)

#: Accuracy fields of a benchmark record (all unitless, in [0, 1], None when undefined).
ACCURACY_FIELDS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "reject_rate",
    "precision_at_threshold",
    "recall_at_threshold",
    "fpr_at_threshold",
)


@dataclass
class VariantOutputs:
    """What one variant returned for every test image, in test-set order."""

    #: ``(N,) float32`` image scores.
    scores: np.ndarray
    #: ``(N, S, S) float32`` anomaly maps at model resolution.
    maps: np.ndarray
    #: ``(N,) bool``: rejected at the variant's stored threshold.
    rejected: np.ndarray
    threshold: float


def collect_outputs(
    variant: TimedVariant,
    frames: Sequence[Frame],
    batch_size: int,
    clock: Clock = time.perf_counter,
    progress: Any | None = None,
) -> VariantOutputs:
    """Run every frame once through :func:`~fmabs_edge.benchmarks.protocol.run_batch`."""
    scores, maps, rejected = [], [], []
    task = (
        progress.add_task(f"scoring {variant.name}", total=len(frames))
        if progress is not None
        else None
    )
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start : start + batch_size])
        output = run_batch(variant, chunk, clock)
        scores.append(output.image_score)
        maps.append(output.anomaly_map)
        rejected.append(output.rejected)
        if task is not None:
            progress.advance(task, len(chunk))
    if task is not None:
        progress.remove_task(task)
    return VariantOutputs(
        scores=np.concatenate(scores).astype(np.float32),
        maps=np.concatenate(maps).astype(np.float32),
        rejected=np.concatenate(rejected).astype(bool),
        threshold=float(variant.runner.metadata.threshold),
    )


def load_masks(samples: Sequence[TestSample], size: int) -> np.ndarray:
    """``(N, size, size) bool`` ground truth: zeros for good images, masks read as ``eval`` does."""
    masks = np.zeros((len(samples), size, size), dtype=bool)
    for index, sample in enumerate(samples):
        if sample.mask is not None:
            masks[index] = load_mask(sample.mask, size)
    return masks


def accuracy_metrics(
    labels: np.ndarray, masks: np.ndarray | None, outputs: VariantOutputs
) -> dict[str, Any]:
    """Image/pixel AUROC, AUPRO, F1-max and decision rates of one variant.

    ``labels`` ``(N,)`` with 1 = anomalous; ``masks`` ``(N, S, S)`` bool at the maps' resolution, or
    None when the test set has no masks (pixel metrics None). Images with a non-finite score are
    counted in ``nonfinite_scores`` and make the AUROC-type metrics None (with a warning) rather
    than end the benchmark.
    """
    labels = np.asarray(labels).astype(bool)
    finite = np.isfinite(outputs.scores)
    result: dict[str, Any] = dict.fromkeys(ACCURACY_FIELDS)
    result["n_images"] = int(labels.size)
    result["nonfinite_scores"] = int((~finite).sum())
    result["reject_rate"] = float(outputs.rejected.mean()) if outputs.rejected.size else None
    result.update(metrics.decision_rates(labels, outputs.rejected))
    if not finite.all():
        logger.warning(
            "%d of %d image scores are NaN or infinite: ranking metrics are left empty here.",
            int((~finite).sum()),
            labels.size,
        )
        return result
    try:
        result["image_auroc"] = metrics.image_auroc(labels, outputs.scores)
        result["f1_max"] = metrics.f1_max(labels, outputs.scores)
        if masks is not None:
            result["pixel_auroc"] = metrics.pixel_auroc(masks, outputs.maps)
            result["aupro"] = metrics.aupro(masks, outputs.maps)
    except DataError as err:
        logger.warning("Accuracy metrics incomplete: %s", err)
    return result


def agreement(outputs: VariantOutputs, reference: VariantOutputs) -> dict[str, float | None]:
    """Share of equal decisions and score differences against a reference, image by image."""
    if outputs.scores.shape != reference.scores.shape:
        raise DataError(
            f"Cannot compare outputs of {outputs.scores.size} and {reference.scores.size} images; "
            "both variants must score the same test set."
        )
    difference = np.abs(outputs.scores.astype(np.float64) - reference.scores.astype(np.float64))
    finite = np.isfinite(difference)
    return {
        "decision_agreement": float((outputs.rejected == reference.rejected).mean()),
        "score_max_abs_diff": float(difference[finite].max()) if finite.any() else None,
        "score_mean_abs_diff": float(difference[finite].mean()) if finite.any() else None,
    }
