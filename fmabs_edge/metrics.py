"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO (to 30 % FPR) and F1-max.

Inputs are numpy arrays: image labels ``(N,)`` with 1 = anomalous, image scores ``(N,)``, masks
``(N, H, W)`` bool/0-1 and maps ``(N, H, W)`` float at the same resolution. A metric that is
undefined (one class only) is returned as ``None`` with a warning, never as 0.5.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from fmabs_edge.errors import DataError

logger = logging.getLogger(__name__)

#: AUPRO integrates the per-region overlap up to this false-positive rate.
AUPRO_FPR_LIMIT = 0.3


def _check_finite(name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{name}: {int(bad.sum())} non-finite values; metrics need finite scores.")


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of image scores; None (with a warning) when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    _check_finite("image scores", scores)
    if labels.all() or not labels.any():
        logger.warning("Image AUROC is undefined: the test set has only one class.")
        return None
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """ROC AUC over every pixel of every image; None when no pixel (or every pixel) is anomalous."""
    truth = np.asarray(masks).astype(bool).ravel()
    values = np.asarray(maps, dtype=np.float32).ravel()
    _check_finite("anomaly maps", values)
    if truth.all() or not truth.any():
        logger.warning("Pixel AUROC is undefined: the masks contain only one class.")
        return None
    return float(roc_auc_score(truth, values))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Best image-level F1 over all thresholds."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        logger.warning("F1-max is undefined: the test set has only one class.")
        return None
    precision, recall, _ = precision_recall_curve(labels, np.asarray(scores, dtype=np.float64))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def aupro(
    masks: np.ndarray, maps: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT, steps: int = 2000
) -> float | None:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by it (so in [0, 1]).

    Regions are the 8-connected components of each ground-truth mask. For a threshold ``t``, a
    region's overlap is the share of its pixels scoring above ``t``; PRO(t) is the mean overlap
    over all regions and FPR(t) the share of normal pixels (over all images) above ``t``. The
    curve is sampled at ``steps`` thresholds chosen so that FPR runs evenly from 0 to the limit.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float32)
    if masks.shape != maps.shape:
        raise DataError(f"AUPRO: masks {masks.shape} and maps {maps.shape} differ in shape.")
    _check_finite("anomaly maps", maps)
    regions: list[np.ndarray] = []
    for mask, score_map in zip(masks, maps):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for region in range(1, count):
            regions.append(np.sort(score_map[labels == region]))
    normal = np.sort(maps[~masks])
    if not regions or normal.size == 0:
        logger.warning("AUPRO is undefined: no anomalous regions or no normal pixels.")
        return None

    # Thresholds at normal-pixel quantiles give FPR values evenly spaced in [0, fpr_limit].
    fpr_targets = np.linspace(0.0, fpr_limit, steps + 1)
    index = np.clip(
        np.ceil((1.0 - fpr_targets) * normal.size).astype(np.int64) - 1, 0, normal.size - 1
    )
    thresholds = normal[index]
    thresholds[0] = np.nextafter(normal[-1], np.float32(np.inf))  # nothing above: FPR 0
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="right") / normal.size
    pro = np.zeros_like(thresholds, dtype=np.float64)
    for region in regions:
        pro += 1.0 - np.searchsorted(region, thresholds, side="right") / region.size
    pro /= len(regions)

    order = np.argsort(fpr, kind="stable")
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr[-1] < fpr_limit:  # extend flat to the limit (PRO at the largest FPR reached)
        fpr = np.append(fpr, fpr_limit)
        pro = np.append(pro, pro[-1])
    area = float(np.trapezoid(pro, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(pro, fpr))
    return float(np.clip(area / fpr_limit, 0.0, 1.0))


def decision_rates(labels: np.ndarray, rejected: np.ndarray) -> dict[str, float | None]:
    """Precision, recall and FPR of reject decisions against labels (1 = anomalous)."""
    labels = np.asarray(labels).astype(bool)
    rejected = np.asarray(rejected).astype(bool)
    true_pos = int((labels & rejected).sum())
    false_pos = int((~labels & rejected).sum())
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return {
        "precision_at_threshold": (
            true_pos / (true_pos + false_pos) if (true_pos + false_pos) else None
        ),
        "recall_at_threshold": true_pos / positives if positives else None,
        "fpr_at_threshold": false_pos / negatives if negatives else None,
    }
