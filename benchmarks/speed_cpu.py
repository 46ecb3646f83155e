"""CPU latency of the model variants at batch 1: ONNX Runtime FP32 beside PyTorch eager.

Speed does not depend on the weights, so every variant is built untrained at the chosen size
(a trained checkpoint can be added with ``--checkpoint``), exported with the product's exporter
and timed in ONE process with the benchmark protocol (fmabs_edge.benchmarks.protocol): warm-up
discarded, variants alternating in blocks, ONNX Runtime's idle threads not spinning. The
``infer`` stage is the graph alone on preprocessed ``(1, S, S, 3) uint8`` frames. Also prints
each graph's MACs per image (counted from the ONNX file).

    python benchmarks/speed_cpu.py --size 256 --iterations 200 --json benchmarks/results/speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from fmabs_edge.benchmarks.protocol import TimedVariant, measure
from fmabs_edge.benchmarks.reference import count_macs, measure_gemm_peak
from fmabs_edge.checkpoint import save_checkpoint
from fmabs_edge.converters.export import export_onnx
from fmabs_edge.metadata import ModelConfig, ModelMetadata, ScoringConfig
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.runtime.torch_runner import TorchRunner

#: name -> (model config changes, scoring changes)
VARIANTS = {
    "default (inconsistency + attention; no decoder in graph)": ({}, {}),
    "no attention": ({"attention": False}, {"use_attention": False}),
    "with reconstruction, upconv decoder": (
        {},
        {"weight_reconstruction": 0.3, "weight_inconsistency": 0.7},
    ),
    "with reconstruction, deconv decoder (reference)": (
        {"decoder": "deconv", "decoder_width": 128},
        {"weight_reconstruction": 0.3, "weight_inconsistency": 0.7},
    ),
}


def build_variant(
    folder: Path, name: str, size: int, model_changes: dict, scoring_changes: dict
) -> Path:
    from fmabs_edge.model import FmabsNet

    config = ModelConfig(image_size=size, **model_changes)
    net = FmabsNet(config)
    checkpoint = folder / f"{abs(hash(name))}.pt"
    save_checkpoint(
        checkpoint, net, ModelMetadata(model=config, scoring=ScoringConfig(**scoring_changes))
    )
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--checkpoint", type=Path, action="append", default=[], help="Trained checkpoints to add."
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="Skip the PyTorch eager references."
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(8)]
    with TemporaryDirectory() as temp:
        folder = Path(temp)
        checkpoints = {
            name: build_variant(folder, name, args.size, *changes)
            for name, changes in VARIANTS.items()
        }
        checkpoints.update({f"trained {p.parent.name}": p for p in args.checkpoint})
        variants, macs = [], {}
        for name, checkpoint in checkpoints.items():
            onnx_path = folder / f"{checkpoint.stem}.onnx"
            export_onnx(checkpoint, onnx_path, check=False)
            macs[name] = count_macs(onnx_path).macs_per_image / 1e9
            variants.append(
                TimedVariant(f"ort | {name}", OrtRunner.open(onnx_path, spin_threads=False))
            )
            if not args.no_torch:
                variants.append(TimedVariant(f"torch | {name}", TorchRunner.open(checkpoint)))
        records = measure(variants, frames, (1,), args.warmup, args.iterations)
        gemm = measure_gemm_peak()

    print(
        f"machine: {platform.processor() or platform.machine()}, batch 1, {args.size}x{args.size}"
    )
    for record in records:
        backend, name = record["variant"].split(" | ", 1)
        print(
            f"{backend:<5} {name:<58} infer p50 {record['infer_ms_p50']:7.2f} ms  p90 {record['infer_ms_p90']:7.2f}"
            f"  p99 {record['infer_ms_p99']:7.2f}  cv {record['infer_cv']:.2f}  GMACs {macs.get(name) or 0:.3f}"
        )
    print(f"GEMM peak: {gemm}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"records": records, "macs": macs, "gemm": gemm}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
