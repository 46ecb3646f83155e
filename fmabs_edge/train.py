"""Training on normal images, then fitting the fixed score statistics and the threshold.

Steps: read and preprocess the normal images (corrupt ones reported and skipped), hold back a
fraction, train the student, FIGA and decoder with the FMABS loss, measure the normalisation
statistics of each map component on the held-out images, fit the threshold on their image scores
and write ``model.pt`` atomically. ``last.pt`` is written after every epoch for ``resume``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmabs_edge.checkpoint import read_checkpoint, save_checkpoint
from fmabs_edge.data import list_images, resolve_train_folder
from fmabs_edge.errors import CorruptImageError, DataError, ModelError, UsageError
from fmabs_edge.metadata import (
    ModelConfig,
    ModelMetadata,
    NormalisationStats,
    ScoringConfig,
    sha256_file,
)
from fmabs_edge.model import BACKBONES, DeployModel, FmabsNet, default_teacher_weights, fmabs_loss
from fmabs_edge.runtime.preprocess import RESIZE_RULE, preprocess_file
from fmabs_edge.threshold import fit_threshold

logger = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Training parameters; every default is stated here and nowhere else."""

    epochs: int = 30
    batch_size: int = 8
    image_size: int = 256
    backbone: str = "efficientnet_lite0"
    #: State dict for the teacher; None takes the bundled weights (EfficientNet-Lite0 only).
    teacher_weights: Path | None = None
    attention: bool = True
    attention_width: int = 32
    decoder: str = "upconv"
    decoder_width: int = 32
    standardise_teacher: bool = True
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    #: Loss weights (METHOD.md): reconstruction, feature mimicking, attention.
    weight_reconstruction: float = 1.0
    weight_mimic: float = 0.5
    weight_attention: float = 0.3
    seed: int = 0
    #: Share of the normal images held out to fix the score statistics and the threshold.
    val_fraction: float = 0.1
    max_false_reject: float = 0.005
    resume: bool = False
    #: Scoring stored with the model; None uses ScoringConfig's defaults.
    scoring: ScoringConfig | None = None
    #: Use at most this many training images (after the hold-out); None: all.
    max_train_images: int | None = None
    #: Show a progress bar per epoch.
    progress: bool = True

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch_size={self.batch_size}: must be at least 1.")
        if self.epochs < 1:
            raise UsageError(f"epochs={self.epochs}: must be at least 1.")
        if self.image_size % 16 != 0 or self.image_size < 32:
            raise UsageError(
                f"image_size={self.image_size}: must be a multiple of 16 and at least 32 (e.g. 224 or 256)."
            )
        if not 0.0 < self.val_fraction <= 0.5:
            raise UsageError(
                f"val_fraction={self.val_fraction}: must lie in (0, 0.5]; held-out normal images fix the "
                "score statistics and the threshold."
            )
        if not 0.0 <= self.max_false_reject < 1.0:
            raise UsageError(
                f"max_false_reject={self.max_false_reject}: must lie in [0, 1), e.g. 0.005 (0.5 %)."
            )
        if self.backbone not in BACKBONES:
            raise UsageError(f"backbone='{self.backbone}': choose one of {sorted(BACKBONES)}.")


@dataclass
class TrainResult:
    checkpoint: Path
    metadata: ModelMetadata
    history: list[dict[str, float]] = field(default_factory=list)


