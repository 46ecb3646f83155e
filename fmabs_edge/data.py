"""Image folders and MVTec-style category folders.

An MVTec-style category folder looks like::

    <category>/train/good/*              normal images (training, calibration)
    <category>/test/good/*               normal test images
    <category>/test/<defect>/*           defective test images
    <category>/ground_truth/<defect>/<stem>_mask.png
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fmabs_edge.errors import DataError
from fmabs_edge.runtime.preprocess import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

GOOD_LABEL = "good"


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Every file with an image extension in ``folder``, sorted; an error if there is none."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"Data folder not found: {folder}. Check the path.")
    if folder.is_file():
        return [folder]
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"No images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}). "
            "Point at a folder of images, or an MVTec-style category folder."
        )
    return files


def resolve_train_folder(data: str | Path) -> Path:
    """A plain folder of normal images, or ``<category>/train/good`` of an MVTec-style folder."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"Data folder not found: {data}. Check the path.")
    candidate = data / "train" / GOOD_LABEL
    return candidate if candidate.is_dir() else data


@dataclass(frozen=True)
class TestSample:
    """One labelled test image; ``mask`` is None for good images."""

    image: Path
    label: str
    mask: Path | None

    @property
    def is_anomalous(self) -> bool:
        return self.label != GOOD_LABEL


def list_test_samples(category: str | Path) -> list[TestSample]:
    """All test images of an MVTec-style category folder, with their masks.

    A defect image without its mask is an error naming the file: pixel metrics would be wrong.
    """
    category = Path(category)
    test_root = category / "test"
    if not test_root.is_dir():
        raise DataError(
            f"{category} has no test/ folder; evaluation needs an MVTec-style category "
            "(test/<class>/ images and ground_truth/<class>/<stem>_mask.png)."
        )
    samples: list[TestSample] = []
    for class_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        images = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        for image in images:
            if class_dir.name == GOOD_LABEL:
                samples.append(TestSample(image, GOOD_LABEL, None))
                continue
            mask = category / "ground_truth" / class_dir.name / f"{image.stem}_mask.png"
            if not mask.is_file():
                raise DataError(
                    f"Defect image {image} has no mask (expected {mask}). Add the mask, "
                    "or move the image out of test/ if it has none."
                )
            samples.append(TestSample(image, class_dir.name, mask))
    if not samples:
        raise DataError(f"No test images under {test_root}.")
    return samples
