"""ONNX Runtime latency of the precision variants on this CPU, in one run, and what dominates.

    python -m fmabs_edge.benchmarks.precision_latency --fp32 model.onnx --fp16 model_fp16.onnx \\
        --int8 model_int8_cpu.onnx [--images DIR] [--iterations 200] [--threads N]

Times every variant at batch 1 with the one timing protocol (:mod:`fmabs_edge.benchmarks.protocol`:
warm-up, interleaved blocks over the variants, percentiles), each session with
``spin_threads=False`` so the sessions in this process do not slow one another; prints the
infer-stage p50/p90/p99 and the ratios to FP32 (the INT8 target is >= 1.5x). Then profiles each
variant with ONNX Runtime's profiler (``SessionOptions.enable_profiling``) and prints the op types
that take the most time, which is what limits a variant.

Frames are decoded normal images (``--images``, default: the model's training images) or, when
none is available, seeded noise. The INT8 variant to time is the ``cpu`` target (FP32 outside
Q/DQ); a ``trt`` file is timed too if given, but ONNX Runtime's CPU provider is not its target.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fmabs_edge.artefacts import INPUT_NAME, input_hw, load_onnx, read_metadata
from fmabs_edge.benchmarks.protocol import TimedVariant, measure
from fmabs_edge.errors import DataError, UsageError
from fmabs_edge.runtime.ort_runner import OrtRunner

logger = logging.getLogger(__name__)

#: INT8 must be at least this much faster than FP32 at batch 1 (the acceptance target).
INT8_TARGET_SPEEDUP = 1.5


def load_frames(model_path: Path, images: Path | None, count: int = 16) -> list[np.ndarray]:
    """Up to ``count`` frames at the graph's input size, ``(H, W, 3) uint8`` each."""
    from fmabs_edge.calib.reader import calibration_files, load_calibration_set

    model = load_onnx(model_path)
    metadata = read_metadata(model, str(model_path))
    size = input_hw(model)
    try:
        files, source, excluded = calibration_files(metadata, images, count)
        frames = load_calibration_set(files, size, source, excluded, min_images=0).images
        return list(frames)
    except (UsageError, DataError) as err:
        logger.warning("No normal images (%s); timing on seeded noise frames", err)
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def profile_ops(
    path: Path, frame: np.ndarray, runs: int = 30, threads: int | None = None
) -> list[tuple[str, float]]:
    """Share of node time per op type over ``runs`` batch-1 runs, largest first."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fmabs-profile-") as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        batch = frame[None]
        for _ in range(runs):
            session.run(None, {INPUT_NAME: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    return sorted(((op, value / total) for op, value in per_op.items()), key=lambda item: -item[1])


def run(
    variants: dict[str, Path],
    images: Path | None = None,
    iterations: int = 200,
    warmup: int = 20,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time and profile ``variants`` (name -> ONNX file); returns records, ratios and profiles."""
    if "fp32" not in variants:
        raise UsageError("Give the FP32 file (--fp32): the ratios are against it.")
    frames = load_frames(variants["fp32"], images)
    runners = {
        name: OrtRunner.open(path, intra_op_threads=threads, spin_threads=False)
        for name, path in variants.items()
    }
    try:
        timed = [
            TimedVariant(
                name=name, runner=runner, info={"artefact": str(variants[name]), "precision": name}
            )
            for name, runner in runners.items()
        ]
        records = measure(
            timed,
            frames,
            batch_sizes=(1,),
            warmup=warmup,
            iterations=iterations,
            block_iterations=20,
        )
    finally:
        for runner in runners.values():
            runner.close()
    by_name = {record["variant"]: record for record in records}
    base = by_name["fp32"]["infer_ms_p50"]
    ratios = {name: base / record["infer_ms_p50"] for name, record in by_name.items()}
    profiles = {
        name: profile_ops(path, frames[0], threads=threads) for name, path in variants.items()
    }
    return {"records": records, "speedup_vs_fp32": ratios, "profiles": profiles}


def _print(result: dict[str, Any]) -> None:
    print(
        f"{'variant':<10} {'infer p50':>10} {'p90':>8} {'p99':>8} {'latency p50':>12} {'x FP32':>7}  (ms, batch 1)"
    )
    for record in result["records"]:
        name = record["variant"]
        print(
            f"{name:<10} {record['infer_ms_p50']:>10.2f} {record['infer_ms_p90']:>8.2f} "
            f"{record['infer_ms_p99']:>8.2f} {record['latency_ms_p50']:>12.2f} "
            f"{result['speedup_vs_fp32'][name]:>7.2f}"
        )
    for name, ops in result["profiles"].items():
        shown = ", ".join(f"{op} {share:.0%}" for op, share in ops[:5])
        print(f"profile {name}: {shown}")
    if "int8" in result["speedup_vs_fp32"]:
        ratio = result["speedup_vs_fp32"]["int8"]
        verdict = "met" if ratio >= INT8_TARGET_SPEEDUP else "NOT met"
        print(f"INT8 speed-up {ratio:.2f}x vs FP32: target {INT8_TARGET_SPEEDUP}x {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("fp32", "fp16", "int8", "int8_trt"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=Path, default=None, help=f"{name} ONNX file"
        )
    parser.add_argument(
        "--images", type=Path, default=None, help="folder of normal images [training images]"
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads [ONNX Runtime's default]"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = {
        name: getattr(args, name)
        for name in ("fp32", "fp16", "int8", "int8_trt")
        if getattr(args, name)
    }
    result = run(variants, args.images, args.iterations, args.warmup, args.threads)
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
