"""Per-camera configuration: region of interest, ignore mask, aspect rule and operating point.

A small YAML (``.yaml``/``.yml``) or TOML (``.toml``) file. Either one flat block that applies to
every source, or a ``default`` block plus one block per source id under ``cameras`` (a camera's
block overrides the default key by key)::

    default:
      aspect: pad              # pad (default): pad the ROI to a square; stretch: the model's own rule
    cameras:
      left:
        roi: [100, 40, 800, 600]            # x, y, width, height in frame pixels
        ignore:
          mask: left_ignore.png             # frame-sized image; non-zero pixels never count
          polygons:                         # frame coordinates (x, y)
            - [[0, 0], [120, 0], [120, 60], [0, 60]]
        image_threshold: 2.5                # default: the model's threshold
        pixel_threshold: 2.0                # default: the image threshold
        min_defect_area: 30                 # frame pixels; default 0

Geometry (what :class:`FrameGeometry` does for one frame size):

1. crop the ROI (never beyond the frame), 2. pad it to a square with ``pad_value`` (centred; the
part is never cropped away) or leave it for the stretch, 3. the one resize
(:func:`fmabs_edge.runtime.preprocess.resize_image`) to the runner's input: ``S x S``, or the
camera size of a graph that resizes inside (``export --input-size``). The anomaly map goes the
other way: resized to the padded square, the padding cut off, giving a map in ROI (frame) pixels;
the ignore mask then removes its pixels before the image decision and the defect regions are taken.
"""

from __future__ import annotations

import logging
import math

try:  # Python 3.11+; tomli is the same parser for 3.10 (JetPack 6's Python)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fmabs_edge.errors import CorruptImageError, DataError, UsageError
from fmabs_edge.runtime.preprocess import load_image, resize_image

logger = logging.getLogger(__name__)

ASPECT_RULES = ("pad", "stretch")
_KEYS = (
    "roi",
    "aspect",
    "pad_value",
    "ignore",
    "image_threshold",
    "pixel_threshold",
    "min_defect_area",
)
_IGNORE_KEYS = ("mask", "polygons")

Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class CameraConfig:
    """The configuration of one camera (see the module docstring for the file format).

    ``roi``: ``(x, y, width, height)`` in frame pixels, None for the whole frame.
    ``aspect``: ``"pad"`` (pad the ROI to a square, centred, with ``pad_value`` 0..255) or
    ``"stretch"`` (resize the ROI to S x S as it is). ``ignore_mask``: an image file of the frame's
    size whose non-zero pixels never count; ``ignore_polygons``: polygons in frame coordinates whose
    inside never counts. ``image_threshold`` / ``pixel_threshold`` in anomaly-map units (None: the
    model's threshold; the pixel threshold defaults to the image threshold); ``min_defect_area``
    in frame pixels (a frame scoring above the threshold is still a pass when no region reaches it).
    """

    roi: tuple[int, int, int, int] | None = None
    aspect: str = "pad"
    pad_value: int = 0
    ignore_mask: Path | None = None
    ignore_polygons: tuple[Polygon, ...] = ()
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    min_defect_area: int = 0

    @property
    def has_ignore(self) -> bool:
        return self.ignore_mask is not None or bool(self.ignore_polygons)


@dataclass
class CameraConfigs:
    """The configuration file's content: one :class:`CameraConfig` per source id plus a default."""

    default: CameraConfig = field(default_factory=CameraConfig)
    cameras: dict[str, CameraConfig] = field(default_factory=dict)
    path: Path | None = None

    def for_source(self, source_id: str) -> CameraConfig:
        return self.cameras.get(source_id, self.default)

    def warn_unused(self, source_ids: list[str]) -> list[str]:
        """Log and return camera ids of the file that no source has (usually a typo)."""
        unused = sorted(set(self.cameras) - set(source_ids))
        if unused:
            logger.warning(
                "%s: no source has the id(s) %s (sources: %s); name sources ID=SPEC to match",
                self.path,
                unused,
                source_ids,
            )
        return unused


# ----------------------------------------------------------------------------------------------
# reading the file