def load_normal_images(files: list[Path], size: int) -> tuple[np.ndarray, list[Path], list[str]]:
    """Preprocess files to ``(N, size, size, 3) uint8``; returns (images, kept files, skip reasons)."""
    images, kept, skipped = [], [], []
    for path in files:
        try:
            image, _ = preprocess_file(path, size)
        except CorruptImageError as err:
            logger.warning("Skipping %s", err)
            skipped.append(str(err))
            continue
        images.append(image)
        kept.append(path)
    if not images:
        raise DataError(f"None of the {len(files)} images could be read; see the warnings above.")
    return np.stack(images), kept, skipped


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip and mild brightness/contrast jitter on ``(N, 3, S, S)`` float 0..255."""
    n = batch.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip.view(n, 1, 1, 1), batch.flip(-1), batch)
    brightness = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    return ((batch - mean) * contrast + mean * brightness).clamp(0.0, 255.0)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


@torch.no_grad()
def fit_normalisation(
    net: FmabsNet, scoring: ScoringConfig, images: np.ndarray, batch_size: int
) -> NormalisationStats:
    """Mean/std over all pixels of the held-out normal images, of the reconstruction error and of
    each stage's inconsistency (all stages, whichever the scoring uses)."""
    probe = DeployModel(
        net,
        ScoringConfig(**{**scoring.__dict__, "weight_reconstruction": 1.0}),
        NormalisationStats(),
    )
    probe.eval()
    n_stages = len(net.teacher.channels)
    moments = np.zeros(
        (1 + n_stages, 3)
    )  # rows: error, stage 0..; columns: sum, sum of squares, count
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(images[start : start + batch_size])
        x, reconstruction, differences, _ = probe.components(chunk)
        error, stages = probe.scoring.raw_components(
            x, reconstruction, differences, tuple(range(n_stages))
        )
        for row, values in enumerate([error, *stages]):
            values = values.double()
            moments[row] += (float(values.sum()), float((values**2).sum()), values.numel())

    means = moments[:, 0] / moments[:, 2]
    stds = np.sqrt(np.maximum(moments[:, 1] / moments[:, 2] - means**2, 0.0)).clip(min=1e-8)
    return NormalisationStats(
        reconstruction_loc=float(means[0]),
        reconstruction_scale=float(stds[0]),
        inconsistency_loc=tuple(float(v) for v in means[1:]),
        inconsistency_scale=tuple(float(v) for v in stds[1:]),
        n_images=len(images),
    )


