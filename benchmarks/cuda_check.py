"""CUDA check for a GPU machine *without* TensorRT: the CUDA-only parts of the TensorRT path.

Installs nothing and needs no dataset (it trains a tiny model on a synthetic set, or takes
``--checkpoint``); under 5 minutes on a desktop GPU. Steps:

1. small model: train briefly on :func:`fmabs_edge.demo.make_synthetic_category`, export to ONNX;
2. ONNX Runtime reference (CPU): scores of the test images and decisions at the threshold;
3. CUDA buffers: :mod:`fmabs_edge.runtime.cuda_buffers` round-trips frames and maps through
   page-locked host and device memory on a stream, with every implementation present
   (pycuda, cuda-python);
4. FP16 numerics with PyTorch on the GPU (autocast FP16): no non-finite value in the scoring,
   image scores within tolerance of FP32 on the GPU, same decisions; FP32 on the GPU against
   the ONNX Runtime reference;
5. latency of the PyTorch model on the GPU at batch 1 and 8 (FP32 and autocast FP16) with the
   benchmark protocol: an upper bound that a TensorRT engine should beat.

Writes ``benchmarks/results/cuda_check_<gpu>.json`` (or ``--json``). ``--dry-run`` does steps 1
and 2 only and runs on a CPU machine (it writes into the work folder).

    python benchmarks/cuda_check.py            # on the GPU machine
    python benchmarks/cuda_check.py --dry-run  # anywhere
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fmabs_edge.errors import FmabsError

logger = logging.getLogger("fmabs_edge.benchmarks.cuda_check")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Tiny model: 64 px, two epochs on 24 synthetic images (about a minute on 2 CPU cores).
SMALL_IMAGE_SIZE = 64
SMALL_EPOCHS = 2
#: FP16 vs FP32 image scores: |fp16 - fp32| <= FP16_RTOL * |fp32| + FP16_ATOL.
FP16_RTOL = 2e-2
FP16_ATOL = 1e-3
#: PyTorch FP32 on the GPU vs ONNX Runtime FP32 on the CPU (cuDNN picks other algorithms).
GPU_FP32_RTOL = 1e-3
GPU_FP32_ATOL = 1e-4
ROUND_TRIP_BATCH = 8


@dataclass
class SmallModel:
    """The model every check uses: its files, test frames and the ONNX Runtime reference."""

    checkpoint: Path | None
    onnx: Path
    data: Path
    files: list[str]
    labels: list[str]
    #: ``(N, S, S, 3) uint8`` test frames, preprocessed once by the one preprocessing.
    frames: np.ndarray
    threshold: float
    reference: dict[str, Any]


def prepare_small_model(
    work: Path,
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    epochs: int = SMALL_EPOCHS,
) -> SmallModel:
    """Make (or take) the small model, export it, and score the test frames with ONNX Runtime."""
    from fmabs_edge.artefacts import load_onnx, read_metadata
    from fmabs_edge.data import list_test_samples
    from fmabs_edge.demo import make_synthetic_category
    from fmabs_edge.runtime.preprocess import load_image, resize_to_model

    data = make_synthetic_category(
        work / "data", n_train=24, n_test_good=6, n_test_defect=9, size=SMALL_IMAGE_SIZE
    )
    if onnx_path is None:
        if checkpoint is None:
            from fmabs_edge.train import TrainOptions, train

            started = time.perf_counter()
            options = TrainOptions(
                epochs=epochs,
                batch_size=4,
                image_size=SMALL_IMAGE_SIZE,
                val_fraction=0.25,
                progress=False,
            )
            checkpoint = train(data, work / "run", options).checkpoint
            logger.info(
                "Trained the small model in %.0f s: %s", time.perf_counter() - started, checkpoint
            )
        from fmabs_edge.converters.export import export_onnx

        onnx_path = work / "model.onnx"
        export_onnx(checkpoint, onnx_path, check=True)

    metadata = read_metadata(load_onnx(onnx_path), str(onnx_path))
    samples = list_test_samples(data)
    frames = np.stack(
        [resize_to_model(load_image(s.image).rgb, metadata.image_size) for s in samples]
    )
    reference = ort_reference(onnx_path, frames, metadata.threshold)
    return SmallModel(
        checkpoint=checkpoint,
        onnx=onnx_path,
        data=data,
        files=[str(s.image) for s in samples],
        labels=[s.label for s in samples],
        frames=frames,
        threshold=float(metadata.threshold),
        reference=reference,
    )


def ort_reference(onnx_path: Path, frames: np.ndarray, threshold: float) -> dict[str, Any]:
    """ONNX Runtime (CPU) scores, maps and decisions of ``frames`` for ``onnx_path``."""
    from fmabs_edge.runtime.ort_runner import OrtRunner

    with OrtRunner.open(onnx_path) as runner:
        result = runner.infer(frames)
    return {
        "onnx": str(onnx_path),
        "scores": result.image_score.astype(float).tolist(),
        "maps": result.anomaly_map,
        "rejected": [bool(s > threshold or not np.isfinite(s)) for s in result.image_score],
        "finite": bool(
            np.isfinite(result.image_score).all() and np.isfinite(result.anomaly_map).all()
        ),
    }


def compare_scores(
    got: np.ndarray, want: np.ndarray, threshold: float, rtol: float, atol: float
) -> dict[str, Any]:
    """Per-image agreement of two score vectors (and their decisions at ``threshold``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    diff = np.abs(got - want)
    within = diff <= rtol * np.abs(want) + atol
    agree = (got > threshold) == (want > threshold)
    return {
        "n_images": int(got.size),
        "max_abs_score_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_score_diff": (
            float((diff / np.maximum(np.abs(want), 1e-12)).max()) if diff.size else 0.0
        ),
        "rtol": rtol,
        "atol": atol,
        "n_outside_tolerance": int((~within).sum()),
        "decision_agreement": float(agree.mean()) if agree.size else 1.0,
        "all_finite": bool(np.isfinite(got).all()),
        "passed": bool(within.all() and agree.all() and np.isfinite(got).all()),
    }


def slug(text: str) -> str:
    """A file-name-safe form of a GPU name: ``"NVIDIA H200"`` -> ``"nvidia_h200"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown_gpu"


# -- CUDA steps ------------------------------------------------------------------------------


def check_round_trips(frames: np.ndarray, maps: np.ndarray) -> dict[str, Any]:
    """Round-trip frames and maps through pinned and device memory with each implementation."""
    from fmabs_edge.errors import MissingExtraError
    from fmabs_edge.runtime.cuda_buffers import IMPLEMENTATIONS, open_cuda, round_trip

    results: dict[str, Any] = {}
    batch = frames[:ROUND_TRIP_BATCH]
    for name in IMPLEMENTATIONS:
        try:
            backend = open_cuda(name)
        except MissingExtraError as err:
            results[name] = {"status": "not installed", "detail": str(err).split(".")[0]}
            continue
        except FmabsError as err:  # installed, but no usable device or driver
            results[name] = {"status": "FAILED", "detail": str(err)}
            continue
        try:
            started = time.perf_counter()
            same_frames = np.array_equal(round_trip(backend, batch), batch)
            same_maps = np.array_equal(round_trip(backend, maps), maps)
            info = backend.device_info()
            results[name] = {
                "status": "passed" if same_frames and same_maps else "FAILED",
                "frames_bytes": int(batch.nbytes),
                "maps_bytes": int(maps.nbytes),
                "seconds": round(time.perf_counter() - started, 3),
                "device": info.name,
                "compute_capability": info.compute_capability_str,
                "cuda_runtime_version": info.cuda_runtime_version,
                "cuda_driver_version": info.cuda_driver_version,
            }
        except FmabsError as err:
            results[name] = {"status": "FAILED", "detail": str(err)}
        finally:
            backend.close()
    return results


def _torch_scores(
    model: Any, frames: np.ndarray, fp16: bool, batch_size: int = 8
) -> tuple[np.ndarray, bool]:
    """Scores on the GPU (FP32, or autocast FP16) and whether every map value was finite."""
    import torch

    scores, finite = [], True
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        for start in range(0, len(frames), batch_size):
            batch = torch.from_numpy(frames[start : start + batch_size]).cuda()
            anomaly_map, image_score = model(batch)
            finite &= bool(torch.isfinite(anomaly_map).all()) and bool(
                torch.isfinite(image_score).all()
            )
            scores.append(image_score.float().cpu().numpy())
    return np.concatenate(scores), finite


def check_fp16_numerics(small: SmallModel) -> dict[str, Any]:
    """PyTorch on the GPU: FP32 vs the ONNX Runtime reference, autocast FP16 vs FP32."""
    from fmabs_edge.checkpoint import load_deploy_model

    model, metadata = load_deploy_model(small.checkpoint)
    model = model.cuda().eval()
    fp32, fp32_finite = _torch_scores(model, small.frames, fp16=False)
    fp16, fp16_finite = _torch_scores(model, small.frames, fp16=True)
    reference = np.array(small.reference["scores"])
    return {
        "fp32_gpu_vs_ort_cpu": compare_scores(
            fp32, reference, small.threshold, GPU_FP32_RTOL, GPU_FP32_ATOL
        ),
        "fp16_vs_fp32_gpu": compare_scores(fp16, fp32, small.threshold, FP16_RTOL, FP16_ATOL),
        "fp32_maps_finite": fp32_finite,
        "fp16_maps_finite": fp16_finite,
        "fp16_mode": "torch.autocast(float16) on CUDA; autocast keeps reductions in FP32",
        "fp16_scores": fp16.astype(float).tolist(),
        "fp32_scores": fp32.astype(float).tolist(),
    }


def time_torch_gpu(small: SmallModel, iterations: int, warmup: int) -> list[dict[str, Any]]:
    """The benchmark protocol on the PyTorch model on the GPU (FP32, autocast FP16; batch 1, 8)."""
    import torch

    from fmabs_edge.benchmarks.protocol import time_runner
    from fmabs_edge.runtime.torch_runner import TorchRunner

    class AutocastRunner(TorchRunner):
        """The checkpoint under ``torch.autocast(float16)`` on CUDA."""

        def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.autocast("cuda", dtype=torch.float16):
                anomaly_map, image_score = super()._infer_batch(images)
            return anomaly_map.astype(np.float32), image_score.astype(np.float32)

    frames = list(small.frames)
    records = []
    for name, runner_class in (
        ("torch_cuda_fp32", TorchRunner),
        ("torch_cuda_autocast_fp16", AutocastRunner),
    ):
        with runner_class.open(small.checkpoint, device="cuda") as runner:
            for record in time_runner(
                runner,
                frames,
                batch_sizes=(1, 8),
                warmup=warmup,
                iterations=iterations,
                name=name,
                sync=torch.cuda.synchronize,
            ):
                records.append(record)
    return records


# -- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the checks; returns the JSON-ready report (``passed`` says whether all checks passed)."""
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise FmabsError(
                "No CUDA device is visible to PyTorch; run with --dry-run on a CPU machine."
            )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fmabs_cuda_check_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "script": "benchmarks/cuda_check.py",
        "dry_run": args.dry_run,
        "work": str(work),
    }

    small = prepare_small_model(work, args.checkpoint, None, args.epochs)
    report["model"] = {
        "checkpoint": str(small.checkpoint),
        "onnx": str(small.onnx),
        "n_images": len(small.files),
        "threshold": small.threshold,
    }
    report["ort_reference"] = {k: v for k, v in small.reference.items() if k != "maps"}
    checks = {"ort_reference_finite": small.reference["finite"]}

    if not args.dry_run:
        report["gpu"] = torch.cuda.get_device_name(0)
        report["cuda_buffers"] = check_round_trips(small.frames, small.reference["maps"])
        checks["cuda_buffers"] = any(
            r["status"] == "passed" for r in report["cuda_buffers"].values()
        ) and not any(r["status"] == "FAILED" for r in report["cuda_buffers"].values())
        report["fp16_numerics"] = check_fp16_numerics(small)
        numerics = report["fp16_numerics"]
        checks["fp32_gpu_matches_ort"] = numerics["fp32_gpu_vs_ort_cpu"]["passed"]
        checks["fp16_no_overflow"] = numerics["fp16_maps_finite"]
        checks["fp16_within_tolerance"] = numerics["fp16_vs_fp32_gpu"]["passed"]
        report["torch_gpu_latency"] = time_torch_gpu(small, args.iterations, args.warmup)
        try:
            from fmabs_edge.benchmarks.system import machine_info

            report["machine"] = machine_info()
        except ImportError:  # the benchmark helpers are optional here
            pass

    report["checks"] = checks
    report["passed"] = all(checks.values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def add_common_arguments(parser: argparse.ArgumentParser, script: str) -> None:
    """The flags cuda_check and gpu_check share (work folder, report path, model, timing)."""
    parser.add_argument(
        "--work", type=Path, default=None, help="Work folder [default: a new temporary folder]."
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"Report path [default: benchmarks/results/{script}_<gpu>.json; dry run: WORK/].",
    )
    parser.add_argument(
        "--epochs", type=int, default=SMALL_EPOCHS, help="Training epochs of the small model."
    )
    parser.add_argument("--iterations", type=int, default=100, help="Timed batches per batch size.")
    parser.add_argument(
        "--warmup", type=int, default=20, help="Untimed warm-up batches per batch size."
    )


def script_main(script: str, run_check: Callable[[argparse.Namespace], dict], args) -> int:
    """Run a check script: exit 2 on a package error, else write the JSON; 0 if all checks passed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_check(args)
    except FmabsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json is not None:
        path = args.json
    elif args.dry_run:
        path = Path(report["work"]) / f"{script}_dry_run.json"
    else:
        path = RESULTS_DIR / f"{script}_{slug(report['gpu'])}.json"
    from fmabs_edge.artefacts import write_text_atomic

    write_text_atomic(path, json.dumps(report, indent=2, default=str, allow_nan=True))
    summary = {k: report[k] for k in ("passed", "checks", "seconds")}
    print(json.dumps({**summary, "json": str(path)}, indent=2))
    return 0 if report["passed"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Export and the ONNX Runtime reference only (no CUDA).",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="Use this model.pt instead of training one."
    )
    add_common_arguments(parser, "cuda_check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main("cuda_check", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