def load_camera_configs(path: str | Path) -> CameraConfigs:
    """Read a YAML or TOML camera configuration; raise UsageError naming the bad key or value."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Camera configuration not found: {path}.")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"{path}: camera configuration must be .yaml, .yml or .toml.")
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise UsageError(f"{path}: not valid {path.suffix[1:].upper()} ({err}).") from err
    except Exception as err:  # yaml.YAMLError and friends
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"{path}: not valid YAML ({err}).") from err
    if not isinstance(data, dict):
        raise UsageError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}."
        )

    base = path.parent
    if "cameras" in data or "default" in data:
        extra = sorted(set(data) - {"cameras", "default"})
        if extra:
            raise UsageError(
                f"{path}: unknown top-level key(s) {extra}; use 'default' and 'cameras'."
            )
        default_raw = data.get("default") or {}
        cameras_raw = data.get("cameras") or {}
        if not isinstance(cameras_raw, dict):
            raise UsageError(f"{path}: 'cameras' must map source ids to settings.")
        default = parse_camera_config(default_raw, base, f"{path}: default")
        cameras = {
            str(sid): parse_camera_config(
                {**default_raw, **(raw or {})}, base, f"{path}: cameras.{sid}"
            )
            for sid, raw in cameras_raw.items()
        }
        return CameraConfigs(default, cameras, path)
    return CameraConfigs(parse_camera_config(data, base, str(path)), {}, path)


def parse_camera_config(raw: dict[str, Any], base: Path, where: str) -> CameraConfig:
    """Validate one block; relative mask paths are taken from ``base`` (the file's folder)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping of settings, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; allowed: {list(_KEYS)}.")

    roi = None
    if raw.get("roi") is not None:
        values = raw["roi"]
        if isinstance(values, dict):
            values = [values.get(k) for k in ("x", "y", "width", "height")]
        if (
            not isinstance(values, (list, tuple))
            or len(values) != 4
            or not all(isinstance(v, int) for v in values)
        ):
            raise UsageError(
                f"{where}: roi must be [x, y, width, height] in whole pixels, got {raw['roi']!r}."
            )
        if values[0] < 0 or values[1] < 0 or values[2] <= 0 or values[3] <= 0:
            raise UsageError(f"{where}: roi needs x, y >= 0 and width, height > 0, got {values}.")
        roi = tuple(int(v) for v in values)

    aspect = str(raw.get("aspect", "pad"))
    if aspect not in ASPECT_RULES:
        raise UsageError(f"{where}: aspect '{aspect}' unknown; choose one of {ASPECT_RULES}.")
    pad_value = raw.get("pad_value", 0)
    if not isinstance(pad_value, int) or not 0 <= pad_value <= 255:
        raise UsageError(f"{where}: pad_value must be an integer 0..255, got {pad_value!r}.")

    ignore = raw.get("ignore") or {}
    if not isinstance(ignore, dict) or set(ignore) - set(_IGNORE_KEYS):
        raise UsageError(
            f"{where}: ignore must be a mapping with keys {list(_IGNORE_KEYS)}, got {ignore!r}."
        )
    mask = None
    if ignore.get("mask"):
        mask = Path(ignore["mask"])
        mask = mask if mask.is_absolute() else base / mask
        if not mask.is_file():
            raise UsageError(f"{where}: ignore mask file not found: {mask}.")
    polygons = tuple(_parse_polygon(p, where) for p in ignore.get("polygons") or [])

    thresholds = {}
    for key in ("image_threshold", "pixel_threshold"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)
        ):
            raise UsageError(f"{where}: {key} must be a number, got {value!r}.")
        thresholds[key] = None if value is None else float(value)
    min_area = raw.get("min_defect_area", 0)
    if not isinstance(min_area, int) or min_area < 0:
        raise UsageError(
            f"{where}: min_defect_area must be a whole number of pixels >= 0, got {min_area!r}."
        )

    return CameraConfig(
        roi, aspect, pad_value, mask, polygons, min_defect_area=min_area, **thresholds
    )


def _parse_polygon(raw: Any, where: str) -> Polygon:
    try:
        points = tuple((float(x), float(y)) for x, y in raw)
    except (TypeError, ValueError) as err:
        raise UsageError(
            f"{where}: a polygon must be a list of [x, y] points, got {raw!r}."
        ) from err
    if len(points) < 3:
        raise UsageError(f"{where}: a polygon needs at least 3 points, got {len(points)}.")
    return points


# ----------------------------------------------------------------------------------------------
# geometry


