"""Calibration images: the runtime preprocessing exactly, batching edge cases, bad sets."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from fmabs_edge.calib.reader import (
    CalibrationReader,
    calibration_files,
    load_calibration_set,
)
from fmabs_edge.data import list_images
from fmabs_edge.errors import DataError, UsageError
from fmabs_edge.metadata import ModelMetadata
from fmabs_edge.runtime.preprocess import preprocess_file

SIZE = 32


def _write_images(folder: Path, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"img_{index:03d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _batches(calibration, batch_size: int) -> list[np.ndarray]:
    reader = CalibrationReader(calibration, batch_size=batch_size)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch["images"])
    return batches


@pytest.mark.parametrize(("count", "sizes"), [(3, [3]), (10, [8, 2]), (16, [8, 8])])
def test_every_image_is_yielded_once_per_pass(tmp_path, count, sizes):
    calibration = load_calibration_set(_write_images(tmp_path, count), SIZE, min_images=0)
    reader = CalibrationReader(calibration, batch_size=8)
    assert len(reader) == len(sizes)
    batches = _batches(calibration, 8)
    assert [len(b) for b in batches] == sizes
    assert np.array_equal(np.concatenate(batches), calibration.images)
    reader.get_next()
    reader.rewind()
    assert sum(len(b["images"]) for b in reader) == count


def test_no_image_is_an_error_before_anything_is_built(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images"):
        calibration_files(ModelMetadata(), tmp_path / "empty")
    with pytest.raises(DataError, match="No calibration images"):
        load_calibration_set([], SIZE)


def test_tensors_equal_the_runtime_preprocessing_for_other_sizes_and_modes(tmp_path):
    rng = np.random.default_rng(1)
    gray = tmp_path / "gray_100x70.png"
    cv2.imwrite(str(gray), rng.integers(0, 256, (70, 100), dtype=np.uint8))
    rgba = tmp_path / "rgba_20x20.png"
    cv2.imwrite(str(rgba), rng.integers(0, 256, (20, 20, 4), dtype=np.uint8))
    wide16 = tmp_path / "deep_64x40.png"
    cv2.imwrite(str(wide16), rng.integers(0, 65535, (40, 64, 3), dtype=np.uint16))
    jpeg = tmp_path / "photo_90x90.jpg"
    cv2.imwrite(str(jpeg), rng.integers(0, 256, (90, 90, 3), dtype=np.uint8))
    files = [gray, rgba, wide16, jpeg]

    calibration = load_calibration_set(files, SIZE, min_images=0)

    expected = np.stack([preprocess_file(path, SIZE)[0] for path in files])
    assert calibration.images.dtype == np.uint8 and calibration.images.shape == (4, SIZE, SIZE, 3)
    assert np.array_equal(calibration.images, expected)
    assert calibration.conversions["resized"] == 4
    assert calibration.conversions["grayscale->RGB"] == 1
    assert any("alpha dropped" in note for note in calibration.conversions)


def test_a_graph_with_an_in_graph_resize_gets_camera_size_frames(tmp_path):
    files = _write_images(tmp_path, 2, size=50)
    calibration = load_calibration_set(files, (24, 40), min_images=0)
    assert calibration.images.shape == (2, 24, 40, 3)


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    files = _write_images(tmp_path, 5)
    (tmp_path / "empty.png").write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(files[0].read_bytes()[:100])
    calibration = load_calibration_set(list_images(tmp_path), SIZE, min_images=0)
    assert len(calibration) == 5
    assert {p.name for p, _ in calibration.skipped} == {"empty.png", "truncated.png"}
    assert calibration.summary()["n_skipped"] == 2


def test_an_all_corrupt_folder_is_an_error(tmp_path):
    for index in range(3):
        (tmp_path / f"bad_{index}.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="None of the 3 calibration files"):
        load_calibration_set(list_images(tmp_path), SIZE)


def test_too_few_images_is_a_warning_with_the_count(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fmabs_edge.calib.reader"):
        load_calibration_set(_write_images(tmp_path, 3), SIZE, min_images=32)
    assert "Only 3 readable calibration images" in caplog.text


def test_training_split_is_used_and_heldout_images_never(tmp_path):
    files = _write_images(tmp_path / "good", 10)
    metadata = ModelMetadata()
    metadata.training = {
        "data": str(tmp_path / "good"),
        "train_files": [str(p) for p in files[:7]],
        "heldout_files": [str(p) for p in files[7:]],
    }
    chosen, source, excluded = calibration_files(metadata)
    assert chosen == files[:7] and excluded == 0 and "training split" in source

    # A folder that holds the held-out images too: those are left out and counted.
    chosen, _, excluded = calibration_files(metadata, tmp_path / "good")
    assert chosen == files[:7] and excluded == 3

    # Evenly spaced subset under a cap.
    capped, _, _ = calibration_files(metadata, None, max_images=3)
    assert capped == [files[0], files[3], files[6]]


def test_no_training_split_and_no_folder_is_a_usage_error():
    with pytest.raises(UsageError, match="--calib"):
        calibration_files(ModelMetadata())


def test_strided_calibration_ranges_cover_every_batch_once(tmp_path):
    # onnxruntime's CalibStridedMinMax calls set_range(start, start + stride) over len(reader) batches.
    calibration = load_calibration_set(_write_images(tmp_path, 10), SIZE, min_images=0)
    reader = CalibrationReader(calibration, batch_size=4)
    seen = []
    for start in range(len(reader)):
        reader.set_range(start, start + 1)
        while (batch := reader.get_next()) is not None:
            seen.append(batch["images"])
    assert [len(b) for b in seen] == [4, 4, 2]
    assert np.array_equal(np.concatenate(seen), calibration.images)
