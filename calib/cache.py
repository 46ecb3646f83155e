"""A cache of INT8 calibration ranges, reused only when nothing that changes the scales changed.

The key (:class:`CalibrationKey`) holds: the ONNX graph hash (nodes and weights, not metadata),
the input shape, the preprocessing (resize rule and conversion policy), the calibration method
and its options, the quantiser version, the image set (sorted paths with byte sizes and
modification times) and the batch size. An entry is used only on an exact match of every field;
each lookup is logged as a hit, or as a miss with the fields that differ from the closest entry.

Layout: ``<folder>/<digest>.key.json`` (the key) beside ``<digest>.ranges.json`` (the tensor
ranges, written and read by ``onnxruntime.quantization.quantize_static``'s calibration cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fmabs_edge.artefacts import write_text_atomic

logger = logging.getLogger(__name__)

#: Bumped when the meaning of a cached entry changes.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fmabs-edge/calibration`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "fmabs-edge" / "calibration"


def image_set_fingerprint(files: list[Path]) -> str:
    """sha256 over the sorted ``(resolved path, byte size, mtime in ns)`` of ``files``."""
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in files):
        try:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CalibrationKey:
    """Everything that changes the calibrated ranges; equal keys give equal ranges."""

    graph_sha256: str
    #: ``(N?, H, W, C)`` as ``"HxWxC"`` (the batch dimension is free).
    input_shape: str
    #: The preprocessing: resize rule and the conversion policy's module version.
    preprocessing: str
    method: str
    #: Calibration options as sorted JSON (percentile, symmetric ranges, ...).
    options: str
    quantiser: str
    images: str
    n_images: int
    batch_size: int
    format: int = CACHE_FORMAT

    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CacheLookup:
    """The outcome of one lookup: the ranges file to read or write, hit or miss, and why."""

    ranges_path: Path
    hit: bool
    reason: str


class CalibrationCache:
    """Calibration ranges on disk under ``folder``, keyed by :class:`CalibrationKey`."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _paths(self, key: CalibrationKey) -> tuple[Path, Path]:
        digest = key.digest()
        return self.folder / f"{digest}.key.json", self.folder / f"{digest}.ranges.json"

    def lookup(self, key: CalibrationKey) -> CacheLookup:
        """Find ``key``; log a hit, or a miss with the reason (fields differing from the closest entry)."""
        key_path, ranges_path = self._paths(key)
        if key_path.is_file() and ranges_path.is_file():
            try:
                stored = json.loads(key_path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = None
            if stored == key.to_dict():
                logger.info("Calibration cache hit: %s", ranges_path)
                return CacheLookup(ranges_path, True, "exact match")
        reason = self._miss_reason(key)
        logger.info("Calibration cache miss (%s); calibrating", reason)
        # The quantiser reads any file at this path as a hit: clear a stale or unkeyed one.
        self.folder.mkdir(parents=True, exist_ok=True)
        ranges_path.unlink(missing_ok=True)
        return CacheLookup(ranges_path, False, reason)

    def _miss_reason(self, key: CalibrationKey) -> str:
        if not self.folder.is_dir():
            return f"no cache at {self.folder}"
        wanted = key.to_dict()
        best: list[str] | None = None
        for path in sorted(self.folder.glob("*.key.json")):
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(stored, dict):
                continue
            differing = [name for name in wanted if stored.get(name) != wanted[name]]
            if best is None or len(differing) < len(best):
                best = differing
        if best is None:
            return "no cached entry"
        if not best:
            return "entry incomplete (ranges file missing)"
        return "closest entry differs in " + ", ".join(best)

    def store(self, key: CalibrationKey, lookup: CacheLookup) -> None:
        """Record ``key`` beside ranges the quantiser has just written to ``lookup.ranges_path``."""
        key_path, _ = self._paths(key)
        if not lookup.ranges_path.is_file():
            logger.warning(
                "The quantiser wrote no ranges to %s; nothing cached", lookup.ranges_path
            )
            return
        write_text_atomic(key_path, json.dumps(key.to_dict(), indent=2, sort_keys=True))
        logger.info("Cached calibration ranges: %s", lookup.ranges_path)
