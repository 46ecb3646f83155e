"""PyTorch runner: scores with the checkpoint itself, the research reference (needs ``[train]``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fmabs_edge.errors import missing_extra
from fmabs_edge.metadata import sha256_file
from fmabs_edge.runtime.runners import Runner

logger = logging.getLogger(__name__)


class TorchRunner(Runner):
    """Runs a ``model.pt`` checkpoint in eager PyTorch (``device`` "cpu" or "cuda")."""

    backend = "torch"

    def __init__(self, path: Path, model, metadata, device: str) -> None:
        size = metadata.image_size
        super().__init__(path, metadata, (size, size), max_batch=None)
        self._model = model
        self._device = device

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu") -> "TorchRunner":
        try:
            import torch  # noqa: F401
        except ImportError as err:
            raise missing_extra("torch", "train", "The torch backend") from err
        from fmabs_edge.checkpoint import load_deploy_model

        path = Path(path)
        model, metadata = load_deploy_model(path)
        runner = cls(path, model.to(device), metadata, device)
        runner.model_hash = sha256_file(path)
        return runner

    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            anomaly_map, image_score = self._model(torch.from_numpy(images).to(self._device))
        return anomaly_map.cpu().numpy(), image_score.cpu().numpy()

    def _release(self) -> None:
        self._model = None
