"""A backend with known delays, for testing the timing protocol without timing anything real.

:class:`FakeRunner` follows the :class:`~fmabs_edge.runtime.runners.Runner` interface. Its
anomaly map is the pixel brightness ``mean(RGB) / 255`` as ``(N, 1, S, S) float32`` and its image
score the map's maximum, so a test set whose defects are bright squares on a dark background gives
known accuracy. Each call "takes" the next delay of a schedule: with a :class:`FakeClock` the clock
is advanced by exactly that much (deterministic percentiles), without one the call sleeps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fmabs_edge.errors import UsageError
from fmabs_edge.metadata import ModelConfig, ModelMetadata
from fmabs_edge.runtime.runners import Runner

logger = logging.getLogger(__name__)


class FakeClock:
    """A clock in seconds that moves only when told to; pass it as the protocol's ``clock``."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = float(start_s)

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += float(seconds)


class FakeRunner(Runner):
    """A runner whose call ``k`` takes ``delays_ms[k % len(delays_ms)] + per_image_ms * N``.

    ``call_log`` (shared between runners when the same list is passed) records ``name`` once per
    call, so a test can check the order in which variants ran. ``input_hw`` stands for a graph
    with an in-graph resize: frames come at that size, maps leave at ``image_size``.
    """

    backend = "fake"

    def __init__(
        self,
        name: str,
        delays_ms: Sequence[float],
        image_size: int = 32,
        per_image_ms: float = 0.0,
        clock: FakeClock | None = None,
        threshold: float = 0.5,
        precision: str = "fp32",
        checkpoint_sha256: str = "fake-model",
        call_log: list[str] | None = None,
        input_hw: tuple[int, int] | None = None,
    ) -> None:
        if not delays_ms or any(d < 0 for d in delays_ms):
            raise UsageError(f"FakeRunner needs non-negative delays, got {list(delays_ms)}.")
        metadata = ModelMetadata(model=ModelConfig(image_size=image_size))
        metadata.threshold = float(threshold)
        metadata.threshold_rule = "fixed for tests"
        metadata.precision = precision
        metadata.checkpoint_sha256 = checkpoint_sha256
        hw = input_hw or (image_size, image_size)
        super().__init__(Path(f"{name}.fake"), metadata, hw, max_batch=None)
        self.name = name
        self.delays_ms = [float(d) for d in delays_ms]
        self.per_image_ms = float(per_image_ms)
        self.clock = clock
        self.calls = 0
        self.call_log = call_log if call_log is not None else []

    @classmethod
    def open(cls, path: str | Path, **options: object) -> "FakeRunner":
        """Open a fake "artefact": the name is the file stem, options as in ``__init__``."""
        return cls(Path(path).stem, **options)  # type: ignore[arg-type]

    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        delay_ms = self.delays_ms[self.calls % len(self.delays_ms)] + self.per_image_ms * len(
            images
        )
        self.calls += 1
        self.call_log.append(self.name)
        if self.clock is not None:
            self.clock.advance(delay_ms / 1000.0)
        else:
            time.sleep(delay_ms / 1000.0)
        maps = images.mean(axis=3, dtype=np.float32)[:, None] / 255.0
        size = self.image_size
        if maps.shape[2:] != (size, size):  # a camera-size input resized inside the "graph"
            maps = np.stack([cv2.resize(m[0], (size, size))[None] for m in maps])
        return maps, maps.reshape(len(images), -1).max(axis=1)
