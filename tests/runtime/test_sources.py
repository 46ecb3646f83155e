"""Sources: spec parsing, video files, image folders and reconnecting live captures (faked)."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from _stream_doubles import FakeCapture, dark_frame, write_video

from fmabs_edge.errors import DataError, UsageError
from fmabs_edge.runtime import sources as sources_module
from fmabs_edge.runtime.sources import (
    ImageFolderSource,
    LiveSource,
    ReconnectPolicy,
    VideoFileSource,
    is_stream_spec,
    open_source,
    open_sources,
    parse_source_spec,
)


def test_spec_kinds(tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "one.png"), dark_frame(8, 8, 0))
    (tmp_path / "clip.mp4").write_bytes(b"x")
    cases = {
        str(tmp_path / "imgs"): ("folder", "imgs"),
        str(tmp_path / "one.png"): ("image", "one"),
        str(tmp_path / "clip.mp4"): ("video", "clip"),
        "0": ("camera", "camera0"),
        "/dev/video2": ("camera", "camera2"),
        "rtsp://10.0.0.5:554/live?user=a&pw=b": ("url", "stream"),
        "left=rtsp://10.0.0.5/x": ("url", "left"),
        "v4l2src device=/dev/video0 ! videoconvert ! appsink": ("gstreamer", "gstreamer"),
        "csi=nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink": (
            "gstreamer",
            "csi",
        ),
    }
    for spec, (kind, sid) in cases.items():
        parsed = parse_source_spec(spec)
        assert (parsed.kind, parsed.source_id) == (kind, sid), spec
    assert parse_source_spec("left=rtsp://10.0.0.5/x").target == "rtsp://10.0.0.5/x"
    assert is_stream_spec("0") and not is_stream_spec(str(tmp_path / "imgs"))
    with pytest.raises(UsageError, match="not an existing file"):
        parse_source_spec(str(tmp_path / "missing.avi"))
    with pytest.raises(UsageError, match="scheme"):
        parse_source_spec("ftp://host/file")


def test_open_sources_makes_ids_unique(tmp_path):
    write_video(tmp_path / "cam.avi", [dark_frame(16, 16, 0)] * 2)
    ids = [s.source_id for s in open_sources([str(tmp_path / "cam.avi")] * 3)]
    assert ids == ["cam", "cam-2", "cam-3"]


def test_video_file_in_order_and_looping(tmp_path):
    frames = [np.full((24, 32, 3), 20 * i, np.uint8) for i in range(5)]
    path = write_video(tmp_path / "v.avi", frames, fps=10.0)
    with VideoFileSource(str(path), "v") as source:
        got = list(source.frames())
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in got] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert got[3].rgb.shape == (24, 32, 3) and abs(int(got[3].rgb.mean()) - 60) <= 3

    looping = VideoFileSource(str(path), "v", loop=True)
    looping.open()
    taken = []
    for frame in looping.frames():
        taken.append(frame.index)
        if len(taken) == 12:
            looping.request_stop()
    looping.close()
    assert taken == list(range(12))


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(DataError, match="cannot read .*bad.avi as a video"):
        open_source(str(bad)).open()
    with pytest.raises(DataError, match="not found"):
        VideoFileSource(str(tmp_path / "gone.avi"), "gone").open()


def test_folder_order_and_corrupt_frames(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), dark_frame(8, 8, 0))
    (tmp_path / "c.jpg").write_bytes(b"")
    frames = list(ImageFolderSource(str(tmp_path), "f").frames())
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].rgb.shape == (8, 8, 3) and frames[1].rgb is not None
    assert frames[2].rgb is None and "c.jpg" in frames[2].problem and "empty" in frames[2].problem


def test_live_source_reconnects_with_backoff():
    """Opens: ok (3 frames) | fails | fails | ok (2 frames) | fails 3 times: given up."""
    bgr = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    script = [FakeCapture(bgr[:3]), None, FakeCapture([], opened=False), FakeCapture(bgr[3:])]
    opens = []

    def opener():
        opens.append(1)
        return script.pop(0) if script else None

    source = LiveSource(
        "rtsp://fake/x", "cam", "url", ReconnectPolicy(0.001, 2.0, 0.004, max_attempts=3), opener
    )
    notes = []
    source.notify = notes.append
    source.open()
    frames = list(source.frames())
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [0, 1, 2, 3, 4]
    kinds = [n.kind for n in notes]
    assert kinds == [
        "disconnected",
        "reconnect_failed",
        "reconnect_failed",
        "reconnected",
        "disconnected",
        "reconnect_failed",
        "reconnect_failed",
        "reconnect_failed",
        "failed",
    ]
    assert [n.attempt for n in notes if n.kind == "reconnect_failed"] == [1, 2, 1, 2, 3]
    assert notes[3].attempt == 3
    assert notes[1].retry_in_s == pytest.approx(0.002) and notes[-2].retry_in_s is None
    assert ReconnectPolicy(0.5, 2.0, 3.0).delay_s(5) == 3.0


def test_live_source_first_open_failure_names_causes():
    source = LiveSource("3", "camera3", "camera", opener=lambda: FakeCapture([], opened=False))
    with pytest.raises(DataError, match="cannot open camera '3'.*video' group"):
        source.open()


def test_gstreamer_needs_an_opencv_with_gstreamer(monkeypatch):
    pipeline = "nvarguscamerasrc ! nvvidconv ! appsink"
    monkeypatch.setattr(sources_module, "gstreamer_available", lambda: False)
    with pytest.raises(UsageError, match="system-site-packages"):
        open_source(pipeline).open()
    monkeypatch.setattr(sources_module, "gstreamer_available", lambda: True)
    with pytest.raises(UsageError, match="appsink"):
        sources_module.check_gstreamer_pipeline("videotestsrc ! videoconvert ! fakesink")


def test_this_opencv_reports_its_gstreamer_support():
    expected = any(
        line.strip().startswith("GStreamer:") and "YES" in line
        for line in cv2.getBuildInformation().splitlines()
    )
    assert sources_module.gstreamer_available() is expected


def test_url_source_with_opencv_over_loopback_http(tmp_path):
    """The real FFmpeg opener: the clip ends (a disconnect), is reopened, then the server goes."""
    import functools
    import http.server
    import threading

    write_video(tmp_path / "clip.avi", [dark_frame(24, 32, i) for i in range(5)])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
    source = LiveSource(
        url, "web", "url", ReconnectPolicy(0.01, 2.0, 0.05, max_attempts=2), timeout_ms=2000
    )
    notes = []
    source.notify = notes.append
    source.open()
    indices = []
    try:
        for frame in source.frames():
            indices.append(frame.index)
            if len(indices) == 6:  # into the second pass: take the server away
                server.shutdown()
                server.server_close()
    finally:
        source.close()
    assert (
        indices == list(range(len(indices))) and len(indices) >= 6
    )  # counting on across the reopen
    kinds = [n.kind for n in notes]
    assert kinds[:2] == ["disconnected", "reconnected"] and kinds[-1] == "failed"
    assert kinds.count("reconnect_failed") == 2
