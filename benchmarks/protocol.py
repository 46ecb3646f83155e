"""The one timing protocol of fmabs-edge, the same for every backend.

A *variant* is an open runner with a name. For each batch size the protocol

1. runs ``warmup`` batches per variant and discards them;
2. measures ``iterations`` batches per variant in blocks of ``block_iterations``, round-robin over
   the variants (the first variant of each block rotates), so slow drift of the machine (heat,
   other processes) hits every variant alike;
3. times the stages of one batch with a monotonic clock: **decode** (read and decode the files),
   **preprocess** (the one resize to the runner's input, S×S or the camera size of a graph with an
   in-graph resize, and stacking), **infer** (the runner, then the variant's
   ``sync`` hook: runners return host numpy arrays, which is a device synchronisation already; a
   backend that returns earlier passes its own hook) and **postprocess** (each anomaly map resized
   back to its image's original size, and the decision at the stored threshold). **latency** is
   one clock span over all four stages.

Every batch of an iteration index holds the same frames for every variant (the frame list is
cycled). Each (variant, batch size) becomes one flat record whose field names carry their units:
``<stage>_ms_p50/p90/p95/p99/mean/min/max`` and ``<stage>_cv`` for the stages ``decode``,
``preprocess``, ``infer``, ``postprocess`` and ``latency`` (all per batch), ``throughput_ips`` and
``infer_throughput_ips`` (images per second from the mean), ``rss_mb_peak``, ``gpu_mem_mb_peak``
and ``artefact_mb``. A coefficient of variation above ``cv_limit`` is logged once per record.

Frames given as decoded ``(H, W, 3) uint8`` arrays skip the decode stage (its fields are None).
A variant with ``make_input`` (an external ONNX file with its own input) is timed on that input in
the infer stage alone.

:func:`time_runner` times one open runner (the TensorRT check script uses it);
:func:`measure` times several in one process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import cv2
import numpy as np

from fmabs_edge.benchmarks.system import MIB, MemorySampler, machine_info
from fmabs_edge.errors import UsageError
from fmabs_edge.runtime.preprocess import load_image, resize_image

logger = logging.getLogger(__name__)

#: Percentiles reported for every stage.
PERCENTILES = (50, 90, 95, 99)
#: Timed stages, in pipeline order; ``latency`` spans the other four.
STAGES = ("decode", "preprocess", "infer", "postprocess", "latency")
#: Coefficient of variation (std / mean) above which a record is flagged noisy.
DEFAULT_CV_LIMIT = 0.1

#: A frame: an image file (decoded in the loop) or a decoded ``(H, W, 3) uint8`` RGB array.
Frame = Union[str, Path, np.ndarray]
Clock = Callable[[], float]

_warned: set[str] = set()


def warn_once(key: str, message: str, *args: object) -> None:
    """Log a warning the first time ``key`` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(message, *args)


def reset_warnings() -> None:
    """Forget which warnings were logged (tests; a new benchmark run)."""
    _warned.clear()


def stage_fields(stage: str) -> list[str]:
    """The summary field names of one stage, in report order."""
    names = [f"{stage}_ms_p{p}" for p in PERCENTILES]
    return names + [f"{stage}_ms_mean", f"{stage}_ms_min", f"{stage}_ms_max", f"{stage}_cv"]


def summarise(stage: str, samples_ms: Sequence[float]) -> dict[str, float | None]:
    """Percentiles (linear interpolation), mean, min, max and CV of ``samples_ms`` (milliseconds).

    The CV is the sample standard deviation (ddof=1) over the mean; every field is None when there
    are no samples.
    """
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(stage_fields(stage))
    summary: dict[str, float | None] = {
        f"{stage}_ms_p{p}": float(np.percentile(values, p)) for p in PERCENTILES
    }
    mean = float(values.mean())
    summary[f"{stage}_ms_mean"] = mean
    summary[f"{stage}_ms_min"] = float(values.min())
    summary[f"{stage}_ms_max"] = float(values.max())
    spread = float(values.std(ddof=1)) if values.size > 1 else 0.0
    summary[f"{stage}_cv"] = spread / mean if mean > 0 else 0.0
    return summary


