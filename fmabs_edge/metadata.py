"""One metadata type for every artefact: checkpoint, ONNX file and engine manifest.

The checkpoint stores :class:`ModelMetadata` as a dict, the ONNX file stores it as JSON in one
``metadata_props`` entry, and an engine's manifest embeds the ONNX file's copy. No field is spelled
anywhere else, so a later stage reads exactly what an earlier one wrote.

The *operating point* (threshold and its rule) is metadata only: it is not part of any graph, so
re-fitting it never changes a graph hash and never invalidates an engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmabs_edge import __version__
from fmabs_edge.errors import ModelError

logger = logging.getLogger(__name__)

#: Key under which the whole metadata JSON is stored in an ONNX file's ``metadata_props``.
ONNX_METADATA_KEY = "fmabs_edge.metadata"
#: Bumped whenever a field changes meaning; readers refuse newer formats.
METADATA_FORMAT = 1


@dataclass
class ScoringConfig:
    """How the anomaly map and the image score are computed inside the graph.

    The map is ``(w_rec * E + w_inc * I) * (1 + A)`` where ``E`` is the reconstruction error,
    ``I`` the feature inconsistency and ``A`` the attention map (only when ``use_attention`` and
    the model has attention), each resized to the model resolution and normalised with the fixed
    statistics in :class:`NormalisationStats`; the map is then Gaussian-smoothed with
    ``sigma_px`` and reduced to an image score by ``reduction``.
    """

    weight_reconstruction: float = 0.0
    weight_inconsistency: float = 1.0
    use_attention: bool = True
    #: Indices into the feature stages (0 = stride 4) whose normalised inconsistencies are
    #: averaged into ``I``. Stage 0 is left out by default: the student mimics stride-4 features
    #: of defects too well (see benchmarks/RESULTS.md).
    inconsistency_stages: tuple[int, ...] = (1, 2)
    sigma_px: float = 4.0
    #: ``"max"`` or ``"topk_mean"`` (mean of the highest ``topk_fraction`` of map pixels).
    reduction: str = "max"
    topk_fraction: float = 0.01
    #: Statistic used to normalise each map component (the reconstruction error, and each
    #: stage's inconsistency separately) on held-out normal images: ``"meanstd"``
    #: ((x - mean) / std over all pixels at the model resolution).
    normalisation: str = "meanstd"

    REDUCTIONS = ("max", "topk_mean")
    NORMALISATIONS = ("meanstd",)


@dataclass
class NormalisationStats:
    """Fixed location/scale of each map component, measured on held-out normal images."""

    reconstruction_loc: float = 0.0
    reconstruction_scale: float = 1.0
    #: One value per feature stage (strides 4, 8, 16).
    inconsistency_loc: tuple[float, ...] = (0.0, 0.0, 0.0)
    inconsistency_scale: tuple[float, ...] = (1.0, 1.0, 1.0)
    n_images: int = 0


@dataclass
class ModelConfig:
    """The architecture: enough to rebuild the network before loading its weights."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    attention: bool = True
    attention_width: int = 32
    decoder_width: int = 32
    #: "upconv" (upsample + 3x3 conv) or "deconv" (stride-2 transposed convolutions).
    decoder: str = "upconv"
    #: Standardise each teacher channel with statistics of the training images before the student
    #: mimics it, so every channel weighs alike in the loss and in |T - S|.
    standardise_teacher: bool = True
    #: Input normalisation in 0..255 units, applied inside the graph: (x - mean) / std.
    input_mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    input_std: tuple[float, float, float] = (128.0, 128.0, 128.0)


@dataclass
class ModelMetadata:
    """Everything a later stage needs to know about a model; travels with every artefact."""

    model: ModelConfig = field(default_factory=ModelConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    normalisation: NormalisationStats = field(default_factory=NormalisationStats)
    #: Decision rule: an image is rejected when ``image_score > threshold`` or the score is not finite.
    threshold: float = float("inf")
    threshold_rule: str = "unset"
    #: Resize rule of the one preprocessing function (see fmabs_edge.runtime.preprocess).
    resize_rule: str = "stretch to SxS; cv2 INTER_AREA when shrinking, INTER_LINEAR when enlarging"
    #: Training record: data root, image lists, epochs, seed, time.
    training: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    #: "fp32", "fp16" or "int8" (plus the INT8 target); filled by the converters.
    precision: str = "fp32"
    calibration: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    #: Extra facts a converter records (for example an in-graph input resize).
    conversion: dict[str, Any] = field(default_factory=dict)
    fmabs_edge_version: str = __version__
    format: int = METADATA_FORMAT

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> "ModelMetadata":
        """Rebuild from :meth:`to_dict` output; unknown keys are an error naming ``source``."""
        if not isinstance(data, dict):
            raise ModelError(
                f"{source}: metadata is not a JSON object; was this file made by fmabs-edge?"
            )
        fmt = int(data.get("format", 0))
        if fmt > METADATA_FORMAT:
            raise ModelError(
                f"{source}: metadata format {fmt} is newer than this fmabs-edge understands "
                f"({METADATA_FORMAT}); upgrade fmabs-edge."
            )
        try:
            nested = {
                "model": _build(ModelConfig, data.get("model", {})),
                "scoring": _build(ScoringConfig, data.get("scoring", {})),
                "normalisation": _build(NormalisationStats, data.get("normalisation", {})),
            }
            flat = {k: v for k, v in data.items() if k not in nested}
            return cls(**nested, **flat)
        except TypeError as err:
            raise ModelError(
                f"{source}: metadata does not match this fmabs-edge version: {err}"
            ) from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ModelMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelError(f"{source}: metadata is not valid JSON ({err}).") from err
        return cls.from_dict(data, source)

    # -- convenience ---------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def decide(self, score: float, threshold: float | None = None) -> tuple[bool, str]:
        """Return ``(reject, reason)`` for one image score; non-finite scores always reject."""
        limit = self.threshold if threshold is None else threshold
        if score != score or score in (float("inf"), float("-inf")):
            return True, f"non-finite score ({score})"
        if score > limit:
            return True, "score above threshold"
        return False, ""


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a dataclass from a dict, turning JSON lists back into tuples where typed so."""
    defaults = cls()
    kwargs = {}
    for key, value in values.items():
        if isinstance(getattr(defaults, key, None), tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
