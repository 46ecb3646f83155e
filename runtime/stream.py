"""Batched streaming: frames from N sources, one batch per step, a decision for every frame.

How a run flows::

    source 0 ──thread: read, ROI/pad, resize──> lane 0 (bounded) ─┐
    source 1 ──thread: read, ROI/pad, resize──> lane 1 (bounded) ─┼─> batch (round-robin) ─> runner
    ...                                                            ┘        │
         events (JSON Lines), overlay videos, rejected frames, summary <─ map back, mask, decide

- Every source has its own reader thread that decodes and preprocesses ahead of inference into a
  bounded lane of ``queue_size`` frames, so the accelerator rarely waits for decoding.
- Each step takes whatever frames are ready, round-robin over the lanes, up to the batch size; it
  never waits for one particular source, so a slow or stalled source cannot stall the others.
- A live source (camera, stream) whose lane is full drops its *oldest* waiting frame; a file source
  waits instead (nothing is lost). Every frame read gets exactly one event: scored (pass/reject) or
  ``not_inspected`` with the cause (``dropped``, ``undecodable``, ``stopped``, ``inference_error``,
  ``source_error``), in frame order per source.
- SIGINT/SIGTERM stop the run: frames still waiting become ``not_inspected`` (cause ``stopped``),
  then the event file, videos and summary are flushed and closed.

Event lines (one JSON object per line, ``"event"`` tells the kind): ``frame`` (one per frame, see
:func:`frame_event`), ``source`` (disconnects, reconnects, ends) and a final ``summary``.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import cv2
import numpy as np

from fmabs_edge.artefacts import write_bytes_atomic, write_text_atomic
from fmabs_edge.errors import DataError, FmabsError, UsageError
from fmabs_edge.metadata import ScoringConfig, sha256_file
from fmabs_edge.runtime.camera_config import (
    CameraConfig,
    CameraConfigs,
    CameraView,
    FrameGeometry,
    load_camera_configs,
)
from fmabs_edge.runtime.runners import Runner
from fmabs_edge.runtime.sources import Frame, ReconnectPolicy, Source, SourceNote, open_sources

logger = logging.getLogger(__name__)

CAUSES = ("dropped", "undecodable", "stopped", "inference_error", "source_error")
_LATENCY_WINDOW = 10_000


@dataclass
class StreamOptions:
    """Settings of one streaming run (None means "the default", resolved in :func:`run_stream`).

    ``batch_size``: frames per inference step (None: the runner's ``max_batch``, else 8).
    ``queue_size``: decoded frames waiting per source. ``max_frames``: stop each source after this
    many frames. ``threshold``: overrides every camera's image threshold. ``out_dir`` receives
    ``summary.json``, ``videos/<source>.avi`` (``save_video``) and ``rejects/<source>/``
    (``save_rejects``); ``jsonl`` the event stream (None: ``out_dir/events.jsonl`` when there is
    an ``out_dir``). ``display`` shows overlays in a window (needs an OpenCV with a GUI).
    ``handle_signals``: install SIGINT/SIGTERM handlers while running (main thread only).
    """

    batch_size: int | None = None
    queue_size: int = 8
    max_frames: int | None = None
    threshold: float | None = None
    out_dir: Path | None = None
    jsonl: Path | None = None
    save_video: bool = False
    save_rejects: bool = False
    display: bool = False
    max_regions: int = 16
    handle_signals: bool = True
    #: Seconds to wait for each reader thread to finish after a stop.
    stop_join_s: float = 2.0


@dataclass
class Region:
    """A connected defect region in frame pixels; ``peak_score`` in anomaly-map units."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak_score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
            "area": self.area,
            "peak_score": round(self.peak_score, 6),
        }


@dataclass
class Inspection:
    """The decision for one scored frame; ``roi_map`` is ``(h, w) float32`` in ROI pixels."""

    image_score: float
    reject: bool
    reason: str
    regions: list[Region]
    n_regions: int
    roi_map: np.ndarray
    score_from: str


@dataclass
class OperatingPoint:
    """Thresholds in force for one camera (anomaly-map units) and the minimum defect area (px)."""

    image_threshold: float
    pixel_threshold: float
    min_defect_area: int


# ----------------------------------------------------------------------------------------------
# scoring a map in frame coordinates