@dataclass
class TimedVariant:
    """One runner under test.

    ``runner`` has ``infer(images (N, S, S, 3) uint8) -> InferenceResult`` (anomaly_map
    ``(N, 1, S, S)``, image_score ``(N,)``), ``input_hw`` and ``metadata`` (for the threshold).
    ``sync`` is called after ``infer`` and before the clock is read, for backends whose ``infer``
    returns before the device is done. ``make_input(batch_size)`` marks an inference-only variant
    (its own input layout; raises UsageError for a batch size it cannot take).
    ``info`` is copied into each of its records (artefact, backend, precision, ...).
    """

    name: str
    runner: Any
    sync: Callable[[], None] | None = None
    make_input: Callable[[int], np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def inference_only(self) -> bool:
        return self.make_input is not None


@dataclass
class BatchOutput:
    """One batch through the pipeline: stage times (seconds) and what the runner returned."""

    stage_s: dict[str, float | None]
    #: ``(N, S, S) float32`` maps at model resolution (None for inference-only variants).
    anomaly_map: np.ndarray | None
    #: ``(N,) float32`` image scores.
    image_score: np.ndarray | None
    #: ``(N,) bool``: rejected at the stored threshold (a non-finite score always rejects).
    rejected: np.ndarray | None
    #: Maps resized back to each frame's original ``(H, W)`` (what a user's loop hands on).
    original_maps: list[np.ndarray] = field(default_factory=list)


def map_size(runner: Any) -> int:
    """The resolution S of a runner's ``(N, 1, S, S)`` anomaly maps (the model size)."""
    return int(runner.image_size)


def resize_map_to_original(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(S, S) float32`` map -> ``(height, width) float32`` (bilinear), the runtime's map-back."""
    if anomaly_map.shape == (height, width):
        return anomaly_map
    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)


def run_batch(
    variant: TimedVariant, frames: Sequence[Frame], clock: Clock = time.perf_counter
) -> BatchOutput:
    """Push one batch of frames through decode -> preprocess -> infer -> postprocess, timed."""
    runner = variant.runner
    if variant.make_input is not None:
        batch = variant.make_input(len(frames))
        start = clock()
        runner.infer(batch)
        if variant.sync is not None:
            variant.sync()
        infer_s = clock() - start
        stages = dict.fromkeys(STAGES)
        stages["infer"] = infer_s
        return BatchOutput(stages, None, None, None)

    height, width = (int(v) for v in runner.input_hw)
    decoded_in_loop = not all(isinstance(frame, np.ndarray) for frame in frames)
    t_start = clock()
    images = [frame if isinstance(frame, np.ndarray) else load_image(frame).rgb for frame in frames]
    t_decoded = clock()
    batch = np.stack([resize_image(rgb, height, width) for rgb in images])
    t_preprocessed = clock()
    result = runner.infer(batch)
    if variant.sync is not None:
        variant.sync()
    t_inferred = clock()
    maps = result.anomaly_map[:, 0]
    original = [resize_map_to_original(m, *rgb.shape[:2]) for m, rgb in zip(maps, images)]
    threshold = runner.metadata.threshold
    rejected = np.array(
        [runner.metadata.decide(float(s), threshold)[0] for s in result.image_score]
    )
    t_end = clock()

    stages: dict[str, float | None] = {
        "decode": (t_decoded - t_start) if decoded_in_loop else None,
        "preprocess": t_preprocessed - t_decoded,
        "infer": t_inferred - t_preprocessed,
        "postprocess": t_end - t_inferred,
        "latency": t_end - t_start,
    }
    return BatchOutput(stages, maps, result.image_score, rejected, original)


def cycled_batches(frames: Sequence[Frame], batch_size: int, count: int) -> list[list[Frame]]:
    """``count`` batches of ``batch_size`` frames taken in order from ``frames``, wrapping."""
    if not frames:
        raise UsageError("The benchmark needs at least one frame; the data folder gave none.")
    total = len(frames)
    return [[frames[(i * batch_size + k) % total] for k in range(batch_size)] for i in range(count)]


@dataclass
class _Samples:
    """Stage samples (ms) and memory peaks of one (variant, batch size)."""

    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    rss_mb_peak: float = 0.0
    gpu_mem_mb_peak: float | None = None

    def add(self, output: BatchOutput) -> None:
        for stage, seconds in output.stage_s.items():
            if seconds is not None:
                self.stage_ms[stage].append(seconds * 1000.0)

    def note_memory(self, rss_mb: float, gpu_mb: float | None) -> None:
        self.rss_mb_peak = max(self.rss_mb_peak, rss_mb)
        if gpu_mb is not None:
            self.gpu_mem_mb_peak = max(self.gpu_mem_mb_peak or 0.0, gpu_mb)


def _check_counts(
    batch_sizes: Sequence[int], warmup: int, iterations: int, block_iterations: int
) -> None:
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UsageError(
            f"Batch sizes must be positive integers, got {list(batch_sizes)}; e.g. 1,4,8."
        )
    if warmup < 0:
        raise UsageError(f"warmup must be 0 or more, got {warmup}.")
    if iterations < 1:
        raise UsageError(f"iterations must be at least 1, got {iterations}.")
    if block_iterations < 1:
        raise UsageError(f"block_iterations must be at least 1, got {block_iterations}.")


def artefact_mb(path: str | Path | None) -> float | None:
    """Size of an artefact on disk in MiB (None when there is no file)."""
    if path is None:
        return None
    path = Path(path)
    return path.stat().st_size / MIB if path.is_file() else None


def _record(
    variant: TimedVariant,
    batch_size: int,
    samples: _Samples,
    warmup: int,
    iterations: int,
    gpu_source: str,
    cv_limit: float,
) -> dict[str, Any]:
    record: dict[str, Any] = {"variant": variant.name, **variant.info, "batch_size": batch_size}
    record["warmup_iterations"] = warmup
    record["timed_iterations"] = iterations
    for stage in STAGES:
        record.update(summarise(stage, samples.stage_ms[stage]))
    latency_mean = record["latency_ms_mean"]
    infer_mean = record["infer_ms_mean"]
    record["throughput_ips"] = batch_size * 1000.0 / latency_mean if latency_mean else None
    record["infer_throughput_ips"] = batch_size * 1000.0 / infer_mean if infer_mean else None
    record["rss_mb_peak"] = samples.rss_mb_peak
    record["gpu_mem_mb_peak"] = samples.gpu_mem_mb_peak
    record["gpu_mem_source"] = gpu_source
    noisy = [
        stage
        for stage in ("infer", "latency")
        if record[f"{stage}_cv"] is not None and record[f"{stage}_cv"] > cv_limit
    ]
    record["cv_high"] = bool(noisy)
    if noisy:
        warn_once(
            f"cv:{variant.name}:{batch_size}",
            "%s at batch %d: %s time varies a lot (CV %s > %.2f); close other programs, lock "
            "clocks or raise --iterations before trusting its percentiles.",
            variant.name,
            batch_size,
            " and ".join(noisy),
            "/".join(f"{record[f'{stage}_cv']:.2f}" for stage in noisy),
            cv_limit,
        )
    return record


def measure(
    variants: Sequence[TimedVariant],
    frames: Sequence[Frame],
    batch_sizes: Sequence[int] = (1,),
    warmup: int = 10,
    iterations: int = 50,
    block_iterations: int = 10,
    cv_limit: float = DEFAULT_CV_LIMIT,
    clock: Clock = time.perf_counter,
    memory: MemorySampler | None = None,
    progress: Any | None = None,
) -> list[dict[str, Any]]:
    """Time every variant at every batch size with the protocol above; one record per pair.

    ``progress`` is an optional ``rich.progress.Progress``: a task advancing per timed batch is
    added to it. A variant that cannot take a batch size (a fixed-batch external model) is
    skipped there with an info line.
    """
    _check_counts(batch_sizes, warmup, iterations, block_iterations)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UsageError(f"Variant names must be unique, got {names}; name them NAME=PATH.")
    memory = memory or MemorySampler()
    records: list[dict[str, Any]] = []
    task = None
    if progress is not None:
        total = len(batch_sizes) * len(variants) * (warmup + iterations)
        task = progress.add_task("timing", total=total)

    for batch_size in batch_sizes:
        batches = cycled_batches(frames, batch_size, max(warmup, iterations))
        active = [v for v in variants if _supports(v, batch_size)]
        samples = {v.name: _Samples() for v in active}

        # Warm-up: caches, lazy allocations and thread pools settle; results are discarded.
        for variant in active:
            for index in range(warmup):
                run_batch(variant, batches[index], clock)
                if task is not None:
                    progress.advance(task)

        # Timed blocks, round-robin over the variants with a rotating first variant.
        done, block = 0, 0
        while done < iterations:
            count = min(block_iterations, iterations - done)
            shift = block % len(active) if active else 0
            for variant in active[shift:] + active[:shift]:
                bucket = samples[variant.name]
                for index in range(done, done + count):
                    bucket.add(run_batch(variant, batches[index], clock))
                    bucket.note_memory(memory.rss_mb(), None)
                    if task is not None:
                        progress.advance(task)
                bucket.note_memory(memory.rss_mb(), memory.gpu_mb())
            done += count
            block += 1

        for variant in active:
            records.append(
                _record(
                    variant,
                    batch_size,
                    samples[variant.name],
                    warmup,
                    iterations,
                    memory.gpu_source,
                    cv_limit,
                )
            )
    return records


def _supports(variant: TimedVariant, batch_size: int) -> bool:
    if variant.make_input is None:
        return True
    try:
        variant.make_input(batch_size)
    except UsageError as err:
        logger.info("%s skipped at batch %d: %s", variant.name, batch_size, err)
        return False
    return True


def time_runner(
    runner: Any,
    frames: Sequence[Frame],
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 10,
    iterations: int = 100,
    name: str | None = None,
    sync: Callable[[], None] | None = None,
    cv_limit: float = DEFAULT_CV_LIMIT,
) -> list[dict[str, Any]]:
    """Time one open runner with the protocol; one flat record per batch size.

    ``frames``: image paths (decoded in the loop) or decoded ``(H, W, 3) uint8`` RGB arrays.
    ``sync`` defaults to the runner's ``synchronize`` method when it has one. The records carry
    the runner's ``describe()`` fields, ``artefact_mb`` and the machine (``machine_*``,
    ``version_*``, ``jetson_*``); :func:`fmabs_edge.benchmarks.report.write_results` turns them
    into the same CSV/JSON/plots/report.md as ``fmabs-edge benchmark`` (accuracy columns empty).
    """
    description = dict(runner.describe()) if hasattr(runner, "describe") else {}
    info = {
        "artefact": str(description.get("artefact", getattr(runner, "path", ""))),
        "backend": description.get("backend", getattr(runner, "backend", "")),
        "precision": description.get("precision", ""),
        "image_size": description.get("image_size"),
        "artefact_mb": artefact_mb(description.get("artefact") or getattr(runner, "path", None)),
    }
    variant = TimedVariant(
        name=name or Path(info["artefact"]).stem or "runner",
        runner=runner,
        sync=sync if sync is not None else getattr(runner, "synchronize", None),
        info=info,
    )
    records = measure([variant], frames, batch_sizes, warmup, iterations, cv_limit=cv_limit)
    machine = machine_info()
    for record in records:
        record.update(machine)
    return records
