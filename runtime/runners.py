"""One small interface for every backend, and :func:`load_runner` to open any artefact.

A runner opens one artefact, says what it expects (input size, batch limit, metadata), takes a
batch of preprocessed frames ``(N, H, W, 3) uint8`` RGB and returns the anomaly maps and image
scores. It is a context manager that frees what it holds. ``run``, ``eval`` and the benchmark take
any runner and never look inside it.

Backends: ``ort`` (ONNX Runtime, the CPU default and the reference for every other backend),
``torch`` (the checkpoint itself, the research reference; needs the ``[train]`` extra) and
``trt`` (TensorRT engines; needs the ``[trt]`` extra).
"""

from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fmabs_edge.errors import UsageError
from fmabs_edge.metadata import ModelMetadata

logger = logging.getLogger(__name__)


@dataclass
class InferenceResult:
    """Outputs for one batch: ``anomaly_map (N, 1, S, S) float32``, ``image_score (N,) float32``."""

    anomaly_map: np.ndarray
    image_score: np.ndarray


class Runner(abc.ABC):
    """Base class of every backend. Subclasses implement :meth:`_infer_batch` and :meth:`_release`."""

    backend: ClassVar[str] = ""

    def __init__(
        self, path: Path, metadata: ModelMetadata, input_hw: tuple[int, int], max_batch: int | None
    ):
        self.path = Path(path)
        self.metadata = metadata
        #: (height, width) every frame given to :meth:`infer` must have.
        self.input_hw = input_hw
        #: Largest batch the backend takes in one call (None: no limit); larger batches are split.
        self.max_batch = max_batch
        #: Identity of the graph/weights (never of the operating point), written beside each result.
        self.model_hash = ""
        self._closed = False

    @property
    def image_size(self) -> int:
        """The model resolution S of the anomaly map."""
        return self.metadata.image_size

    def infer(self, images: np.ndarray) -> InferenceResult:
        """Score ``(N, H, W, 3) uint8`` RGB frames; batches above ``max_batch`` are split."""
        if self._closed:
            raise UsageError(f"{type(self).__name__} for {self.path} is closed; open a new runner.")
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise UsageError(f"Runner input must be a uint8 numpy array, got {got}.")
        expected = (*self.input_hw, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.shape[0] < 1:
            raise UsageError(
                f"Runner input must have shape (N, {expected[0]}, {expected[1]}, 3) with N >= 1, "
                f"got {tuple(images.shape)}. Preprocess frames with fmabs_edge.runtime.preprocess."
            )
        step = self.max_batch or images.shape[0]
        maps, scores = [], []
        for start in range(0, images.shape[0], step):
            chunk = np.ascontiguousarray(images[start : start + step])
            anomaly_map, image_score = self._infer_batch(chunk)
            maps.append(np.asarray(anomaly_map, dtype=np.float32))
            scores.append(np.asarray(image_score, dtype=np.float32).reshape(-1))
        return InferenceResult(np.concatenate(maps), np.concatenate(scores))

    @abc.abstractmethod
    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch of at most ``max_batch`` validated frames."""

    def _release(self) -> None:
        """Free backend resources; called once by :meth:`close`."""

    def close(self) -> None:
        if not self._closed:
            self._release()
            self._closed = True

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """A flat description for logs and reports."""
        return {
            "backend": self.backend,
            "artefact": str(self.path),
            "image_size": self.image_size,
            "input_hw": list(self.input_hw),
            "max_batch": self.max_batch,
            "precision": self.metadata.precision,
            "model_hash": self.model_hash,
        }


#: backend name -> "module:class"; modules are imported only when that backend is opened.
BACKENDS = {
    "ort": "fmabs_edge.runtime.ort_runner:OrtRunner",
    "torch": "fmabs_edge.runtime.torch_runner:TorchRunner",
    "trt": "fmabs_edge.runtime.trt_runner:TrtRunner",
}


def infer_backend(path: Path) -> str:
    """The default backend for an artefact, from its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "ort"
    if suffix in (".pt", ".pth", ".ckpt"):
        return "torch"
    if suffix in (".engine", ".plan", ".trt"):
        return "trt"
    raise UsageError(
        f"Cannot tell the backend of {path} from its suffix '{suffix}': use a .onnx, .pt or .engine file, "
        f"or pass backend= (one of {sorted(BACKENDS)})."
    )


def load_runner(path: str | Path, backend: str | None = None, **options: Any) -> Runner:
    """Open ``path`` with ``backend`` (None: from the file suffix); options go to the runner.

    ``backend="torch"`` takes a checkpoint; ``"ort"`` an ONNX file; ``"trt"`` an engine or an
    ONNX file (built on first use where the TensorRT runner supports it).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"Model file not found: {path}.")
    name = backend or infer_backend(path)
    if name not in BACKENDS:
        raise UsageError(f"Unknown backend '{name}'; choose one of {sorted(BACKENDS)}.")
    module_name, class_name = BACKENDS[name].split(":")
    runner_class = getattr(importlib.import_module(module_name), class_name)
    runner = runner_class.open(path, **options)
    logger.info("Opened %s with the %s backend", path, name)
    return runner