@torch.no_grad()
def score_images(deploy: DeployModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Image scores ``(N,)`` of preprocessed ``(N, S, S, 3) uint8`` images."""
    scores = [
        deploy(torch.from_numpy(images[i : i + batch_size]))[1]
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(scores).numpy()


def train(
    data: str | Path, out_dir: str | Path, options: TrainOptions | None = None
) -> TrainResult:
    """Train on the normal images in ``data`` and write ``out_dir/model.pt``."""
    options = options or TrainOptions()
    options.validate()
    out_dir = Path(out_dir)
    folder = resolve_train_folder(data)
    files = list_images(folder)
    if len(files) < 2:
        raise DataError(
            f"{folder} has {len(files)} image; training needs at least 2 (one is held out)."
        )

    # Split once, by seed, before reading: the held-out files never train.
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(files))
    n_val = max(1, int(round(len(files) * options.val_fraction)))
    val_files = [files[i] for i in sorted(order[:n_val])]
    train_files = [files[i] for i in sorted(order[n_val:])]
    if options.max_train_images is not None:
        train_files = train_files[: options.max_train_images]
    logger.info(
        "Training on %d images from %s, holding out %d", len(train_files), folder, len(val_files)
    )
    train_images, train_files, skipped_train = load_normal_images(train_files, options.image_size)
    val_images, val_files, skipped_val = load_normal_images(val_files, options.image_size)

    # Model and optimiser.
    torch.manual_seed(options.seed)
    config = ModelConfig(
        backbone=options.backbone,
        image_size=options.image_size,
        attention=options.attention,
        attention_width=options.attention_width,
        decoder_width=options.decoder_width,
        decoder=options.decoder,
        standardise_teacher=options.standardise_teacher,
        input_mean=BACKBONES[options.backbone]["mean"],
        input_std=BACKBONES[options.backbone]["std"],
    )
    weights = options.teacher_weights or default_teacher_weights(options.backbone)
    net = FmabsNet(config, teacher_weights=Path(weights))
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        trainable, lr=options.learning_rate, weight_decay=options.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_images) / options.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=options.epochs * steps_per_epoch
    )
    start_epoch, history = 0, []
    last_path = out_dir / "last.pt"
    if options.resume and last_path.is_file():
        payload = read_checkpoint(last_path)
        net.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        start_epoch, history = int(payload["epoch"]), list(payload.get("history", []))
        logger.info("Resuming from %s after epoch %d", last_path, start_epoch)
    elif options.resume:
        logger.warning("resume requested but %s does not exist; starting from scratch", last_path)

    # Training loop.
    generator = torch.Generator().manual_seed(options.seed)
    data_tensor = _to_tensor(train_images)
    if config.standardise_teacher and start_epoch == 0:
        net.eval()
        chunks = torch.split(data_tensor, options.batch_size)
        net.fit_teacher_statistics(net.normalise(chunk) for chunk in chunks)
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(start_epoch, options.epochs):
        net.train()
        permutation = torch.randperm(len(data_tensor), generator=generator)
        totals: dict[str, float] = {}
        with _progress(options.progress) as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{options.epochs}", total=steps_per_epoch)
            for step in range(steps_per_epoch):
                index = permutation[step * options.batch_size : (step + 1) * options.batch_size]
                x = net.normalise(_augment(data_tensor[index], generator))
                outputs = net(x)
                loss, parts = fmabs_loss(
                    outputs,
                    x,
                    options.weight_reconstruction,
                    options.weight_mimic,
                    options.weight_attention,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0.0) + value
                shown = " ".join(f"{k}={v / (step + 1):.4g}" for k, v in totals.items())
                progress.update(
                    task, advance=1, description=f"epoch {epoch + 1}/{options.epochs} {shown}"
                )
        record = {k: v / steps_per_epoch for k, v in totals.items()} | {"epoch": epoch + 1}
        history.append(record)
        logger.info("epoch %d: %s", epoch + 1, {k: round(v, 5) for k, v in record.items()})
        metadata = ModelMetadata(model=config)
        save_checkpoint(
            last_path,
            net,
            metadata,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            epoch=epoch + 1,
            history=history,
        )
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started

    # Fixed statistics and the threshold, from the held-out normal images only.
    net.eval()
    scoring = options.scoring or ScoringConfig(use_attention=options.attention)
    stats = fit_normalisation(net, scoring, val_images, options.batch_size)
    deploy = DeployModel(net, scoring, stats).eval()
    val_scores = score_images(deploy, val_images, options.batch_size)
    threshold, rule = fit_threshold(val_scores, options.max_false_reject)

    metadata = ModelMetadata(
        model=config,
        scoring=scoring,
        normalisation=stats,
        threshold=threshold,
        threshold_rule=rule,
        resize_rule=RESIZE_RULE,
        training={
            "data": str(folder),
            "train_files": [str(p) for p in train_files],
            "heldout_files": [str(p) for p in val_files],
            "skipped": skipped_train + skipped_val,
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "loss_weights": [
                options.weight_reconstruction,
                options.weight_mimic,
                options.weight_attention,
            ],
            "seed": options.seed,
            "teacher_weights": str(weights),
            "train_seconds": round(train_seconds, 1),
            # CPU time of all threads: comparable across loaded and idle machines.
            "train_cpu_seconds": round(train_cpu_seconds, 1),
            "history": history,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    checkpoint = out_dir / "model.pt"
    save_checkpoint(checkpoint, net, metadata)
    logger.info("Wrote %s (trained %.0f s; threshold %.4g)", checkpoint, train_seconds, threshold)
    return TrainResult(checkpoint=checkpoint, metadata=metadata, history=history)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def rescore_checkpoint(
    source: str | Path,
    target: str | Path,
    scoring: dict[str, Any],
    max_false_reject: float | None = None,
    batch_size: int = 8,
) -> ModelMetadata:
    """Write ``target``: the weights of ``source`` with other scoring fields.

    Training always fits the decoder and both map statistics, so a new scoring needs no retraining:
    the normalisation statistics and the threshold are re-fitted on the checkpoint's own held-out
    normal images (``metadata.training["heldout_files"]``) with the training rule.
    """
    from fmabs_edge.checkpoint import load_checkpoint

    source, target = Path(source), Path(target)
    net, metadata = load_checkpoint(source)
    merged = {**metadata.to_dict(), "scoring": {**metadata.to_dict()["scoring"], **scoring}}
    updated = ModelMetadata.from_dict(merged, f"{source} with scoring {scoring}")
    heldout = [Path(p) for p in metadata.training.get("heldout_files", [])]
    if not heldout:
        raise ModelError(
            f"{source} lists no held-out images; re-scoring needs them to fit statistics "
            "and threshold."
        )
    images, kept, _ = load_normal_images(heldout, metadata.image_size)
    if len(kept) == 0:
        raise ModelError(
            f"None of the held-out images of {source} can be read (first: {heldout[0]})."
        )

    updated.normalisation = fit_normalisation(net, updated.scoring, images, batch_size)
    deploy = DeployModel(net, updated.scoring, updated.normalisation).eval()
    rate = TrainOptions().max_false_reject if max_false_reject is None else max_false_reject
    updated.threshold, updated.threshold_rule = fit_threshold(
        score_images(deploy, images, batch_size), rate
    )
    updated.training = {
        **metadata.training,
        "rescored_from": str(source),
        "rescored_from_sha256": sha256_file(source),
    }
    save_checkpoint(target, net, updated)
    logger.info(
        "Re-scored %s -> %s with %s (threshold %.4g)", source, target, scoring, updated.threshold
    )
    return updated
