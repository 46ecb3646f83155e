"""Faults on a line, with fake sources: disconnect/reconnect, a stalled source, a full queue,
a failing backend, an unreadable input and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _stream_doubles import BrightnessRunner, FakeCapture, ScriptedSource, dark_frame

from fmabs_edge.errors import DataError
from fmabs_edge.runtime.sources import LiveSource, ReconnectPolicy
from fmabs_edge.runtime.stream import StreamOptions, run_stream, stream_inputs

HERE = Path(__file__).parent


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_indices(events: list[dict], source: str) -> list[int]:
    return [e["frame"] for e in events if e["event"] == "frame" and e["source"] == source]


def test_disconnect_reconnect_while_others_keep_running(tmp_path):
    bgr = [np.full((32, 32, 3), 30, np.uint8)] * 6
    script = [FakeCapture(bgr[:4]), None, None, FakeCapture(bgr[4:])]
    camera = LiveSource(
        "rtsp://fake/cam",
        "cam",
        "url",
        ReconnectPolicy(0.01, 2.0, 0.05, max_attempts=3),
        opener=lambda: script.pop(0) if script else None,
    )
    other = ScriptedSource("other", [dark_frame(32, 32, i) for i in range(20)])
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32)

    summary = run_stream(
        runner, [camera, other], options=StreamOptions(jsonl=tmp_path / "e.jsonl", batch_size=4)
    )

    events = read_events(tmp_path / "e.jsonl")
    assert frame_indices(events, "cam") == list(range(6))
    assert frame_indices(events, "other") == list(range(20))
    cam_notes = [e["kind"] for e in events if e["event"] == "source" and e["source"] == "cam"]
    assert cam_notes[:4] == ["disconnected", "reconnect_failed", "reconnect_failed", "reconnected"]
    assert cam_notes[-1] == "failed"  # the second disconnect is never answered
    cam = [(e["event"], e.get("kind"), e.get("frame")) for e in events if e.get("source") == "cam"]
    assert (
        cam.index(("frame", None, 3))
        < cam.index(("source", "disconnected", None))
        < cam.index(("frame", None, 4))
    ), "notes sit between the frames they separate"
    stats = summary.sources["cam"]
    assert (stats["disconnects"], stats["reconnects"], stats["status"]) == (2, 1, "failed")
    assert summary.sources["other"]["status"] == "ended" and summary.scored == 26


def test_stalled_source_does_not_stall_the_others(tmp_path):
    fast = ScriptedSource("fast", [dark_frame(32, 32, i % 4) for i in range(40)])
    slow = ScriptedSource("slow", [dark_frame(32, 32, 0)] * 4, delays_s=[0.0, 0.0, 1.5, 0.0])
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32)

    run_stream(
        runner,
        [slow, fast],
        options=StreamOptions(jsonl=tmp_path / "e.jsonl", batch_size=4, queue_size=2),
    )

    events = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    order = [(e["source"], e["frame"]) for e in events]
    assert frame_indices(events, "fast") == list(range(40))
    assert frame_indices(events, "slow") == [0, 1, 2, 3]
    assert order.index(("fast", 39)) < order.index(
        ("slow", 2)
    ), "fast finished while slow was stalled"


def test_full_queue_on_a_live_source_drops_with_events(tmp_path):
    camera = ScriptedSource(
        "cam", [dark_frame(32, 32, i % 3) for i in range(60)], delays_s=[0.002] * 60, live=True
    )
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32, delay_s=0.03)

    options = StreamOptions(jsonl=tmp_path / "e.jsonl", batch_size=2, queue_size=2)
    summary = run_stream(runner, [camera], options=options)

    events = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    assert frame_indices(events, "cam") == list(
        range(60)
    ), "every frame once, in order, dropped or not"
    dropped = [e for e in events if e["status"] == "not_inspected"]
    assert dropped and all(e["cause"] == "dropped" and e["image_score"] is None for e in dropped)
    assert summary.not_inspected == len(dropped) and summary.scored + len(dropped) == 60
    assert summary.not_inspected_causes == {"dropped": len(dropped)}


def test_backend_failure_reports_the_batch_and_raises(tmp_path):
    class Failing(BrightnessRunner):
        def _infer_batch(self, images):
            if len(self.batches) == 2:
                raise RuntimeError("device lost")
            return super()._infer_batch(images)

    runner = Failing(tmp_path / "fake.bin", size=32)
    source = ScriptedSource("cam", [dark_frame(32, 32, 0)] * 30)
    with pytest.raises(RuntimeError, match="device lost"):
        run_stream(
            runner, [source], options=StreamOptions(out_dir=tmp_path, batch_size=2, queue_size=2)
        )
    events = read_events(tmp_path / "events.jsonl")
    frames = [e for e in events if e["event"] == "frame"]
    assert [e["frame"] for e in frames] == list(range(len(frames)))
    assert [e["cause"] for e in frames[4:6]] == ["inference_error"] * 2
    assert events[-1]["event"] == "summary" and events[-1]["stopped_by"] == "inference_error"
    assert (
        events[-1]["frames_in"] == len(frames) == events[-1]["scored"] + events[-1]["not_inspected"]
    )


def test_unreadable_video_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 4096)
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32)
    with pytest.raises(DataError, match="bad.avi"):
        stream_inputs(runner, [str(bad)], StreamOptions(out_dir=tmp_path / "out"))
    assert not (tmp_path / "out" / "events.jsonl").exists()


SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from pathlib import Path
from _stream_doubles import BrightnessRunner, ScriptedSource, dark_frame
from fmabs_edge.runtime.stream import StreamOptions, run_stream
out = Path({out!r})
frames = [dark_frame(32, 48, i) for i in range(5)]
sources = [ScriptedSource(name, frames, delays_s=[0.01] * 5, live=True, loop_forever=True) for name in ("a", "b")]
runner = BrightnessRunner(out / "fake.bin", size=32)
summary = run_stream(runner, sources, options=StreamOptions(out_dir=out, save_video=True, batch_size=4))
print("stopped_by", summary.stopped_by)
"""


def test_sigterm_stops_cleanly_with_outputs_closed(tmp_path):
    script = SIGTERM_SCRIPT.format(here=str(HERE), out=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    events_path = tmp_path / "events.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if events_path.exists() and events_path.read_text().count('"event": "frame"') >= 20:
            break
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "stopped_by SIGTERM" in stdout

    events = read_events(events_path)  # every line is whole JSON: the file was flushed and closed
    summary = events[-1]
    assert summary["event"] == "summary" and summary["stopped_by"] == "SIGTERM"
    frames = [e for e in events if e["event"] == "frame"]
    for source in ("a", "b"):
        assert frame_indices(events, source) == list(range(summary["sources"][source]["frames_in"]))
    assert summary["frames_in"] == len(frames) == summary["scored"] + summary["not_inspected"]
    assert json.loads((tmp_path / "summary.json").read_text())["frames_in"] == len(frames)
    import cv2

    capture = cv2.VideoCapture(str(tmp_path / "videos" / "a.avi"))
    assert capture.read()[0], "overlay video was finalised"
    capture.release()
