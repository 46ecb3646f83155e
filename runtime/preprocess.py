"""The one preprocessing path: decode (with the corrupt-file policy), convert, resize to S×S.

Training, threshold fitting, calibration and every runner call :func:`load_image` and
:func:`resize_to_model`; nothing else in fmabs-edge resizes an image for the model. Everything
after this point (cast to float, scaling, mean/std, NHWC -> NCHW) happens inside the graph.

Conversion policy (logged once per file at DEBUG, summarised by callers):

- 8-bit grayscale -> RGB by copying the channel;
- palette PNG -> RGB through its palette (OpenCV expands it);
- RGBA / grayscale+alpha -> alpha dropped (never composited: a transparent part is still a part);
- 16-bit -> 8-bit by ``round(v / 257)`` (full range preserved);
- anything else (float TIFF, more than 4 channels) is rejected as unsupported.

Corrupt-file policy: an empty file, a file OpenCV cannot decode, a JPEG without its end-of-image
marker or a PNG without its IEND chunk (truncated files that decoders silently fill with grey)
raises :class:`~fmabs_edge.errors.CorruptImageError`; callers report it by name and skip it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fmabs_edge.errors import CorruptImageError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESIZE_RULE = "stretch to SxS; cv2 INTER_AREA when shrinking, INTER_LINEAR when enlarging"


@dataclass
class DecodedImage:
    """An image as the model's preprocessing sees it."""

    path: Path
    #: ``(H, W, 3) uint8`` RGB at the file's own resolution.
    rgb: np.ndarray
    #: What the conversion policy did ("" when the file was already 8-bit RGB).
    conversion: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _check_complete(path: Path, data: bytes) -> None:
    """Reject truncated JPEG/PNG files that decoders would silently complete with filler."""
    if data[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in data[-1024:]:
            raise CorruptImageError(
                f"{path}: truncated JPEG (no end-of-image marker); re-export or remove it."
            )
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            raise CorruptImageError(
                f"{path}: truncated PNG (no IEND chunk); re-export or remove it."
            )


def decode_image_bytes(data: bytes, path: Path) -> DecodedImage:
    """Decode encoded image bytes and apply the conversion policy; ``path`` names it in errors."""
    if not data:
        raise CorruptImageError(
            f"{path}: empty file (0 bytes); remove it or replace it with the real image."
        )
    _check_complete(path, data)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise CorruptImageError(
            f"{path}: not a decodable image (corrupt, or another format with this name)."
        )
    return convert_to_rgb8(image, path)


def convert_to_rgb8(image: np.ndarray, path: Path) -> DecodedImage:
    """Apply the conversion policy to an OpenCV-decoded array (BGR channel order)."""
    notes = []
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
        notes.append("16-bit->8-bit")
    elif image.dtype != np.uint8:
        raise CorruptImageError(
            f"{path}: unsupported pixel type {image.dtype}; convert it to 8- or 16-bit."
        )
    if image.ndim == 2:
        rgb = np.repeat(image[:, :, None], 3, axis=2)
        notes.append("grayscale->RGB")
    elif image.ndim == 3 and image.shape[2] == 1:
        rgb = np.repeat(image, 3, axis=2)
        notes.append("grayscale->RGB")
    elif image.ndim == 3 and image.shape[2] == 2:
        rgb = np.repeat(image[:, :, :1], 3, axis=2)
        notes.append("grayscale+alpha->RGB (alpha dropped)")
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        notes.append("RGBA->RGB (alpha dropped)")
    else:
        raise CorruptImageError(
            f"{path}: unsupported image layout {image.shape}; expected 1 to 4 channels."
        )
    conversion = ", ".join(notes)
    if conversion:
        logger.debug("%s: converted %s", path, conversion)
    return DecodedImage(path=Path(path), rgb=np.ascontiguousarray(rgb), conversion=conversion)


def load_image(path: str | Path) -> DecodedImage:
    """Read and decode one file. Raises CorruptImageError for anything the policy rejects."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptImageError(f"{path}: cannot be read ({err.strerror}).") from err
    return decode_image_bytes(data, path)


def resize_image(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The one resize: ``(H, W, 3) uint8`` -> ``(height, width, 3) uint8`` by :data:`RESIZE_RULE`."""
    if height <= 0 or width <= 0:
        raise UsageError(f"Resize target must be positive, got {height}x{width}.")
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    shrinking = rgb.shape[0] * rgb.shape[1] >= height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def resize_to_model(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to the model's input: ``(H, W, 3) uint8`` -> ``(size, size, 3) uint8``."""
    return resize_image(rgb, size, size)


def preprocess_file(path: str | Path, size: int) -> tuple[np.ndarray, DecodedImage]:
    """Decode and resize one file: ``((size, size, 3) uint8, DecodedImage)``."""
    decoded = load_image(path)
    return resize_to_model(decoded.rgb, size), decoded