def reduce_map(values: np.ndarray, scoring: ScoringConfig) -> float:
    """The image score of the counted map pixels ``values`` (1-D float32), as the graph reduces.

    ``max``: the largest value; ``topk_mean``: the mean of the ``max(1, round(topk_fraction * n))``
    largest. Any non-finite counted pixel makes the score NaN (a reject with its reason).
    """
    if values.size == 0 or not np.isfinite(values).all():
        return float("nan")
    if scoring.reduction == "max":
        return float(values.max())
    k = max(1, int(round(scoring.topk_fraction * values.size)))
    return float(np.partition(values, values.size - k)[values.size - k :].mean())


def find_regions(
    roi_map: np.ndarray,
    valid: np.ndarray | None,
    pixel_threshold: float,
    min_area: int,
    offset_xy: tuple[int, int],
    max_regions: int,
) -> tuple[list[Region], int]:
    """Connected regions (8-neighbour) of counted pixels above ``pixel_threshold``.

    Regions smaller than ``min_area`` pixels are left out. Returns at most ``max_regions`` regions,
    highest peak first, with boxes moved by ``offset_xy`` into frame pixels, and the total count.
    """
    if not math.isfinite(pixel_threshold):
        return [], 0
    above = np.nan_to_num(roi_map, nan=-np.inf) > pixel_threshold
    if valid is not None:
        above &= valid
    if not above.any():
        return [], 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        above.astype(np.uint8), connectivity=8
    )
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < max(1, min_area):
            continue
        window = roi_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label]
        regions.append(Region(x + offset_xy[0], y + offset_xy[1], w, h, area, float(window.max())))
    regions.sort(key=lambda r: r.peak_score, reverse=True)
    return regions[:max_regions], len(regions)


def inspect_map(
    anomaly_map: np.ndarray,
    graph_score: float,
    geometry: FrameGeometry,
    point: OperatingPoint,
    scoring: ScoringConfig,
    decide: Callable[[float, float], tuple[bool, str]],
    max_regions: int = 16,
) -> Inspection:
    """Map one ``(S, S)`` anomaly map back to the frame, mask it, find regions and decide.

    The image score is the graph's own when the model saw exactly the frame (no ROI, padding or
    ignore mask); otherwise it is reduced from the counted pixels of the map in frame pixels.
    A frame above the image threshold stays a pass when ``min_defect_area > 0`` and no region
    reaches that area; a non-finite score is always a reject.
    """
    roi_map = geometry.map_to_roi(anomaly_map)
    if geometry.is_identity:
        score, score_from = float(graph_score), "graph"
    else:
        counted = roi_map[geometry.valid] if geometry.valid is not None else roi_map.ravel()
        score, score_from = reduce_map(counted, scoring), "masked_map"
    offset = (geometry.roi[0], geometry.roi[1])
    regions, n_regions = find_regions(
        roi_map, geometry.valid, point.pixel_threshold, point.min_defect_area, offset, max_regions
    )
    reject, reason = decide(score, point.image_threshold)
    if reject and math.isfinite(score) and point.min_defect_area > 0 and n_regions == 0:
        reject = False
        reason = f"score above threshold but no region reaches min_defect_area={point.min_defect_area} px"
    return Inspection(score, reject, reason, regions, n_regions, roi_map, score_from)


# ----------------------------------------------------------------------------------------------
# lanes: one bounded queue per source


@dataclass
class _Item:
    """A frame on its way (``model_input`` is None when it will not be scored) or a source note."""

    frame: Frame | None = None
    model_input: np.ndarray | None = None
    geometry: FrameGeometry | None = None
    cause: str = ""
    reason: str = ""
    note: SourceNote | None = None

    @property
    def scorable(self) -> bool:
        return self.model_input is not None


@dataclass
class _SourceStats:
    frames_in: int = 0
    scored: int = 0
    rejected: int = 0
    not_inspected: int = 0
    causes: collections.Counter = field(default_factory=collections.Counter)
    disconnects: int = 0
    reconnects: int = 0
    status: str = "running"
    first_monotonic: float | None = None
    last_monotonic: float | None = None


