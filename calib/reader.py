"""Calibration images for INT8: normal images only, through the one runtime preprocessing.

Where they come from (:func:`calibration_files`):

- by default the checkpoint's own **training** images (``metadata.training["train_files"]``),
  never the held-out normal images (``training["heldout_files"]``), which fix the threshold and
  must stay unseen by every fitted quantity;
- or a folder given by the user; held-out files found in it are left out and counted.

Every file is decoded by :func:`~fmabs_edge.runtime.preprocess.load_image` and resized by the one
resize to the graph's input (:func:`~fmabs_edge.runtime.preprocess.resize_to_model` to S×S, or
:func:`~fmabs_edge.runtime.preprocess.resize_image` to the camera size of a graph with an in-graph
resize), exactly as a runner sees it: images of another size or mode are converted by that
policy, not rejected. Corrupt files are skipped and
counted; fewer than :data:`MIN_CALIBRATION_IMAGES` readable images is a warning with the count;
none is an error raised before any graph is built.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmabs_edge.artefacts import INPUT_NAME
from fmabs_edge.data import list_images
from fmabs_edge.errors import CorruptImageError, DataError, UsageError
from fmabs_edge.metadata import ModelMetadata
from fmabs_edge.runtime.preprocess import load_image, resize_image, resize_to_model

logger = logging.getLogger(__name__)

#: Below this many readable images the ranges are noisy; calibration warns with the count.
MIN_CALIBRATION_IMAGES = 32
#: Default cap on calibration images (evenly spaced over the sorted list); calibration time grows
#: linearly with it and ranges barely move beyond a few hundred normal images.
DEFAULT_MAX_IMAGES = 300


@dataclass
class CalibrationSet:
    """Preprocessed calibration images and what happened to each file."""

    #: Readable files, in the order of ``images``.
    files: list[Path]
    #: ``(N, H, W, 3) uint8`` RGB at the graph's input size, exactly what a runner receives.
    images: np.ndarray
    #: ``(path, reason)`` of each skipped file (corrupt, unreadable or missing).
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: Where the list came from ("training split" or the folder).
    source: str = ""
    #: Held-out (threshold) images that were in the folder and left out.
    excluded_heldout: int = 0
    #: How many images each conversion of the preprocessing policy touched (e.g. "resized").
    conversions: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record for the metadata (counts, not the file list)."""
        return {
            "source": self.source,
            "n_images": len(self.files),
            "n_skipped": len(self.skipped),
            "skipped": [f"{p}: {reason}" for p, reason in self.skipped[:20]],
            "excluded_heldout": self.excluded_heldout,
            "conversions": dict(self.conversions),
        }


def _evenly_spaced(files: list[Path], limit: int | None) -> list[Path]:
    """At most ``limit`` files spread evenly over ``files`` (all of them when ``limit`` is None)."""
    if limit is None or len(files) <= limit:
        return files
    if limit < 1:
        raise UsageError(f"max_images={limit}: must be at least 1.")
    picks = np.unique(np.round(np.linspace(0, len(files) - 1, limit)).astype(int))
    return [files[i] for i in picks]


def calibration_files(
    metadata: ModelMetadata,
    folder: str | Path | None = None,
    max_images: int | None = DEFAULT_MAX_IMAGES,
) -> tuple[list[Path], str, int]:
    """Sorted calibration files, their source and the number of held-out files left out.

    Raises UsageError when ``folder`` is None and the metadata holds no training split (the
    checkpoint predates it, or the file was not trained by fmabs-edge): pass a folder then.
    """
    heldout = {Path(p).resolve() for p in metadata.training.get("heldout_files", [])}
    if folder is not None:
        files = list_images(folder)
        source = str(folder)
    else:
        listed = metadata.training.get("train_files") or []
        if not listed:
            raise UsageError(
                "INT8 needs calibration images and this model's metadata holds no training split. "
                "Pass a folder of normal images with --calib DIR (calib=...)."
            )
        files = sorted(Path(p) for p in listed)
        source = f"training split ({metadata.training.get('data', 'unknown folder')})"
    kept = [p for p in files if p.resolve() not in heldout]
    excluded = len(files) - len(kept)
    if excluded:
        logger.info("Left %d held-out threshold images out of the calibration set", excluded)
    if not kept:
        raise DataError(
            f"Every calibration image in {source} is a held-out threshold image ({excluded}); "
            "calibrate on the training images or another folder of normal images."
        )
    return _evenly_spaced(sorted(kept), max_images), source, excluded


