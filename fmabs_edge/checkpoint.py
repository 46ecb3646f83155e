"""Checkpoints (``model.pt``): weights plus :class:`~fmabs_edge.metadata.ModelMetadata`.

Layout of the file (a ``torch.save`` dict): ``format``, ``metadata`` (dict), ``state_dict`` and,
in resumable checkpoints (``last.pt``), ``optimizer``, ``scheduler`` and ``epoch``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from fmabs_edge.artefacts import atomic_output
from fmabs_edge.errors import ModelError
from fmabs_edge.metadata import ModelMetadata
from fmabs_edge.model import DeployModel, FmabsNet, load_state_strict

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, net: FmabsNet, metadata: ModelMetadata, **extra: Any) -> None:
    """Write weights and metadata atomically (a failed write leaves the old file in place)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "metadata": metadata.to_dict(),
        "state_dict": net.state_dict(),
        **extra,
    }
    with atomic_output(path) as temp:
        torch.save(payload, temp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint not found: {path}. Train one with 'fmabs-edge train'.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for unreadable files
        raise ModelError(f"{path}: cannot be read as a checkpoint ({err}).") from err
    if not isinstance(payload, dict) or "metadata" not in payload or "state_dict" not in payload:
        raise ModelError(
            f"{path}: not an fmabs-edge checkpoint (no metadata/state_dict). Train one with 'fmabs-edge train'."
        )
    return payload


def load_checkpoint(path: str | Path) -> tuple[FmabsNet, ModelMetadata]:
    """Rebuild the network from the stored configuration and load its weights (eval mode)."""
    payload = read_checkpoint(path)
    metadata = ModelMetadata.from_dict(payload["metadata"], str(path))
    net = FmabsNet(metadata.model, teacher_weights=None)
    load_state_strict(net, payload["state_dict"], str(path))
    net.eval()
    return net, metadata


def load_deploy_model(path: str | Path) -> tuple[DeployModel, ModelMetadata]:
    """The deployable model (uint8 NHWC in, map and score out) with the stored scoring."""
    net, metadata = load_checkpoint(path)
    return DeployModel(net, metadata.scoring, metadata.normalisation).eval(), metadata


def update_checkpoint_metadata(path: str | Path, **fields: Any) -> ModelMetadata:
    """Rewrite top-level metadata fields (for example the threshold) and keep the weights."""
    payload = read_checkpoint(path)
    metadata = ModelMetadata.from_dict(payload["metadata"], str(path))
    for key, value in fields.items():
        if not hasattr(metadata, key):
            raise ModelError(f"Unknown metadata field '{key}'.")
        setattr(metadata, key, value)
    payload["metadata"] = metadata.to_dict()
    with atomic_output(path) as temp:
        torch.save(payload, temp)
    return metadata
