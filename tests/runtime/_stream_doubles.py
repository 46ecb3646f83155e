"""Test doubles for the streaming tests: a brightness "model" (ONNX and in-process), scripted
sources and a fake OpenCV capture. Imported by tests/runtime/test_stream*.py and test_sources.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from fmabs_edge.artefacts import write_metadata
from fmabs_edge.metadata import ModelConfig, ModelMetadata
from fmabs_edge.runtime.runners import Runner
from fmabs_edge.runtime.sources import Frame, Source

#: Map value of a pixel = BRIGHTNESS_SCALE * mean(R, G, B) / 255.
BRIGHTNESS_SCALE = 10.0


def brightness_metadata(size: int, threshold: float) -> ModelMetadata:
    metadata = ModelMetadata(
        model=ModelConfig(image_size=size), threshold=threshold, threshold_rule="test"
    )
    return metadata


def write_brightness_onnx(path: Path, size: int = 64, threshold: float = 6.0) -> Path:
    """An fmabs-edge-contract ONNX file whose anomaly map is the pixel brightness (0..10).

    ``images (N, S, S, 3) uint8 -> anomaly_map (N, 1, S, S) = 10 * mean_c(x) / 255``,
    ``image_score (N,) = max of the map``.
    """
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["t", "scale"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2, 3], keepdims=0),
    ]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [BRIGHTNESS_SCALE / 255.0])
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size]),
            helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["N"]),
        ],
        [scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_metadata(model, brightness_metadata(size, threshold))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class BrightnessRunner(Runner):
    """In-process twin of :func:`write_brightness_onnx`; ``delay_s`` per batch, ``nan_marker``
    (value of a frame's top-left pixel) makes that frame's map NaN; ``input_hw`` other than
    ``(size, size)`` stands for a graph that resizes camera frames inside."""

    backend = "fake"

    def __init__(
        self,
        path: Path,
        size: int = 32,
        threshold: float = 6.0,
        max_batch: int | None = None,
        delay_s: float = 0.0,
        nan_marker: int | None = None,
        input_hw: tuple[int, int] | None = None,
    ) -> None:
        path.write_bytes(b"brightness")
        super().__init__(
            path, brightness_metadata(size, threshold), input_hw or (size, size), max_batch
        )
        self.model_hash = "brightness-test"
        self.delay_s = delay_s
        self.nan_marker = nan_marker
        self.batches: list[int] = []

    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(images.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        size = self.image_size
        if images.shape[1:3] != (size, size):  # the "in-graph" resize
            images = np.stack(
                [cv2.resize(i, (size, size), interpolation=cv2.INTER_LINEAR) for i in images]
            )
        maps = BRIGHTNESS_SCALE * images.astype(np.float32).mean(axis=3, keepdims=True) / 255.0
        maps = maps.transpose(0, 3, 1, 2).copy()
        if self.nan_marker is not None:
            hit = images[:, 0, 0, 0] == self.nan_marker
            maps[hit] = np.nan
        return maps, maps.max(axis=(1, 2, 3))


def dark_frame(height: int, width: int, seed: int) -> np.ndarray:
    """``(H, W, 3) uint8`` dark noise (values 10..60): brightness map well below 6."""
    rng = np.random.default_rng(seed)
    return rng.integers(10, 60, size=(height, width, 3), dtype=np.uint8)


def with_defect(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy with a white rectangle ``(x, y, w, h)`` (map value 10 > threshold 6)."""
    out = rgb.copy()
    x, y, w, h = box
    out[y : y + h, x : x + w] = 255
    return out


class ScriptedSource(Source):
    """Yields given frames; ``delays_s[i]`` is slept before frame i (interruptible by stop)."""

    kind = "fake"

    def __init__(
        self,
        source_id: str,
        frames: Sequence[np.ndarray],
        delays_s: Sequence[float] | None = None,
        live: bool = False,
        loop_forever: bool = False,
    ) -> None:
        super().__init__(f"fake:{source_id}", source_id)
        self._frames = list(frames)
        self._delays = list(delays_s) if delays_s is not None else [0.0] * len(self._frames)
        self.live = live  # instance attribute shadows the class flag
        self.loop_forever = loop_forever
        self.yielded = 0
        self.closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        index = 0
        while not self.stopping:
            for rgb, delay in zip(self._frames, self._delays):
                if delay and self._stop.wait(delay):
                    return
                if self.stopping:
                    return
                yield Frame(rgb, self.source_id, index, float(index))
                index += 1
                self.yielded = index
            if not self.loop_forever:
                break
        self.report("ended", f"{index} frames")

    def close(self) -> None:
        self.closed.set()


class FakeCapture:
    """A cv2.VideoCapture stand-in: gives ``frames`` (BGR) then fails every read."""

    def __init__(self, frames: Sequence[np.ndarray], opened: bool = True) -> None:
        self._frames = list(frames)
        self._opened = opened
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802
        return self._opened and not self.released

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.released or not self._frames:
            return False, None
        return True, self._frames.pop(0)

    def get(self, prop: int) -> float:
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """Write RGB frames to an MJPG .avi (works with headless OpenCV)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