def load_calibration_set(
    files: list[Path],
    input_size: int | tuple[int, int],
    source: str = "",
    excluded_heldout: int = 0,
    min_images: int = MIN_CALIBRATION_IMAGES,
) -> CalibrationSet:
    """Decode and resize ``files`` by the runtime preprocessing; skip and count corrupt ones.

    ``input_size``: the model's S (images become S×S) or the graph input's ``(height, width)``.
    Raises DataError when no file is readable (before anything is built); warns below
    ``min_images`` readable images.
    """
    if not files:
        raise DataError(
            f"No calibration images in {source or 'the given list'}; give a folder of normal images."
        )
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    images: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    conversions: Counter[str] = Counter()
    for path in files:
        if not path.is_file():
            skipped.append((path, "missing"))
            continue
        try:
            decoded = load_image(path)
        except CorruptImageError as err:
            skipped.append((path, str(err)))
            continue
        if decoded.conversion:
            conversions[decoded.conversion] += 1
        if (decoded.height, decoded.width) != (height, width):
            conversions["resized"] += 1
        if isinstance(input_size, int):
            images.append(resize_to_model(decoded.rgb, input_size))
        else:
            images.append(resize_image(decoded.rgb, height, width))
        kept.append(path)
    if skipped:
        logger.warning(
            "Skipped %d of %d calibration files (corrupt, unreadable or missing), e.g. %s",
            len(skipped),
            len(files),
            skipped[0][1],
        )
    if not kept:
        raise DataError(
            f"None of the {len(files)} calibration files of {source or 'the list'} could be read "
            f"(first: {skipped[0][1]}). Give a folder of readable normal images."
        )
    if len(kept) < min_images:
        logger.warning(
            "Only %d readable calibration images (at least %d recommended); INT8 ranges may be noisy.",
            len(kept),
            min_images,
        )
    return CalibrationSet(
        files=kept,
        images=np.stack(images),
        skipped=skipped,
        source=source,
        excluded_heldout=excluded_heldout,
        conversions=dict(conversions),
    )


class CalibrationReader:
    """ONNX Runtime calibration data reader: ``{"images": (n, S, S, 3) uint8}`` per batch.

    Yields every image once per pass in batches of ``batch_size``; the last batch may be smaller
    (a set smaller than the batch size is one batch). :meth:`rewind` starts a new pass.
    Implements ``get_next`` as ``onnxruntime.quantization.CalibrationDataReader`` expects.
    """

    def __init__(
        self, calibration: CalibrationSet, batch_size: int = 8, input_name: str = INPUT_NAME
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size={batch_size}: must be at least 1.")
        self.calibration = calibration
        self.batch_size = batch_size
        self.input_name = input_name
        self._next = 0
        self._stop = len(calibration)

    def __len__(self) -> int:
        """Number of batches in one pass."""
        return -(-len(self.calibration) // self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None at the end of the pass."""
        start = self._next
        if start >= self._stop:
            return None
        self._next = start + self.batch_size
        return {
            self.input_name: self.calibration.images[
                start : min(start + self.batch_size, self._stop)
            ]
        }

    def __iter__(self):
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch

    def rewind(self) -> None:
        """Start a new pass over every image."""
        self._next, self._stop = 0, len(self.calibration)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict the pass to batches ``[start_index, end_index)``.

        ONNX Runtime's strided calibration (``CalibStridedMinMax``) calls this and computes the
        ranges of each stretch before the next, so only one stretch of outputs is held at a time.
        """
        if not 0 <= start_index <= end_index:
            raise UsageError(f"Batch range [{start_index}, {end_index}) is not a valid range.")
        self._next = start_index * self.batch_size
        self._stop = min(end_index * self.batch_size, len(self.calibration))
