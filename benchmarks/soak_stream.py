"""Soak test of the streaming path: many frames from looping video sources, throughput and memory.

Makes a short video (textured frames, some with a drawn defect), opens it as ``--sources``
looping sources, streams ``--frames`` frames in total through ``run_stream`` (event file written,
as on a line) and samples the process's resident memory (RSS) while it runs. Reports:

- ``throughput_fps``: frames scored per second over the whole run, and ``steady_fps`` after
  the warm-up (the first ``--warmup`` frames);
- ``rss_start_mb``: RSS once the warm-up frames are read (caches, thread pools and the model's
  arenas have settled), ``rss_end_mb``: the last sample before the run returns, and their
  ``rss_growth_pct`` against the target (< 5 %); ``rss_peak_mb`` and the samples themselves.

    python benchmarks/soak_stream.py --model runs/tiny/model.onnx --frames 10000 \\
        --out benchmarks/results/soak_stream.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import psutil

from fmabs_edge.artefacts import write_text_atomic
from fmabs_edge.runtime.sources import Frame, Source, VideoFileSource
from fmabs_edge.runtime.stream import StreamOptions, run_stream

logger = logging.getLogger(__name__)

TARGET_GROWTH_PCT = 5.0


class CountingSource(Source):
    """Passes another source's frames through and counts them (for the memory timeline)."""

    def __init__(self, inner: Source, counter: list[int], lock: threading.Lock) -> None:
        super().__init__(inner.spec, inner.source_id)
        self.kind = inner.kind
        self.inner = inner
        self.counter = counter
        self.lock = lock

    @property
    def fps(self) -> float | None:
        return self.inner.fps

    def open(self) -> None:
        self.inner.open()

    def frames(self) -> Iterator[Frame]:
        for frame in self.inner.frames():
            with self.lock:
                self.counter[0] += 1
            yield frame

    def request_stop(self) -> None:
        super().request_stop()
        self.inner.request_stop()

    def close(self) -> None:
        self.inner.close()


