"""Scoring image files with any runner: batches, the corrupt-file policy, results.csv and overlays.

Each file is decoded by the one preprocessing path; a corrupt, empty, truncated or unreadable file
is reported by name and skipped, never scored. Decisions fail safe: a non-finite score rejects.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from fmabs_edge.artefacts import ensure_output_path, write_bytes_atomic, write_text_atomic
from fmabs_edge.data import list_images
from fmabs_edge.errors import CorruptImageError, UsageError
from fmabs_edge.runtime.preprocess import load_image, resize_image
from fmabs_edge.runtime.runners import Runner

logger = logging.getLogger(__name__)

RESULTS_COLUMNS = (
    "file",
    "image_score",
    "decision",
    "reason",
    "threshold",
    "model_hash",
    "width",
    "height",
)


@dataclass
class ScoredBatch:
    """Scores (and maps at model resolution) for the readable files; skipped ones with reasons."""

    files: list[Path] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def score_files(
    runner: Runner, files: list[Path], batch_size: int = 8, keep_maps: bool = False
) -> ScoredBatch:
    """Score ``files`` in batches; maps ``(S, S) float32`` are kept only when asked."""
    result = ScoredBatch()
    for decoded_batch, frames, skipped in iterate_batches(runner, files, batch_size):
        result.skipped.extend(skipped)
        if frames is None:
            continue
        output = runner.infer(frames)
        for (path, size), score, score_map in zip(
            decoded_batch, output.image_score, output.anomaly_map
        ):
            result.files.append(path)
            result.scores.append(float(score))
            result.sizes.append(size)
            if keep_maps:
                result.maps.append(score_map[0])
    return result


def iterate_batches(
    runner: Runner, files: list[Path], batch_size: int
) -> Iterator[tuple[list[tuple[Path, tuple[int, int]]], np.ndarray | None, list[tuple[Path, str]]]]:
    """Decode and resize files for ``runner``, yielding ``(entries, frames, skipped)`` per batch.

    ``entries`` holds ``(path, (width, height))`` of each readable image, ``frames`` the
    ``(n, H, W, 3) uint8`` batch (None when every file of the batch was skipped).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size={batch_size}: must be at least 1.")
    height, width = runner.input_hw
    entries: list[tuple[Path, tuple[int, int]]] = []
    frames: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        try:
            decoded = load_image(path)
        except CorruptImageError as err:
            logger.warning("Skipped: %s", err)
            skipped.append((path, str(err)))
            continue
        frames.append(resize_image(decoded.rgb, height, width))
        entries.append((path, (decoded.width, decoded.height)))
        if len(frames) == batch_size:
            yield entries, np.stack(frames), skipped
            entries, frames, skipped = [], [], []
    if frames or skipped:
        yield entries, (np.stack(frames) if frames else None), skipped


@dataclass
class FolderSummary:
    n_scored: int
    n_skipped: int
    n_rejected: int
    results_csv: Path
    skipped: list[tuple[Path, str]]


def collect_files(inputs: list[Path]) -> list[Path]:
    """Expand files and folders into one sorted list of image files (errors name the input)."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        files.extend(
            list_images(item, recursive=True)
            if item.is_dir()
            else ([item] if item.exists() else list_images(item))
        )
    return files


def overlay_png(rgb: np.ndarray, score_map: np.ndarray, threshold: float) -> bytes:
    """A heatmap over the image at its own size, red where the map exceeds the threshold scale."""
    height, width = rgb.shape[:2]
    resized = cv2.resize(
        score_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    scale = (
        threshold if np.isfinite(threshold) and threshold > 0 else float(np.nanmax(resized)) or 1.0
    )
    heat = np.clip(np.nan_to_num(resized / (2.0 * scale), nan=1.0) * 255.0, 0, 255).astype(np.uint8)
    colored = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    blended = cv2.addWeighted(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 0.5, colored, 0.5, 0.0)
    ok, encoded = cv2.imencode(".png", blended)
    if not ok:
        raise UsageError("OpenCV could not encode an overlay PNG.")
    return encoded.tobytes()


def score_paths(
    runner: Runner,
    inputs: list[Path],
    out_dir: str | Path,
    batch_size: int = 8,
    threshold: float | None = None,
    save_maps: bool = False,
) -> FolderSummary:
    """Score image files/folders; write ``out_dir/results.csv`` (and overlays with ``save_maps``)."""
    out_dir = Path(out_dir)
    if threshold is not None and not np.isfinite(threshold):
        raise UsageError(f"threshold={threshold}: must be a finite number.")
    ensure_output_path(out_dir, is_dir=True)
    ensure_output_path(out_dir / "results.csv")
    files = collect_files(inputs)
    limit = runner.metadata.threshold if threshold is None else float(threshold)
    scored = score_files(runner, files, batch_size=batch_size, keep_maps=save_maps)

    rows, n_rejected = [], 0
    for index, (path, score, (width, height)) in enumerate(
        zip(scored.files, scored.scores, scored.sizes)
    ):
        reject, reason = runner.metadata.decide(score, limit)
        n_rejected += int(reject)
        rows.append(
            [
                str(path),
                f"{score:.6g}",
                "reject" if reject else "pass",
                reason,
                f"{limit:.6g}",
                runner.model_hash,
                width,
                height,
            ]
        )
        if save_maps:
            rgb = load_image(path).rgb
            name = f"{index:05d}_{path.stem}_overlay.png"
            write_bytes_atomic(out_dir / "maps" / name, overlay_png(rgb, scored.maps[index], limit))

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RESULTS_COLUMNS)
    writer.writerows(rows)
    results_csv = out_dir / "results.csv"
    write_text_atomic(results_csv, buffer.getvalue())
    if scored.skipped:
        logger.warning(
            "Skipped %d unreadable files: %s",
            len(scored.skipped),
            ", ".join(str(p) for p, _ in scored.skipped),
        )
    logger.info(
        "Scored %d files, skipped %d, rejected %d", len(rows), len(scored.skipped), n_rejected
    )
    return FolderSummary(len(rows), len(scored.skipped), n_rejected, results_csv, scored.skipped)
