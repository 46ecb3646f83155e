"""Metrics against values computed by hand on tiny examples."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fmabs_edge.errors import DataError
from fmabs_edge.metrics import aupro, decision_rates, f1_max, image_auroc, pixel_auroc

LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_image_auroc_by_hand() -> None:
    # Positive/negative pairs: 0.35 beats 0.1, loses to 0.4; 0.8 beats both -> 3 of 4.
    assert image_auroc(LABELS, SCORES) == pytest.approx(0.75)
    # A tie counts one half: (0.5 + 1) / 2.
    assert image_auroc(np.array([0, 1, 1]), np.array([0.2, 0.2, 0.9])) == pytest.approx(0.75)
    assert image_auroc(np.array([0, 1]), np.array([0.9, 0.1])) == pytest.approx(0.0)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]], ids=["all-good", "all-defect"])
def test_single_class_auroc_is_undefined_with_a_warning(
    labels: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fmabs_edge"):
        assert image_auroc(np.array(labels), np.array([0.1, 0.5, 0.9])) is None
        assert f1_max(np.array(labels), np.array([0.1, 0.5, 0.9])) is None
    assert "undefined" in caplog.text


def test_non_finite_scores_are_refused() -> None:
    with pytest.raises(DataError, match="1 non-finite"):
        image_auroc(LABELS, np.array([0.1, np.nan, 0.3, 0.4]))


def test_pixel_auroc_by_hand() -> None:
    masks = np.zeros((1, 2, 2), bool)
    masks[0, 0, 0] = True
    maps = np.array([[[0.9, 0.1], [0.5, 0.95]]], np.float32)
    # The anomalous pixel (0.9) beats 0.1 and 0.5 and loses to 0.95: 2 of 3.
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3)
    assert pixel_auroc(np.zeros((1, 2, 2), bool), maps) is None


def test_f1_max_by_hand() -> None:
    # Rejecting scores >= 0.35: TP 2, FP 1 -> P 2/3, R 1 -> F1 0.8 (the best of all cuts).
    assert f1_max(LABELS, SCORES) == pytest.approx(0.8)


def test_decision_rates_by_hand() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    rejected = np.array([1, 0, 1, 0, 0])
    rates = decision_rates(labels, rejected)
    assert rates["precision_at_threshold"] == pytest.approx(0.5)
    assert rates["recall_at_threshold"] == pytest.approx(0.5)
    assert rates["fpr_at_threshold"] == pytest.approx(1 / 3)
    # Nothing rejected: precision is undefined, not 0 or 1.
    none = decision_rates(labels, np.zeros(5, bool))
    assert none["precision_at_threshold"] is None
    assert none["recall_at_threshold"] == 0.0 and none["fpr_at_threshold"] == 0.0


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """Two images of 64x64: region A (3x3, image 0) and region B (2x2, image 1).

    Normal pixels get distinct scores spread evenly over [0, 1). A scores 2.0 (overlap 1 at
    every FPR). Of B's four pixels, one sits at the normal 0.9 quantile (detected from FPR 0.1
    on), one at the 0.8 quantile (from FPR 0.2 on), two score -1 (never detected).
    """
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 5:8, 5:8] = True
    masks[1, 40:42, 40:42] = True
    maps = np.zeros((2, 64, 64), np.float32)
    n_normal = int((~masks).sum())
    rng = np.random.default_rng(0)
    step = 1.0 / n_normal
    maps[~masks] = rng.permutation(n_normal) * step
    maps[0, 5:8, 5:8] = 2.0
    region_b = np.array([0.9 - step / 2, 0.8 - step / 2, -1.0, -1.0], np.float32)
    maps[1, 40:42, 40:42] = region_b.reshape(2, 2)
    return masks, maps


def test_aupro_two_regions_by_hand() -> None:
    masks, maps = _two_region_case()
    # Region overlaps over FPR in [0, 0.3]: A = 1 throughout (area 0.3); B = 0.25 on [0.1, 0.2)
    # and 0.5 on [0.2, 0.3] (area 0.025 + 0.05 = 0.075). Mean over the two regions, normalised
    # by 0.3: (0.3 + 0.075) / 2 / 0.3 = 0.625. (Weighting by pixels instead would give 0.77.)
    assert aupro(masks, maps) == pytest.approx(0.625, abs=2e-3)


def test_aupro_extremes_and_undefined() -> None:
    masks, maps = _two_region_case()
    perfect = np.where(masks, 5.0, maps).astype(np.float32)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-6)
    inverted = np.where(masks, -5.0, maps).astype(np.float32)
    assert aupro(masks, inverted) == pytest.approx(0.0, abs=1e-6)
    assert aupro(np.zeros_like(masks), maps) is None
    with pytest.raises(DataError, match="differ in shape"):
        aupro(masks[:, :32], maps)


def test_aupro_regions_are_8_connected() -> None:
    # Three defect pixels: two touch diagonally (one region), one is apart (a second region).
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 2, 2] = masks[0, 3, 3] = masks[0, 20, 20] = True
    maps = np.zeros((1, 32, 32), np.float32)
    maps[~masks] = np.linspace(0.0, 0.5, int((~masks).sum()), dtype=np.float32)
    maps[0, 2, 2], maps[0, 3, 3], maps[0, 20, 20] = 1.0, -1.0, -1.0
    # One diagonal region half found, the lone pixel never: PRO = (0.5 + 0) / 2 = 0.25.
    # (4-connectivity would see three regions: (1 + 0 + 0) / 3.)
    assert aupro(masks, maps) == pytest.approx(0.25, abs=1e-3)
