"""The one preprocessing path: conversion policy per image mode, corrupt files, the one resize."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fmabs_edge.errors import CorruptImageError
from fmabs_edge.runtime.preprocess import load_image, preprocess_file, resize_image, resize_to_model


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_png_keeps_channel_order(tmp_path: Path) -> None:
    rgb = _noise(20, 30)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    decoded = load_image(path)
    np.testing.assert_array_equal(decoded.rgb, rgb)
    assert (decoded.width, decoded.height) == (30, 20)
    assert decoded.conversion == ""


def test_rgb_jpeg_decodes_close_to_the_source(tmp_path: Path) -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0], smooth[..., 1], smooth[..., 2] = 200, 90, 30
    path = tmp_path / "rgb.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    decoded = load_image(path)
    assert decoded.rgb.shape == (32, 48, 3)
    # Red stays red: a BGR/RGB swap would put 30 in the first channel.
    assert np.abs(decoded.rgb.astype(int) - smooth).max() <= 4


def test_grayscale_png_copies_the_channel(tmp_path: Path) -> None:
    gray = _noise(16, 24)[..., 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    decoded = load_image(path)
    assert decoded.rgb.shape == (16, 24, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.rgb[..., channel], gray)
    assert "grayscale" in decoded.conversion


def test_palette_png_goes_through_its_palette(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2, 0]], np.uint8).repeat(4, axis=0)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    path = tmp_path / "palette.png"
    image.save(path)
    decoded = load_image(path)
    expected = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0]], np.uint8)
    np.testing.assert_array_equal(decoded.rgb[0], expected)


def test_rgba_png_drops_alpha_without_compositing(tmp_path: Path) -> None:
    transparent = np.zeros((8, 8, 1), np.uint8)
    rgba = np.concatenate([_noise(8, 8), transparent], axis=2)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    decoded = load_image(path)
    np.testing.assert_array_equal(decoded.rgb, rgba[..., :3])
    assert "alpha dropped" in decoded.conversion


def test_16_bit_png_scales_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 100, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), values)
    decoded = load_image(path)
    np.testing.assert_array_equal(decoded.rgb[0, :, 0], [0, 1, 100, 255])
    assert "16-bit" in decoded.conversion and "grayscale" in decoded.conversion


def _truncated_jpeg(tmp_path: Path) -> tuple[Path, bytes]:
    encoded = io.BytesIO()
    Image.fromarray(_noise(256, 256)).save(encoded, format="JPEG", quality=90)
    data = encoded.getvalue()
    cut = data[: int(len(data) * 0.6)]
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    return path, cut


def test_truncated_jpeg_is_corrupt_even_where_the_decoder_fills_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _truncated_jpeg(tmp_path)
    with pytest.raises(CorruptImageError, match="truncated JPEG") as caught:
        load_image(path)
    assert str(path) in str(caught.value)

    # Many libjpeg builds (OpenCV 4.x among them) return a grey-filled full-size image for these
    # bytes instead of failing; the check must not rely on the decoder refusing them.
    import fmabs_edge.runtime.preprocess as preprocess

    grey = np.full((256, 256, 3), 128, np.uint8)
    monkeypatch.setattr(preprocess.cv2, "imdecode", lambda *args: grey)
    with pytest.raises(CorruptImageError, match="truncated JPEG"):
        load_image(path)


def test_truncated_png_is_corrupt(tmp_path: Path) -> None:
    encoded = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(encoded, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(encoded.getvalue()[: int(len(encoded.getvalue()) * 0.7)])
    with pytest.raises(CorruptImageError, match="truncated PNG") as caught:
        load_image(path)
    assert str(path) in str(caught.value)


def test_text_file_named_png_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(CorruptImageError, match="not a decodable image") as caught:
        load_image(path)
    assert str(path) in str(caught.value)


def test_zero_byte_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty file") as caught:
        load_image(path)
    assert str(path) in str(caught.value)


def test_unreadable_path_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CorruptImageError, match="cannot be read"):
        load_image(tmp_path / "missing.png")


def test_resize_rule_area_when_shrinking_linear_when_enlarging() -> None:
    big = _noise(100, 80)
    area = cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_to_model(big, 64), area)
    small = _noise(20, 30)
    np.testing.assert_array_equal(
        resize_to_model(small, 64), cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR)
    )
    same = _noise(64, 64)
    np.testing.assert_array_equal(resize_to_model(same, 64), same)
    assert resize_image(big, 32, 48).shape == (32, 48, 3)


def test_preprocess_file_is_decode_then_the_one_resize(tmp_path: Path) -> None:
    rgb = _noise(90, 120)
    path = tmp_path / "frame.png"
    Image.fromarray(rgb).save(path)
    resized, decoded = preprocess_file(path, 64)
    assert resized.dtype == np.uint8 and resized.shape == (64, 64, 3)
    np.testing.assert_array_equal(resized, resize_to_model(rgb, 64))
    assert (decoded.width, decoded.height) == (120, 90)
