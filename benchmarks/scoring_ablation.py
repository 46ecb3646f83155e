"""Which pieces should score? Evaluates scoring variants of one trained checkpoint.

The network runs once per image; each variant (reconstruction error alone, inconsistency alone,
the reference 0.7/0.3 mix, with and without attention, stages, smoothing, reduction) then refits
its normalisation statistics on the checkpoint's held-out normal images and is scored on the test
set with the same scoring head the export uses. Prints one line per variant and writes a JSON.

    python benchmarks/scoring_ablation.py runs/bottle/model.pt ../shared/datasets/mvtec_bottle \
        --json benchmarks/results/ablation_bottle.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from fmabs_edge.checkpoint import load_checkpoint
from fmabs_edge.data import list_test_samples
from fmabs_edge.evaluate import Predictions, load_mask, metrics_from_predictions
from fmabs_edge.metadata import NormalisationStats, ScoringConfig
from fmabs_edge.model import AnomalyScorer, DeployModel
from fmabs_edge.runtime.preprocess import preprocess_file

VARIANTS: dict[str, dict] = {
    "inconsistency stages 2-3 + attention (default)": {},
    "inconsistency stages 1-3 + attention": {"inconsistency_stages": (0, 1, 2)},
    "inconsistency stage 1 only + attention": {"inconsistency_stages": (0,)},
    "inconsistency stage 3 only + attention": {"inconsistency_stages": (2,)},
    "inconsistency stages 2-3, no attention": {"use_attention": False},
    "inconsistency stages 2-3, sigma 8": {"sigma_px": 8.0},
    "inconsistency stages 2-3, top-1% mean": {"reduction": "topk_mean"},
    "reconstruction alone": {"weight_reconstruction": 1.0, "weight_inconsistency": 0.0},
    "reference mix 0.7 rec + 0.3 inc (stage 1)": {
        "weight_reconstruction": 0.7,
        "weight_inconsistency": 0.3,
        "inconsistency_stages": (0,),
    },
    "mix 0.3 rec + 0.7 inc (stages 2-3)": {
        "weight_reconstruction": 0.3,
        "weight_inconsistency": 0.7,
    },
}


@torch.no_grad()
def cached_pieces(
    deploy: DeployModel, files: list[Path], size: int, batch: int = 8
) -> dict[str, torch.Tensor]:
    """Run the network once: reconstruction error (N,1,S,S), per-stage channel means, attention."""
    errors, stages, attentions = [], [[], [], []], []
    for start in range(0, len(files), batch):
        images = np.stack([preprocess_file(p, size)[0] for p in files[start : start + batch]])
        outputs = deploy.net(
            deploy.net.normalise(torch.from_numpy(images).permute(0, 3, 1, 2).float())
        )
        x = deploy.net.normalise(torch.from_numpy(images).permute(0, 3, 1, 2).float())
        errors.append(torch.mean(torch.abs(outputs["reconstruction"] - x), dim=1, keepdim=True))
        for index, difference in enumerate(outputs["differences"]):
            stages[index].append(difference.mean(dim=1, keepdim=True))
        if outputs["attention"] is not None:
            attentions.append(outputs["attention"])
    return {
        "error": torch.cat(errors),
        "stages": [torch.cat(s) for s in stages],
        "attention": torch.cat(attentions) if attentions else None,
    }


def score_with(
    scoring: ScoringConfig, stats: NormalisationStats, pieces: dict, size: int, has_attention: bool
):
    """Apply the export's scoring head to cached pieces (1-channel inputs: channel means are exact)."""
    scorer = AnomalyScorer(scoring, stats, size).eval()
    error = pieces["error"]
    zeros = torch.zeros_like(error)
    attention = pieces["attention"] if (scoring.use_attention and has_attention) else None
    reconstruction = error if scorer.needs_reconstruction else None  # mean_c |E - 0| == E
    with torch.no_grad():
        maps, scores = scorer(zeros, reconstruction, pieces["stages"], attention)
    return maps[:, 0].numpy(), scores.numpy()


def fit_stats(pieces: dict, scoring: ScoringConfig, size: int) -> NormalisationStats:
    """Per-component mean/std on the held-out pieces, as training's fit_normalisation does."""
    scorer = AnomalyScorer(scoring, NormalisationStats(), size)
    stages = tuple(range(len(pieces["stages"])))
    error, per_stage = scorer.raw_components(
        torch.zeros_like(pieces["error"]), pieces["error"], pieces["stages"], stages
    )
    return NormalisationStats(
        float(error.mean()),
        float(error.std()),
        tuple(float(m.mean()) for m in per_stage),
        tuple(float(m.std()) for m in per_stage),
        n_images=int(error.shape[0]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path, help="MVTec-style category folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    net, metadata = load_checkpoint(args.checkpoint)
    size = metadata.image_size
    deploy = DeployModel(
        net, replace(metadata.scoring, weight_reconstruction=1.0), NormalisationStats()
    ).eval()
    heldout = [Path(p) for p in metadata.training["heldout_files"]]
    samples = list_test_samples(args.data)
    held = cached_pieces(deploy, heldout, size)
    test = cached_pieces(deploy, [s.image for s in samples], size)
    masks = np.stack(
        [load_mask(s.mask, size) if s.mask else np.zeros((size, size), bool) for s in samples]
    )

    results = []
    for name, change in VARIANTS.items():
        scoring = replace(ScoringConfig(use_attention=metadata.model.attention), **change)
        stats = fit_stats(held, scoring, size)
        _, held_scores = score_with(scoring, stats, held, size, metadata.model.attention)
        maps, scores = score_with(scoring, stats, test, size, metadata.model.attention)
        threshold = float(np.max(held_scores))
        metrics = metrics_from_predictions(
            Predictions(samples, scores.astype(np.float64), maps, masks, []), threshold
        )
        row = {"variant": name, "scoring": asdict(scoring)} | {
            k: metrics[k]
            for k in (
                "image_auroc",
                "pixel_auroc",
                "aupro",
                "f1_max",
                "fpr_at_threshold",
                "recall_at_threshold",
            )
        }
        results.append(row)
        print(
            f"{name:<48} image AUROC {row['image_auroc']:.4f}  pixel AUROC {row['pixel_auroc']:.4f}  "
            f"AUPRO {row['aupro']:.4f}  F1-max {row['f1_max']:.4f}"
        )
    print(f"({time.perf_counter() - started:.0f} s; {len(samples)} test images at {size} px)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"checkpoint": str(args.checkpoint), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
