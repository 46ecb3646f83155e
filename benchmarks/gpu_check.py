"""TensorRT check for the user's TensorRT machine (Jetson Orin, JetPack >= 6.1, or a desktop GPU).

Installs nothing and needs no dataset. Refuses with a clear message (exit 2) where TensorRT or a
CUDA binding is missing. Steps:

1. small model: train briefly on a synthetic set and export (or take ``--onnx``, with ``--data``
   for its test images);
2. precision variants: FP16 and INT8 (target ``trt``) ONNX files from
   :func:`fmabs_edge.converters.precision.convert_precision`, where that module is present;
3. ONNX Runtime reference (CPU) of every variant on the same preprocessed frames;
4. one engine per variant with ``fmabs-edge build``'s code (FP32 with TF32 cleared);
5. engine vs ONNX Runtime per image (scores, maps) and decisions at the stored threshold;
6. latency at batch 1 and 8 with the benchmark protocol
   (:func:`fmabs_edge.benchmarks.protocol.time_runner`).

Writes one JSON to ``benchmarks/results/gpu_check_<gpu>.json`` (or ``--json``). ``--dry-run`` does
steps 1-3 only and runs anywhere (it writes into the work folder).

    python benchmarks/gpu_check.py              # on the TensorRT machine
    python benchmarks/gpu_check.py --dry-run    # anywhere
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmabs_edge.benchmarks.cuda_check import (
    SmallModel,
    add_common_arguments,
    compare_scores,
    ort_reference,
    prepare_small_model,
    script_main,
)
from fmabs_edge.errors import FmabsError

logger = logging.getLogger("fmabs_edge.benchmarks.gpu_check")

#: Engine vs ONNX Runtime on the same ONNX file: (rtol, atol) on image scores, per precision.
PARITY_TOLERANCE = {"fp32": (1e-3, 1e-4), "fp16": (1e-2, 1e-3), "int8": (5e-2, 1e-2)}
#: Fewest calibration images the small synthetic set offers (the converter's default is larger).
SMALL_MIN_CALIBRATION = 16


def make_variants(small: SmallModel, work: Path) -> dict[str, dict[str, Any]]:
    """``{precision: {"onnx": path, ...}}``: FP32 always, FP16/INT8 where the converter exists."""
    variants: dict[str, dict[str, Any]] = {"fp32": {"onnx": small.onnx, "status": "ready"}}
    try:
        from fmabs_edge.converters.precision import convert_precision
    except ImportError as err:
        for precision in ("fp16", "int8"):
            variants[precision] = {
                "status": f"not made: fmabs_edge.converters.precision unavailable ({err})"
            }
        return variants
    for precision in ("fp16", "int8"):
        out = work / f"model_{precision}.onnx"
        try:
            report = convert_precision(
                small.onnx,
                out,
                precision,
                target="trt",
                calib=small.data / "train" / "good",
                min_calib_images=SMALL_MIN_CALIBRATION,
                gate_data=[small.data],
                raise_on_gate_failure=False,
            )
            variants[precision] = {"onnx": out, "status": "ready", "conversion": report.to_dict()}
        except FmabsError as err:
            variants[precision] = {"status": f"conversion failed: {err}"}
    return variants


def engine_parity(
    runner: Any, small: SmallModel, reference: dict[str, Any], precision: str
) -> dict[str, Any]:
    """Engine vs ONNX Runtime of the same ONNX file, per image, plus decisions against FP32."""
    result = runner.infer(small.frames)
    rtol, atol = PARITY_TOLERANCE[precision]
    parity = compare_scores(
        result.image_score, np.array(reference["scores"]), small.threshold, rtol, atol
    )
    parity["max_abs_map_diff"] = float(np.max(np.abs(result.anomaly_map - reference["maps"])))
    parity["maps_finite"] = bool(np.isfinite(result.anomaly_map).all())
    fp32 = np.array(small.reference["scores"])
    parity["decision_agreement_with_fp32_ort"] = float(
        np.mean((result.image_score > small.threshold) == (fp32 > small.threshold))
    )
    parity["per_image"] = [
        {"file": Path(f).name, "label": label, "engine": float(e), "ort": float(o)}
        for f, label, e, o in zip(
            small.files, small.labels, result.image_score, reference["scores"]
        )
    ]
    parity["passed"] = parity["passed"] and parity["maps_finite"]
    return parity


def check_engines(
    small: SmallModel, variants: dict[str, dict[str, Any]], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Build, compare and time one engine per ready variant."""
    from fmabs_edge.benchmarks.protocol import time_runner
    from fmabs_edge.converters.tensorrt_build import build_engine
    from fmabs_edge.runtime.trt_runner import TrtRunner

    results: dict[str, Any] = {}
    for precision, variant in variants.items():
        if variant["status"] != "ready":
            results[precision] = {"status": "not run", "reason": variant["status"]}
            continue
        engine = work / f"model_{precision}.engine"
        try:
            started = time.perf_counter()
            cache = work / "timing.cache"
            manifest = build_engine(
                variant["onnx"], engine, max_batch=8, timing_cache=cache, cuda=args.cuda
            )
            build_s = time.perf_counter() - started
            with TrtRunner.open(engine, cuda=args.cuda) as runner:
                parity = engine_parity(runner, small, variant["reference"], precision)
                timing = time_runner(
                    runner,
                    list(small.frames),
                    batch_sizes=(1, 8),
                    warmup=args.warmup,
                    iterations=args.iterations,
                    name=f"trt_{precision}",
                )
            results[precision] = {
                "status": "passed" if parity["passed"] else "FAILED",
                "build_s": round(build_s, 1),
                "engine_mb": round(manifest.engine_nbytes / 1e6, 2),
                "manifest": json.loads(manifest.to_json()) | {"metadata": "(omitted)"},
                "parity": parity,
                "timing": timing,
            }
        except FmabsError as err:
            results[precision] = {"status": "FAILED", "error": str(err)}
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the check; returns the JSON-ready report."""
    if not args.dry_run:
        # Refuse before any work where TensorRT or a CUDA binding is missing.
        from fmabs_edge.runtime.cuda_buffers import open_cuda
        from fmabs_edge.runtime.trt_runner import import_tensorrt

        trt = import_tensorrt("benchmarks/gpu_check.py")
        open_cuda(args.cuda).close()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fmabs_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "script": "benchmarks/gpu_check.py",
        "dry_run": args.dry_run,
        "work": str(work),
    }

    small = (
        prepare_small_model(work, None, args.onnx, args.epochs)
        if args.data is None
        else _given(args, work)
    )
    report["model"] = {
        "onnx": str(small.onnx),
        "n_images": len(small.files),
        "threshold": small.threshold,
        "data": str(small.data),
    }
    variants = make_variants(small, work)
    for precision, variant in variants.items():
        if variant["status"] == "ready":
            variant["reference"] = ort_reference(variant["onnx"], small.frames, small.threshold)
    report["variants"] = {
        p: {k: (str(v) if k == "onnx" else v) for k, v in variant.items() if k != "reference"}
        | ({"ort_scores": variant["reference"]["scores"]} if "reference" in variant else {})
        for p, variant in variants.items()
    }
    checks = {
        f"ort_{p}_finite": v["reference"]["finite"] for p, v in variants.items() if "reference" in v
    }

    if not args.dry_run:
        from fmabs_edge.benchmarks.system import machine_info

        report["tensorrt_version"] = trt.__version__
        report["machine"] = machine_info()
        report["gpu"] = report["machine"].get("machine_gpu") or "gpu"
        report["engines"] = check_engines(small, variants, work, args)
        for precision, result in report["engines"].items():
            if result["status"] != "not run":
                checks[f"engine_{precision}"] = result["status"] == "passed"
        report["not_run"] = [p for p, r in report["engines"].items() if r["status"] == "not run"]
    report["checks"] = checks
    report["passed"] = bool(checks) and all(checks.values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _given(args: argparse.Namespace, work: Path) -> SmallModel:
    """A model given by ``--onnx`` with its own test set ``--data`` (MVTec-style)."""
    if args.onnx is None:
        raise FmabsError("--data needs --onnx: the test set of a given model.")
    from fmabs_edge.artefacts import load_onnx, read_metadata
    from fmabs_edge.data import list_test_samples
    from fmabs_edge.runtime.preprocess import load_image, resize_image

    metadata = read_metadata(load_onnx(args.onnx), str(args.onnx))
    samples = list_test_samples(args.data)[: args.max_images]
    from fmabs_edge.artefacts import input_hw

    height, width = input_hw(load_onnx(args.onnx))
    frames = np.stack([resize_image(load_image(s.image).rgb, height, width) for s in samples])
    return SmallModel(
        None,
        Path(args.onnx),
        Path(args.data),
        [str(s.image) for s in samples],
        [s.label for s in samples],
        frames,
        float(metadata.threshold),
        ort_reference(Path(args.onnx), frames, float(metadata.threshold)),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Export, precision variants and the ONNX Runtime reference only (no TensorRT).",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="Check this FP32 ONNX file instead of a small model.",
    )
    parser.add_argument("--data", type=Path, default=None, help="MVTec-style test set for --onnx.")
    parser.add_argument("--max-images", type=int, default=64, help="Test images taken from --data.")
    parser.add_argument(
        "--cuda", choices=["pycuda", "cuda-python"], default=None, help="CUDA binding."
    )
    add_common_arguments(parser, "gpu_check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main("gpu_check", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