class _Lane:
    """A source, its reader thread and its bounded queue (guarded by the stream's condition)."""

    def __init__(
        self,
        source: Source,
        view: CameraView,
        point: OperatingPoint,
        capacity: int,
        cond: threading.Condition,
    ) -> None:
        self.source = source
        self.view = view
        self.point = point
        self.capacity = capacity
        self.cond = cond
        self.items: collections.deque[_Item] = collections.deque()
        self.waiting = 0  # scorable items in ``items``
        self.done = False
        self.closed = False
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def put(self, item: _Item) -> None:
        """Queue an item; a live source drops its oldest waiting frame when the lane is full."""
        with self.cond:
            if self.closed:
                return
            if item.scorable:
                while (
                    self.waiting >= self.capacity
                    and not self.source.live
                    and not self.stop.is_set()
                ):
                    self.cond.wait(0.05)
                if self.stop.is_set():
                    _unscore(item, "stopped", "run stopped before inference")
                elif self.waiting >= self.capacity:
                    self._drop_oldest()
            self.items.append(item)
            self.waiting += item.scorable
            self.cond.notify_all()

    def _drop_oldest(self) -> None:
        for old in self.items:
            if old.scorable:
                _unscore(
                    old,
                    "dropped",
                    f"dropped: inference fell behind the source (queue of {self.capacity} full)",
                )
                self.waiting -= 1
                return

    def finish(self, note: SourceNote | None = None) -> None:
        with self.cond:
            if note is not None and not self.closed:
                self.items.append(_Item(note=note))
            self.done = True
            self.cond.notify_all()


def _unscore(item: _Item, cause: str, reason: str) -> None:
    """Turn a queued frame into a "not inspected" one; a dropped frame also lets go of its pixels,
    so that a stalled consumer holds at most ``queue_size`` frames per source, plus small markers.
    """
    item.model_input = None
    item.cause, item.reason = cause, reason
    if cause == "dropped" and item.frame is not None:
        item.frame = replace(item.frame, rgb=None)


# ----------------------------------------------------------------------------------------------
# outputs


