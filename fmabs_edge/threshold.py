"""The operating point: the decision threshold fitted on good images, and re-fitting it later.

Rule ("max-false-reject"): with ``n`` good scores and an allowed false-reject rate ``r``, at most
``k = floor(r * n)`` of those images may score above the threshold, so the threshold is the
``(k + 1)``-th highest score. An image is rejected when its score is strictly above it. With few
images (``n < 1 / r``) ``k`` is 0 and the rule is the maximum good score: the rate cannot be
resolved below ``1 / n`` and the log says so. Re-fitting rewrites only metadata, never a graph.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from fmabs_edge.errors import DataError, UsageError

logger = logging.getLogger(__name__)


def parse_rate(text: str | float) -> float:
    """``"0.5%"`` -> 0.005; ``"0.005"`` -> 0.005. Must lie in [0, 1)."""
    value_text = str(text).strip()
    try:
        rate = float(value_text[:-1]) / 100.0 if value_text.endswith("%") else float(value_text)
    except ValueError as err:
        raise UsageError(
            f"False-reject rate '{text}' is not a number; write e.g. 0.5% or 0.005."
        ) from err
    if not 0.0 <= rate < 1.0:
        raise UsageError(f"False-reject rate {text} must lie in [0, 1) (e.g. 0.5% or 0.005).")
    return rate


def fit_threshold(good_scores: np.ndarray, max_false_reject: float) -> tuple[float, str]:
    """Return ``(threshold, rule description)`` for image scores of good images."""
    scores = np.asarray(good_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise DataError("No good-image scores to fit a threshold on; give at least one good image.")
    if not np.isfinite(scores).all():
        raise DataError(
            f"{int((~np.isfinite(scores)).sum())} good images have non-finite scores; the model output is "
            "broken (check the export or precision variant) and cannot set a threshold."
        )
    n = scores.size
    allowed = int(math.floor(max_false_reject * n + 1e-9))
    ordered = np.sort(scores)[::-1]
    threshold = float(ordered[min(allowed, n - 1)])
    rule = (
        f"max-false-reject {max_false_reject:g} on {n} good images: the score ranked {allowed + 1} from the top"
    )
    if allowed == 0:
        rule += " (the maximum; the rate cannot be resolved below 1/n)"
        if max_false_reject > 0:
            logger.warning(
                "Only %d good images: a false-reject rate of %g cannot be resolved (finest step 1/%d); "
                "the threshold is their maximum score. Fit on more good images for a tighter rule.",
                n,
                max_false_reject,
                n,
            )
    return threshold, rule


def refit_threshold(
    model: str | Path,
    good: str | Path,
    max_false_reject: float,
    backend: str | None = None,
    batch_size: int = 8,
) -> dict:
    """Score ``good`` images with ``model``, fit the threshold and rewrite only its metadata.

    Works on a checkpoint, an ONNX file (``metadata_props`` rewritten, graph untouched) or an
    engine (its JSON manifest's metadata rewritten; the engine bytes are untouched).
    """
    from fmabs_edge.data import list_images
    from fmabs_edge.runtime.runners import load_runner
    from fmabs_edge.score_folder import score_files

    files = list_images(good)
    with load_runner(model, backend) as runner:
        scored = score_files(runner, files, batch_size=batch_size)
        old = runner.metadata.threshold
    if not scored.scores:
        raise DataError(
            f"None of the {len(files)} images in {good} could be read; nothing to fit on."
        )
    threshold, rule = fit_threshold(np.array(scored.scores), max_false_reject)
    write_operating_point(Path(model), threshold, rule, len(scored.scores))
    logger.info("Threshold %s -> %s (%s)", old, threshold, rule)
    return {
        "model": str(model),
        "threshold": threshold,
        "previous_threshold": old,
        "threshold_rule": rule,
        "n_good": len(scored.scores),
        "n_skipped": len(scored.skipped),
    }


def write_operating_point(path: Path, threshold: float, rule: str, n_images: int) -> None:
    """Rewrite the threshold in an artefact's metadata, atomically, leaving its graph untouched."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from fmabs_edge.artefacts import (
            load_onnx,
            read_metadata,
            write_bytes_atomic,
            write_metadata,
        )

        model = load_onnx(path)
        metadata = read_metadata(model, str(path))
        metadata.threshold, metadata.threshold_rule = threshold, rule
        write_metadata(model, metadata)
        write_bytes_atomic(path, model.SerializeToString())
    elif suffix in (".pt", ".pth", ".ckpt"):
        from fmabs_edge.checkpoint import update_checkpoint_metadata

        update_checkpoint_metadata(path, threshold=threshold, threshold_rule=rule)
    elif suffix in (".engine", ".plan", ".trt"):
        from fmabs_edge.runtime.engine_manifest import update_manifest_operating_point

        update_manifest_operating_point(path, threshold=threshold, threshold_rule=rule)
    else:
        raise UsageError(
            f"Cannot store a threshold in {path}: expected a .pt, .onnx or .engine file."
        )
    logger.debug("Wrote threshold %s to %s (%d images)", threshold, path, n_images)