@dataclass
class FrameGeometry:
    """How frames of one size map into the model and the model's map back into the frame.

    ``roi``: ``(x, y, w, h)`` clipped to the frame. ``padding``: ``(top, bottom, left, right)``
    added to the ROI to make it square (zeros for ``stretch``). ``valid``: ``(h, w) bool`` in ROI
    pixels, False where the ignore mask says never count; None when nothing is ignored.
    """

    frame_hw: tuple[int, int]
    roi: tuple[int, int, int, int]
    padding: tuple[int, int, int, int]
    pad_value: int
    valid: np.ndarray | None

    @property
    def is_identity(self) -> bool:
        """True when the model sees exactly the frame: the map needs no cut and no mask."""
        full = self.roi == (0, 0, self.frame_hw[1], self.frame_hw[0])
        return full and self.padding == (0, 0, 0, 0) and self.valid is None

    def to_model(self, rgb: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
        """``(H, W, 3) uint8`` frame -> ``(*input_hw, 3) uint8`` runner input (ROI, pad, resize)."""
        x, y, w, h = self.roi
        crop = rgb[y : y + h, x : x + w]
        top, bottom, left, right = self.padding
        if top or bottom or left or right:
            crop = cv2.copyMakeBorder(
                crop, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(self.pad_value,) * 3
            )
        return resize_image(crop, int(input_hw[0]), int(input_hw[1]))

    def map_to_roi(self, anomaly_map: np.ndarray) -> np.ndarray:
        """``(S, S) float32`` model map -> ``(h, w) float32`` map in ROI pixels (padding cut off)."""
        x, y, w, h = self.roi
        top, bottom, left, right = self.padding
        full_w, full_h = w + left + right, h + top + bottom
        resized = cv2.resize(
            np.ascontiguousarray(anomaly_map, dtype=np.float32),
            (full_w, full_h),
            interpolation=cv2.INTER_LINEAR,
        )
        return resized[top : top + h, left : left + w]


class CameraView:
    """A camera's configuration applied to its frames; caches the geometry per frame size."""

    def __init__(self, config: CameraConfig, source_id: str = "") -> None:
        self.config = config
        self.source_id = source_id
        self._cache: dict[tuple[int, int], FrameGeometry] = {}
        self._mask_image: np.ndarray | None = None

    def geometry(self, frame_hw: tuple[int, int]) -> FrameGeometry:
        """The geometry for frames of ``(height, width)``; DataError when the config cannot fit."""
        frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
        cached = self._cache.get(frame_hw)
        if cached is None:
            cached = self._build(frame_hw)
            self._cache[frame_hw] = cached
        return cached

    def _build(self, frame_hw: tuple[int, int]) -> FrameGeometry:
        height, width = frame_hw
        cfg = self.config
        x, y, w, h = cfg.roi or (0, 0, width, height)
        if x >= width or y >= height:
            raise DataError(
                f"{self.source_id}: roi {cfg.roi} starts outside the {width}x{height} frame; fix the camera "
                "configuration."
            )
        w, h = min(w, width - x), min(h, height - y)
        if cfg.roi is not None and (w, h) != tuple(cfg.roi[2:]):
            logger.warning(
                "%s: roi %s clipped to the %dx%d frame", self.source_id, cfg.roi, width, height
            )

        padding = (0, 0, 0, 0)
        if cfg.aspect == "pad" and w != h:
            side = max(w, h)
            top, left = (side - h) // 2, (side - w) // 2
            padding = (top, side - h - top, left, side - w - left)

        valid = None
        if cfg.has_ignore:
            ignore = self._ignore_pixels(frame_hw)
            valid = ~ignore[y : y + h, x : x + w]
            if not valid.any():
                raise DataError(
                    f"{self.source_id}: the ignore mask covers the whole region of interest."
                )
        return FrameGeometry(frame_hw, (x, y, w, h), padding, cfg.pad_value, valid)

    def _ignore_pixels(self, frame_hw: tuple[int, int]) -> np.ndarray:
        """``(H, W) bool`` frame-sized: True where pixels never count (mask file or polygons)."""
        height, width = frame_hw
        ignore = np.zeros((height, width), dtype=bool)
        if self.config.ignore_mask is not None:
            if self._mask_image is None:
                try:
                    self._mask_image = load_image(self.config.ignore_mask).rgb.max(axis=2) > 0
                except CorruptImageError as err:
                    raise DataError(f"{self.source_id}: ignore mask unreadable: {err}") from err
            if self._mask_image.shape != (height, width):
                raise DataError(
                    f"{self.source_id}: ignore mask {self.config.ignore_mask} is "
                    f"{self._mask_image.shape[1]}x{self._mask_image.shape[0]} but frames are {width}x{height}; "
                    "draw the mask at the camera's resolution."
                )
            ignore |= self._mask_image
        if self.config.ignore_polygons:
            canvas = np.zeros((height, width), dtype=np.uint8)
            polys = [
                np.round(np.asarray(p, dtype=np.float64)).astype(np.int32)
                for p in self.config.ignore_polygons
            ]
            cv2.fillPoly(canvas, polys, 1)
            ignore |= canvas.astype(bool)
        return ignore