def frame_event(
    item: _Item,
    model_hash: str,
    point: OperatingPoint,
    inspection: Inspection | None = None,
    inference_ms: float | None = None,
    batch: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The JSON object of one frame.

    Keys: ``event`` ("frame"), ``source``, ``frame`` (index), ``timestamp`` (s), ``status``
    ("scored" / "not_inspected"), ``decision`` ("pass" / "reject" / "not_inspected"), ``reason``,
    ``cause`` (for not inspected), ``image_score`` (null when not scored or not finite),
    ``score_from`` ("graph" / "masked_map"), ``threshold``, ``pixel_threshold``,
    ``min_defect_area``, ``regions`` (``x``, ``y``, ``width``, ``height``, ``area`` in frame pixels,
    ``peak_score``), ``n_regions``, ``model_hash`` (the runner's graph hash, else the file's
    sha256), ``latency_ms`` (frame read to decision), ``inference_ms`` (the batch), ``batch_index``
    (0, 1, ... per run) and ``batch_size`` (frames of all sources in that batch).
    """
    frame = item.frame
    latency_ms = (time.monotonic() - frame.captured_monotonic) * 1000.0
    event: dict[str, Any] = {
        "event": "frame",
        "source": frame.source_id,
        "frame": frame.index,
        "timestamp": round(frame.timestamp, 6),
        "status": "not_inspected",
        "decision": "not_inspected",
        "reason": item.reason,
        "cause": item.cause,
        "image_score": None,
        "score_from": None,
        "threshold": _finite_or_none(point.image_threshold),
        "pixel_threshold": _finite_or_none(point.pixel_threshold),
        "min_defect_area": point.min_defect_area,
        "regions": [],
        "n_regions": 0,
        "model_hash": model_hash,
        "latency_ms": round(latency_ms, 3),
        "inference_ms": None if inference_ms is None else round(inference_ms, 3),
        "batch_index": None if batch is None else batch[0],
        "batch_size": None if batch is None else batch[1],
    }
    if inspection is not None:
        event.update(
            status="scored",
            decision="reject" if inspection.reject else "pass",
            reason=inspection.reason,
            cause="",
            image_score=_finite_or_none(inspection.image_score),
            score_from=inspection.score_from,
            regions=[r.to_dict() for r in inspection.regions],
            n_regions=inspection.n_regions,
        )
    return event


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def overlay(
    rgb: np.ndarray,
    event: dict[str, Any],
    inspection: Inspection | None,
    geometry: FrameGeometry | None,
) -> np.ndarray:
    """A BGR picture of the frame with the map above half the pixel threshold, boxes and decision."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if inspection is not None and geometry is not None:
        x, y, w, h = geometry.roi
        roi_map = np.nan_to_num(inspection.roi_map, nan=0.0, posinf=0.0, neginf=0.0)
        top = event["pixel_threshold"] or float(roi_map.max()) or 1.0
        level = np.clip(roi_map / (2.0 * top), 0.0, 1.0)
        heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
        shown = level > 0.25
        if geometry.valid is not None:
            shown &= geometry.valid
        patch = bgr[y : y + h, x : x + w]
        blended = cv2.addWeighted(patch, 0.5, heat, 0.5, 0.0)
        patch[shown] = blended[shown]
        if geometry.valid is not None:
            patch[~geometry.valid] = (patch[~geometry.valid] * 0.4).astype(np.uint8)
        cv2.rectangle(bgr, (x, y), (x + w - 1, y + h - 1), (255, 128, 0), 1)
        for region in inspection.regions:
            cv2.rectangle(
                bgr,
                (region.x, region.y),
                (region.x + region.width - 1, region.y + region.height - 1),
                (0, 0, 255),
                1,
            )
    colours = {"pass": (0, 200, 0), "reject": (0, 0, 255), "not_inspected": (0, 200, 255)}
    score = event["image_score"]
    label = event["decision"].upper().replace("_", " ") + ("" if score is None else f" {score:.3g}")
    scale = max(0.4, bgr.shape[1] / 1000.0)
    cv2.putText(
        bgr,
        label,
        (3, int(14 * scale / 0.4)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        colours[event["decision"]],
        max(1, int(scale * 2)),
        cv2.LINE_AA,
    )
    return bgr


class _VideoSinks:
    """One MJPG overlay video per source (``out_dir/videos/<source>.avi``), opened on first use."""

    def __init__(self, folder: Path, fps_by_source: dict[str, float | None]):
        self.folder = folder
        self.fps = fps_by_source
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.paths: list[Path] = []

    def write(self, source_id: str, bgr: np.ndarray) -> None:
        if source_id not in self.writers:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{source_id}.avi"
            size = (bgr.shape[1], bgr.shape[0])
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps.get(source_id) or 25.0, size
            )
            if not writer.isOpened():
                raise DataError(
                    f"Cannot write the overlay video {path} (OpenCV has no MJPG writer?)."
                )
            self.writers[source_id] = (writer, size)
            self.paths.append(path)
        writer, size = self.writers[source_id]
        if (bgr.shape[1], bgr.shape[0]) != size:  # the camera changed mode: keep the file's size
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        writer.write(bgr)

    def close(self) -> None:
        for writer, _ in self.writers.values():
            writer.release()
        self.writers.clear()


def _save_reject(
    folder: Path,
    event: dict[str, Any],
    rgb: np.ndarray,
    picture: np.ndarray,
    inspection: Inspection,
    geometry: FrameGeometry,
) -> None:
    """Write ``<frame>.png`` (the frame), ``<frame>_overlay.png``, ``<frame>_map.npy`` (float32 in
    ROI pixels, NaN where ignored) and ``<frame>.json`` (the event) under ``folder/<source>/``."""
    stem = folder / event["source"] / f"{event['frame']:08d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, image in (
        (".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
        ("_overlay.png", picture),
    ):
        ok, encoded = cv2.imencode(".png", image)
        if ok:
            write_bytes_atomic(stem.with_name(stem.name + suffix), encoded.tobytes())
    saved = inspection.roi_map.astype(np.float32, copy=True)
    if geometry.valid is not None:
        saved[~geometry.valid] = np.nan
    import io

    buffer = io.BytesIO()
    np.save(buffer, saved)
    write_bytes_atomic(stem.with_name(stem.name + "_map.npy"), buffer.getvalue())
    write_text_atomic(stem.with_name(stem.name + ".json"), json.dumps(event, indent=2))


def _check_display() -> None:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:") and line.split(":", 1)[1].strip().upper() == "NONE":
            raise UsageError(
                "--display needs an OpenCV with a GUI, but this one has none (opencv-python-headless). "
                "Use --save-video instead, or install opencv-python in place of the headless wheel."
            )


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class StreamSummary:
    """What a run did; ``to_dict`` is what ``summary.json`` and the last event line hold."""

    data: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name == "data":
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def format(self) -> str:
        """A few lines for the console: totals, then one line per source."""
        d = self.data
        lines = [
            f"frames {d['frames_in']}: scored {d['scored']} (rejected {d['rejected']}), not inspected "
            f"{d['not_inspected']} {d['not_inspected_causes'] or ''}".rstrip()
            + (f"; stopped by {d['stopped_by']}" if d["stopped_by"] else "")
        ]
        for sid, s in d["sources"].items():
            rate = "-" if s["reject_rate"] is None else f"{100 * s['reject_rate']:.1f}%"
            lines.append(
                f"  {sid} ({s['kind']}, {s['status']}): {s['frames_in']} in, {s['scored']} scored, reject rate {rate}, "
                f"{s['not_inspected']} not inspected, {s['disconnects']} disconnects"
            )
        if d["jsonl"]:
            lines.append(f"events -> {d['jsonl']}")
        return "\n".join(lines)


class _Stream:
    """One streaming run; see :func:`run_stream`."""

    def __init__(
        self,
        runner: Runner,
        sources: Sequence[Source],
        configs: CameraConfigs,
        options: StreamOptions,
        stop_event: threading.Event | None,
    ):
        if not sources:
            raise UsageError("Streaming needs at least one source.")
        ids = [s.source_id for s in sources]
        if len(set(ids)) != len(ids):
            raise UsageError(f"Source ids must be unique, got {ids}; name them ID=SPEC.")
        if options.queue_size < 1:
            raise UsageError(f"queue_size must be at least 1, got {options.queue_size}.")
        batch = options.batch_size or runner.max_batch or 8
        if runner.max_batch and batch > runner.max_batch:
            logger.warning(
                "batch size %d is above the model's max batch %d; using %d",
                batch,
                runner.max_batch,
                runner.max_batch,
            )
            batch = runner.max_batch
        if options.display:
            _check_display()

        self.runner, self.options, self.batch_size = runner, options, batch
        self.stop = stop_event or threading.Event()
        self.stopped_by: str | None = None
        self.cond = threading.Condition()
        self.model_hash = runner.model_hash or sha256_file(runner.path)
        configs.warn_unused(ids)
        self.lanes = [
            _Lane(
                source,
                CameraView(configs.for_source(source.source_id), source.source_id),
                self._operating_point(configs.for_source(source.source_id), source.source_id),
                options.queue_size,
                self.cond,
            )
            for source in sources
        ]
        self.stats = {s.source_id: _SourceStats() for s in sources}
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)
        self.inference_s = 0.0
        self.n_batches = 0
        self.error: BaseException | None = None

    def _operating_point(self, config: CameraConfig, source_id: str) -> OperatingPoint:
        image = (
            self.options.threshold if self.options.threshold is not None else config.image_threshold
        )
        if image is None:
            image = self.runner.metadata.threshold
        if not math.isfinite(image):
            logger.warning(
                "%s: no decision threshold (the model's is unset); every finite score passes. Fit one with "
                "'fmabs-edge threshold' or set image_threshold in the camera configuration.",
                source_id,
            )
        pixel = config.pixel_threshold if config.pixel_threshold is not None else image
        return OperatingPoint(float(image), float(pixel), config.min_defect_area)

    # -- reader threads ------------------------------------------------------------------------

    def _read(self, lane: _Lane) -> None:
        source, limit, count = lane.source, self.options.max_frames, 0
        final_note = None
        frames = source.frames()
        try:
            for frame in frames:
                if lane.stop.is_set():
                    break
                lane.put(self._prepare(lane, frame))
                count += 1
                if limit is not None and count >= limit:
                    final_note = SourceNote(
                        source.source_id, "ended", f"max_frames={limit} reached"
                    )
                    break
            frames.close()
        except FmabsError as err:
            final_note = SourceNote(source.source_id, "failed", str(err))
            logger.error("%s: %s", source.source_id, err)
        except Exception as err:  # a reader must never take the run down silently
            final_note = SourceNote(source.source_id, "failed", f"{type(err).__name__}: {err}")
            logger.exception("%s: reader failed", source.source_id)
        lane.finish(final_note)

    def _prepare(self, lane: _Lane, frame: Frame) -> _Item:
        if frame.rgb is None:
            return _Item(
                frame, cause="undecodable", reason=frame.problem or "frame could not be decoded"
            )
        try:
            geometry = lane.view.geometry(frame.rgb.shape[:2])
            model_input = geometry.to_model(frame.rgb, self.runner.input_hw)
        except FmabsError as err:
            return _Item(frame, cause="source_error", reason=str(err))
        return _Item(frame, model_input, geometry)

    # -- the main loop -------------------------------------------------------------------------

    def run(self) -> StreamSummary:
        jsonl_path = self.options.jsonl
        if jsonl_path is None and self.options.out_dir is not None:
            jsonl_path = Path(self.options.out_dir) / "events.jsonl"
        out_dir = Path(self.options.out_dir) if self.options.out_dir is not None else None
        if (self.options.save_video or self.options.save_rejects) and out_dir is None:
            raise UsageError("save_video and save_rejects need out_dir.")

        opened: list[Source] = []
        try:  # open everything first: an unreadable input fails before any work
            for lane in self.lanes:
                lane.source.open()
                opened.append(lane.source)
        except BaseException:
            for source in opened:
                source.close()
            raise
        videos = (
            _VideoSinks(out_dir / "videos", {l.source.source_id: l.source.fps for l in self.lanes})
            if self.options.save_video
            else None
        )
        handle: TextIO | None = None
        restore = self._install_signals()
        started = time.monotonic()
        error: BaseException | None = None
        try:
            if jsonl_path is not None:
                Path(jsonl_path).parent.mkdir(parents=True, exist_ok=True)
                handle = open(jsonl_path, "w", buffering=1 << 16)
            for lane in self.lanes:
                lane.source.notify = lambda note, lane=lane: lane.put(_Item(note=note))
                lane.thread = threading.Thread(
                    target=self._read,
                    args=(lane,),
                    name=f"fmabs-read-{lane.source.source_id}",
                    daemon=True,
                )
                lane.thread.start()
            rotation = 0
            while True:
                taken = self._take(rotation)
                rotation += 1
                if taken is None:
                    break
                self._process(taken, handle, videos, out_dir)
                if handle is not None:
                    handle.flush()
        except BaseException as err:  # flush and close whatever happens, then re-raise
            error = err
            self.stopped_by = self.stopped_by or type(err).__name__
        finally:
            self._shutdown(handle, videos, out_dir)
            restore()
            summary = self._summary(time.monotonic() - started, jsonl_path, videos, out_dir)
            if handle is not None:
                handle.write(json.dumps({"event": "summary", **summary}) + "\n")
                handle.close()
            if out_dir is not None:
                write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
        if error is None and self.error is not None:
            error = self.error
        if error is not None:
            raise error
        return StreamSummary(summary)

    def _take(self, rotation: int) -> list[tuple[_Lane, _Item]] | None:
        """Wait for work, then take items round-robin up to the batch size; None: run over."""
        with self.cond:
            while True:
                if self.stop.is_set():
                    return None
                if any(lane.items for lane in self.lanes):
                    break
                if all(lane.done for lane in self.lanes):
                    return None
                self.cond.wait(0.05)
            taken: list[tuple[_Lane, _Item]] = []
            scorable, progress = 0, True
            order = (
                self.lanes[rotation % len(self.lanes) :] + self.lanes[: rotation % len(self.lanes)]
            )
            while progress and scorable < self.batch_size:
                progress = False
                for lane in order:
                    while lane.items and not lane.items[0].scorable:
                        taken.append((lane, lane.items.popleft()))
                    if lane.items and scorable < self.batch_size:
                        taken.append((lane, lane.items.popleft()))
                        lane.waiting -= 1
                        scorable += 1
                        progress = True
            self.cond.notify_all()
            return taken

    def _process(
        self,
        taken: list[tuple[_Lane, _Item]],
        handle: TextIO | None,
        videos: _VideoSinks | None,
        out_dir: Path | None,
    ) -> None:
        batch = [item for _, item in taken if item.scorable]
        result, inference_ms = None, None
        if batch:
            started = time.perf_counter()
            try:
                result = self.runner.infer(np.stack([item.model_input for item in batch]))
            except (
                Exception
            ) as err:  # any backend failure: report the batch, stop, re-raise at the end
                logger.error("inference failed: %s", err)
                for item in batch:
                    _unscore(
                        item, "inference_error", f"inference failed: {type(err).__name__}: {err}"
                    )
                self.stop.set()
                self.stopped_by = self.stopped_by or "inference_error"
                self.error = err
            inference_ms = (time.perf_counter() - started) * 1000.0
            self.inference_s += inference_ms / 1000.0
            self.n_batches += 1
        position = 0
        metadata = self.runner.metadata
        for lane, item in taken:
            if item.note is not None:
                self._note(item.note, handle)
                continue
            inspection = None
            if item.scorable and result is not None:
                inspection = inspect_map(
                    result.anomaly_map[position, 0],
                    float(result.image_score[position]),
                    item.geometry,
                    lane.point,
                    metadata.scoring,
                    metadata.decide,
                    self.options.max_regions,
                )
                position += 1
            event = frame_event(
                item,
                self.model_hash,
                lane.point,
                inspection,
                inference_ms if inspection else None,
                (self.n_batches - 1, len(batch)) if inspection else None,
            )
            self._count(event)
            if handle is not None:
                handle.write(json.dumps(event) + "\n")
            self._outputs(item, event, inspection, videos, out_dir)

    def _outputs(
        self,
        item: _Item,
        event: dict[str, Any],
        inspection: Inspection | None,
        videos: _VideoSinks | None,
        out_dir: Path | None,
    ) -> None:
        rgb = item.frame.rgb
        if rgb is None or not (
            videos or self.options.display or (self.options.save_rejects and inspection)
        ):
            return
        picture = overlay(rgb, event, inspection, item.geometry)
        if videos is not None:
            videos.write(event["source"], picture)
        if self.options.save_rejects and inspection is not None and inspection.reject:
            _save_reject(out_dir / "rejects", event, rgb, picture, inspection, item.geometry)
        if self.options.display:
            cv2.imshow(f"fmabs-edge {event['source']}", picture)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stopped_by = "display"
                self.stop.set()

    def _note(self, note: SourceNote, handle: TextIO | None) -> None:
        stats = self.stats[note.source_id]
        if note.kind == "disconnected":
            stats.disconnects += 1
        elif note.kind == "reconnected":
            stats.reconnects += 1
        elif note.kind in ("ended", "failed"):
            stats.status = note.kind
        if handle is not None:
            handle.write(
                json.dumps(
                    {
                        "event": "source",
                        "source": note.source_id,
                        "kind": note.kind,
                        "message": note.message,
                        "attempt": note.attempt,
                        "retry_in_s": note.retry_in_s,
                        "time_unix": round(note.at_unix, 3),
                    }
                )
                + "\n"
            )

    def _count(self, event: dict[str, Any]) -> None:
        stats = self.stats[event["source"]]
        now = time.monotonic()
        stats.frames_in += 1
        stats.first_monotonic = stats.first_monotonic or now
        stats.last_monotonic = now
        if event["status"] == "scored":
            stats.scored += 1
            stats.rejected += event["decision"] == "reject"
            self.latencies_ms.append(event["latency_ms"])
        else:
            stats.not_inspected += 1
            stats.causes[event["cause"]] += 1

    # -- stopping ------------------------------------------------------------------------------

    def _install_signals(self) -> Callable[[], None]:
        if (
            not self.options.handle_signals
            or threading.current_thread() is not threading.main_thread()
        ):
            return lambda: None
        previous = {}

        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if not self.stop.is_set():
                logger.warning(
                    "%s received: stopping; waiting frames are reported as not inspected", name
                )
            self.stopped_by = self.stopped_by or name
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def _shutdown(
        self, handle: TextIO | None, videos: _VideoSinks | None, out_dir: Path | None
    ) -> None:
        """Stop the readers, report every frame still queued as not inspected, close outputs."""
        if self.stop.is_set() and self.stopped_by is None:
            self.stopped_by = "stop_event"
        for lane in self.lanes:
            lane.stop.set()
            lane.source.request_stop()
        with self.cond:
            self.cond.notify_all()
        for lane in self.lanes:
            if lane.thread is not None:
                lane.thread.join(self.options.stop_join_s)
                if lane.thread.is_alive():
                    logger.warning(
                        "%s: reader still blocked after %.1f s; leaving it",
                        lane.source.source_id,
                        self.options.stop_join_s,
                    )
        with self.cond:
            leftovers = []
            for lane in self.lanes:
                lane.closed = True
                leftovers.extend((lane, item) for item in lane.items)
                lane.items.clear()
                lane.waiting = 0
        for lane, item in leftovers:
            if item.scorable:
                _unscore(item, "stopped", "run stopped before inference")
        try:
            self._process(leftovers, handle, videos, out_dir)
        finally:
            if videos is not None:
                videos.close()
            if self.options.display:
                cv2.destroyAllWindows()
            for lane in self.lanes:
                if lane.thread is None or not lane.thread.is_alive():
                    lane.source.close()
                if self.stats[lane.source.source_id].status == "running":
                    self.stats[lane.source.source_id].status = "stopped"

    def _summary(
        self,
        duration_s: float,
        jsonl: Path | None,
        videos: _VideoSinks | None,
        out_dir: Path | None,
    ) -> dict[str, Any]:
        per_source = {}
        for lane in self.lanes:
            sid = lane.source.source_id
            s = self.stats[sid]
            span = (
                (s.last_monotonic - s.first_monotonic)
                if s.first_monotonic and s.last_monotonic
                else 0.0
            )
            per_source[sid] = {
                "kind": lane.source.kind,
                "frames_in": s.frames_in,
                "scored": s.scored,
                "rejected": s.rejected,
                "not_inspected": s.not_inspected,
                "not_inspected_causes": dict(s.causes),
                "reject_rate": _rate(s.rejected, s.scored),
                "not_inspected_rate": _rate(s.not_inspected, s.frames_in),
                "disconnects": s.disconnects,
                "reconnects": s.reconnects,
                "status": s.status,
                "frames_per_s": round(s.frames_in / span, 3) if span > 0 else None,
                "threshold": _finite_or_none(lane.point.image_threshold),
            }
        totals = {
            key: sum(p[key] for p in per_source.values())
            for key in ("frames_in", "scored", "rejected", "not_inspected")
        }
        causes: collections.Counter = collections.Counter()
        for s in self.stats.values():
            causes.update(s.causes)
        latencies = np.asarray(self.latencies_ms, dtype=np.float64)
        return {
            **totals,
            "passed": totals["scored"] - totals["rejected"],
            "not_inspected_causes": dict(causes),
            "duration_s": round(duration_s, 3),
            "scored_per_s": round(totals["scored"] / duration_s, 3) if duration_s > 0 else None,
            "latency_ms_p50": (
                round(float(np.percentile(latencies, 50)), 3) if latencies.size else None
            ),
            "latency_ms_p95": (
                round(float(np.percentile(latencies, 95)), 3) if latencies.size else None
            ),
            "inference_ms_mean": (
                round(1000 * self.inference_s / self.n_batches, 3) if self.n_batches else None
            ),
            "batch_size": self.batch_size,
            "n_batches": self.n_batches,
            "stopped_by": self.stopped_by,
            "model": str(self.runner.path),
            "model_hash": self.model_hash,
            "backend": self.runner.backend,
            "jsonl": None if jsonl is None else str(jsonl),
            "videos": [str(p) for p in videos.paths] if videos is not None else [],
            "rejects_dir": (
                str(out_dir / "rejects")
                if self.options.save_rejects and out_dir is not None
                else None
            ),
            "sources": per_source,
        }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def run_stream(
    runner: Runner,
    sources: Sequence[Source],
    configs: CameraConfigs | None = None,
    options: StreamOptions | None = None,
    stop_event: threading.Event | None = None,
) -> StreamSummary:
    """Score frames from ``sources`` with ``runner`` until every source ends or the run is stopped.

    ``configs``: per-camera settings (None: the whole frame, padded, the model's threshold).
    ``stop_event``: set it from another thread to stop (SIGINT/SIGTERM do the same). Sources are
    opened here (an unreadable input raises before any work) and closed at the end. Returns the
    summary (also in ``out_dir/summary.json`` and the event file's last line).
    """
    stream = _Stream(
        runner, sources, configs or CameraConfigs(), options or StreamOptions(), stop_event
    )
    return stream.run()


def stream_inputs(
    runner: Runner,
    inputs: Sequence[str],
    options: StreamOptions,
    config_path: Path | None = None,
    loop: bool = False,
    reconnect: ReconnectPolicy | None = None,
) -> StreamSummary:
    """Open sources from spec strings (see :mod:`fmabs_edge.runtime.sources`) and stream them."""
    configs = load_camera_configs(config_path) if config_path is not None else CameraConfigs()
    sources = open_sources(list(inputs), loop=loop, reconnect=reconnect)
    return run_stream(runner, sources, configs, options)