def make_video(path: Path, n_frames: int, width: int, height: int, seed: int = 0) -> Path:
    """An MJPG video of textured frames; every fifth frame has a bright drawn defect."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(n_frames):
        weave = np.sin(xx * 0.8 + index * 0.1) * np.sin(yy * 0.8)
        frame = np.clip(
            128 + 45 * weave[:, :, None] + rng.normal(0, 6, (height, width, 3)), 0, 255
        ).astype(np.uint8)
        if index % 5 == 4:
            cx, cy = int(rng.integers(10, width - 10)), int(rng.integers(10, height - 10))
            cv2.circle(frame, (cx, cy), max(3, width // 20), (235, 235, 235), -1)
        writer.write(frame)
    writer.release()
    return path


def soak(
    model: Path,
    frames: int = 10_000,
    sources: int = 2,
    batch_size: int | None = None,
    frame_size: tuple[int, int] = (160, 120),
    warmup: int = 500,
    threads: int | None = None,
    sample_s: float = 0.5,
    save_video: bool = False,
) -> dict[str, Any]:
    """Run the soak and return the record (see the module docstring for its fields)."""
    from fmabs_edge.runtime.ort_runner import OrtRunner

    process = psutil.Process(os.getpid())
    counter, lock = [0], threading.Lock()
    samples: list[tuple[float, int, float]] = []  # (seconds since start, frames read, RSS MB)
    done = threading.Event()

    runner = OrtRunner.open(model, intra_op_threads=threads)
    with tempfile.TemporaryDirectory(prefix="fmabs-soak-") as work, runner:
        video = make_video(Path(work) / "loop.avi", 60, *frame_size)
        looping = [
            CountingSource(VideoFileSource(str(video), f"cam{i}", loop=True), counter, lock)
            for i in range(sources)
        ]
        options = StreamOptions(
            batch_size=batch_size,
            max_frames=frames // sources,
            out_dir=Path(work) / "out",
            save_video=save_video,
            handle_signals=True,
        )
        rss_before_mb = process.memory_info().rss / 2**20
        started = time.monotonic()

        def sample() -> None:
            while not done.wait(sample_s):
                with lock:
                    read = counter[0]
                samples.append(
                    (time.monotonic() - started, read, process.memory_info().rss / 2**20)
                )

        sampler = threading.Thread(target=sample, name="fmabs-soak-rss", daemon=True)
        sampler.start()
        summary = run_stream(runner, looping, options=options).to_dict()
        samples.append((time.monotonic() - started, counter[0], process.memory_info().rss / 2**20))
        done.set()
        sampler.join()
        events_mb = (Path(work) / "out" / "events.jsonl").stat().st_size / 2**20

    after_warmup = [s for s in samples if s[1] >= warmup] or samples
    start, end = after_warmup[0], samples[-1]
    steady_frames = end[1] - start[1]
    steady_s = end[0] - start[0]
    growth = 100.0 * (end[2] - start[2]) / start[2]
    return {
        "model": str(model),
        "model_hash": summary["model_hash"],
        "image_size": runner.image_size,
        "frames_requested": frames,
        "sources": sources,
        "frame_size": list(frame_size),
        "batch_size": summary["batch_size"],
        "frames_in": summary["frames_in"],
        "scored": summary["scored"],
        "rejected": summary["rejected"],
        "not_inspected": summary["not_inspected"],
        "duration_s": summary["duration_s"],
        "throughput_fps": summary["scored_per_s"],
        "steady_fps": round(steady_frames / steady_s, 2) if steady_s > 0 else None,
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p95": summary["latency_ms_p95"],
        "rss_before_run_mb": round(rss_before_mb, 1),
        "rss_start_mb": round(start[2], 1),
        "rss_start_at_frames": start[1],
        "rss_end_mb": round(end[2], 1),
        "rss_peak_mb": round(max(s[2] for s in samples), 1),
        "rss_growth_pct": round(growth, 2),
        "target_growth_pct": TARGET_GROWTH_PCT,
        "within_target": growth < TARGET_GROWTH_PCT,
        "events_jsonl_mb": round(events_mb, 2),
        "samples": [[round(t, 2), n, round(m, 1)] for t, n, m in samples],
        "system": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "onnxruntime_threads": threads,
            "save_video": save_video,
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="ONNX model (ONNX Runtime backend)."
    )
    parser.add_argument(
        "--frames", type=int, default=10_000, help="Frames in total over all sources."
    )
    parser.add_argument(
        "--sources", type=int, default=2, help="Looping video sources streamed together."
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="Frames per step [default: 8]."
    )
    parser.add_argument("--frame-size", default="160x120", help="Video frame WIDTHxHEIGHT.")
    parser.add_argument(
        "--warmup", type=int, default=500, help="Frames read before the start RSS is taken."
    )
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
    parser.add_argument(
        "--save-video", action="store_true", help="Also write overlay videos (encoding cost)."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/soak_stream.json"), help="JSON record."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    width, height = (int(v) for v in args.frame_size.lower().split("x"))
    record = soak(
        args.model,
        args.frames,
        args.sources,
        args.batch_size,
        (width, height),
        args.warmup,
        args.threads,
        save_video=args.save_video,
    )
    write_text_atomic(args.out, json.dumps(record, indent=2))
    verdict = "within" if record["within_target"] else "ABOVE"
    print(
        f"{record['scored']} of {record['frames_in']} frames scored in {record['duration_s']:.1f} s "
        f"({record['throughput_fps']} fps overall, {record['steady_fps']} fps after warm-up; "
        f"p50/p95 latency {record['latency_ms_p50']}/{record['latency_ms_p95']} ms)\n"
        f"RSS {record['rss_start_mb']} MB after {record['rss_start_at_frames']} frames -> {record['rss_end_mb']} MB at "
        f"the end ({record['rss_growth_pct']:+.2f} %, {verdict} the {TARGET_GROWTH_PCT:.0f} % target; "
        f"peak {record['rss_peak_mb']} MB)\n-> {args.out}"
    )
    return record


if __name__ == "__main__":
    main()
