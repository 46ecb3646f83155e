"""Reproduce the accuracy runs of benchmarks/RESULTS.md on the real datasets (CPU only).

For each dataset: train (skipped when the run folder already has model.pt), export to ONNX,
evaluate the ONNX file with ONNX Runtime, then compare ONNX Runtime with PyTorch on every test
image (image scores within 1e-4 relative, identical decisions). Prints one summary line per
dataset and writes ``<work>/<name>/summary.json``.

    python benchmarks/reproduce_accuracy.py --datasets ../shared/datasets --work runs
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from fmabs_edge.converters.export import export_onnx
from fmabs_edge.evaluate import HEADLINE_METRICS, evaluate
from fmabs_edge.train import TrainOptions, train

#: Per-dataset training settings used for RESULTS.md.
RUNS = {
    "mvtec_bottle": TrainOptions(epochs=30),
    "magnetic_tile": TrainOptions(epochs=30, max_train_images=300),
}


def parity(onnx_metrics: dict, torch_metrics: dict, rtol: float = 1e-4) -> dict:
    """ORT vs PyTorch on the same files: worst relative score gap and decision agreement."""
    if onnx_metrics["files"] != torch_metrics["files"]:
        raise SystemExit("ORT and PyTorch scored different files; cannot compare")
    ort_scores, torch_scores = np.array(onnx_metrics["scores"]), np.array(torch_metrics["scores"])
    threshold = onnx_metrics["threshold"]
    relative = np.abs(ort_scores - torch_scores) / np.maximum(np.abs(torch_scores), 1e-12)
    same = (ort_scores > threshold) == (torch_scores > threshold)
    return {
        "n_images": int(len(ort_scores)),
        "max_rel_score_diff": float(relative.max()),
        "within_rtol": bool((relative <= rtol).all()),
        "identical_decisions": bool(same.all()),
        "decision_flips": int((~same).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs"))
    parser.add_argument(
        "--only", choices=sorted(RUNS), action="append", help="Run only these datasets."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    for name in args.only or list(RUNS):
        data, run_dir = args.datasets / name, args.work / name
        checkpoint, onnx_path = run_dir / "model.pt", run_dir / "model.onnx"
        if not checkpoint.exists():
            train(data, run_dir, RUNS[name])
        started = time.perf_counter()
        export_onnx(checkpoint, onnx_path)
        onnx_metrics = evaluate(onnx_path, data, backend="ort", json_path=run_dir / "eval_ort.json")
        torch_metrics = evaluate(
            checkpoint, data, backend="torch", json_path=run_dir / "eval_torch.json"
        )
        summary = {
            "dataset": name,
            "train_seconds": onnx_metrics["metadata"]["training"]["train_seconds"],
            "epochs": onnx_metrics["metadata"]["training"]["epochs"],
            **{k: onnx_metrics[k] for k in HEADLINE_METRICS},
            "ort_vs_torch": parity(onnx_metrics, torch_metrics),
            "eval_seconds": round(time.perf_counter() - started, 1),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
