"""Streaming through the ONNX Runtime backend: a 300-frame video from two sources in one batch.

The model is a contract-conforming ONNX graph whose anomaly map is the pixel brightness (see
_stream_doubles.write_brightness_onnx): dark frames pass, a drawn white defect rejects. It goes
through OrtRunner, the batching, the ROI/pad geometry, the ignore mask and every output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from _stream_doubles import (
    BrightnessRunner,
    ScriptedSource,
    dark_frame,
    with_defect,
    write_brightness_onnx,
    write_video,
)

from fmabs_edge.runtime.camera_config import CameraConfig, CameraConfigs
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.runtime.sources import VideoFileSource
from fmabs_edge.runtime.stream import StreamOptions, run_stream

HEIGHT, WIDTH = 72, 96  # not square: the frames are padded to 96x96, then resized to 64x64
DEFECT_A = (20, 14, 10, 10)  # x, y, w, h in frame pixels
DEFECT_B = (70, 44, 12, 12)
N_FRAMES = 300


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def overlaps(region: dict, box: tuple[int, int, int, int]) -> bool:
    x, y, w, h = box
    return (
        region["x"] < x + w
        and x < region["x"] + region["width"]
        and region["y"] < y + h
        and y < region["y"] + region["height"]
    )


def frame_kind(index: int) -> str:
    """Frames cycle through 6 pictures: 2 has defect A, 5 has defect B, the rest are good."""
    return {2: "A", 5: "B"}.get(index % 6, "good")


@pytest.fixture(scope="module")
def line_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("line")
    pictures = [dark_frame(HEIGHT, WIDTH, seed) for seed in range(6)]
    pictures[2] = with_defect(pictures[2], DEFECT_A)
    pictures[5] = with_defect(pictures[5], DEFECT_B)
    return write_video(folder / "line.avi", [pictures[i % 6] for i in range(N_FRAMES)])


def test_video_two_sources_one_batch_ort(tmp_path, line_video):
    model = write_brightness_onnx(tmp_path / "brightness.onnx", size=64, threshold=6.0)
    x, y, w, h = DEFECT_B
    hide_b = ((x - 2, y - 2), (x + w + 2, y - 2), (x + w + 2, y + h + 2), (x - 2, y + h + 2))
    configs = CameraConfigs(cameras={"right": CameraConfig(ignore_polygons=(hide_b,))})
    sources = [VideoFileSource(str(line_video), "left"), VideoFileSource(str(line_video), "right")]
    options = StreamOptions(batch_size=4, queue_size=4, out_dir=tmp_path / "out", save_rejects=True)

    with OrtRunner.open(model, intra_op_threads=1) as runner:
        summary = run_stream(runner, sources, configs, options)

    events = read_events(tmp_path / "out" / "events.jsonl")
    frames = [e for e in events if e["event"] == "frame"]
    assert events[-1]["event"] == "summary"
    assert summary.frames_in == summary.scored == 2 * N_FRAMES
    assert summary.not_inspected == 0

    for source in ("left", "right"):
        mine = [e for e in frames if e["source"] == source]
        assert [e["frame"] for e in mine] == list(
            range(N_FRAMES)
        ), "every frame exactly once, in order"
        for e in mine:
            kind = frame_kind(e["frame"])
            hidden = kind == "B" and source == "right"
            expected = "reject" if kind in ("A", "B") and not hidden else "pass"
            assert e["decision"] == expected, (source, e)
            assert e["model_hash"] == summary.model_hash and e["threshold"] == 6.0
            if kind == "A":
                assert any(overlaps(r, DEFECT_A) for r in e["regions"]), e
            if kind == "B" and not hidden:
                assert any(overlaps(r, DEFECT_B) for r in e["regions"]), e
            if hidden:
                assert e["regions"] == [] and e["image_score"] < 6.0
                assert e["score_from"] == "masked_map"

    by_batch: dict[int, set[str]] = {}
    for e in frames:
        by_batch.setdefault(e["batch_index"], set()).add(e["source"])
        assert e["batch_size"] <= 4
    assert (
        sum(1 for s in by_batch.values() if s == {"left", "right"}) > N_FRAMES / 4
    ), "sources share batches"

    saved = sorted((tmp_path / "out" / "rejects" / "left").glob("*_map.npy"))
    assert len(saved) == summary.sources["left"]["rejected"] == 100
    assert np.load(saved[0]).shape == (HEIGHT, WIDTH)
    assert summary.sources["right"]["rejected"] == 50


def test_overlay_video_has_every_frame(tmp_path):
    pictures = [dark_frame(40, 56, seed) for seed in range(3)]
    pictures[1] = with_defect(pictures[1], (5, 5, 6, 6))
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32)
    source = ScriptedSource("cam", pictures * 4)
    summary = run_stream(runner, [source], options=StreamOptions(out_dir=tmp_path, save_video=True))
    capture = cv2.VideoCapture(summary.videos[0])
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 12 and summary.sources["cam"]["rejected"] == 4
    assert source.closed.is_set()


def test_nan_score_is_a_reject_with_reason(tmp_path):
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32, nan_marker=7)
    poisoned = dark_frame(32, 32, 1)
    poisoned[0, 0] = 7
    summary = run_stream(
        runner,
        [ScriptedSource("cam", [dark_frame(32, 32, 0), poisoned])],
        options=StreamOptions(jsonl=tmp_path / "e.jsonl"),
    )
    frames = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    assert [e["decision"] for e in frames] == ["pass", "reject"]
    assert frames[1]["image_score"] is None and "non-finite" in frames[1]["reason"]
    assert summary.rejected == 1


def test_min_defect_area_and_camera_threshold(tmp_path):
    small = with_defect(dark_frame(64, 64, 0), (10, 10, 2, 2))
    large = with_defect(dark_frame(64, 64, 1), (30, 30, 12, 12))
    runner = BrightnessRunner(tmp_path / "fake.bin", size=64)
    configs = CameraConfigs(default=CameraConfig(min_defect_area=20, image_threshold=5.0))
    run_stream(
        runner,
        [ScriptedSource("cam", [small, large])],
        configs,
        StreamOptions(jsonl=tmp_path / "e.jsonl"),
    )
    frames = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    assert frames[0]["decision"] == "pass" and "min_defect_area=20" in frames[0]["reason"]
    assert frames[0]["image_score"] > 5.0
    assert frames[1]["decision"] == "reject" and frames[1]["threshold"] == 5.0
    assert frames[1]["regions"][0]["area"] == 144
    assert math.isclose(frames[1]["regions"][0]["peak_score"], 10.0, rel_tol=1e-4)


def test_folder_with_corrupt_image_reports_not_inspected(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), dark_frame(32, 32, i))
    (folder / "1.png").write_bytes((folder / "1.png").read_bytes()[:40])  # truncated PNG
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32)
    from fmabs_edge.runtime.sources import ImageFolderSource

    options = StreamOptions(jsonl=tmp_path / "e.jsonl")
    summary = run_stream(runner, [ImageFolderSource(str(folder), "imgs")], options=options)
    frames = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    assert [e["status"] for e in frames] == ["scored", "not_inspected", "scored"]
    assert frames[1]["cause"] == "undecodable" and "1.png" in frames[1]["reason"]
    assert summary.not_inspected_causes == {"undecodable": 1}


def test_cli_run_streams_a_video_mixed_with_a_folder(tmp_path, line_video):
    from click.testing import CliRunner

    from fmabs_edge.cli import main

    model = write_brightness_onnx(tmp_path / "brightness.onnx", size=64, threshold=6.0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), dark_frame(40, 40, 0))
    config = tmp_path / "cams.yaml"
    config.write_text("cameras:\n  cam:\n    image_threshold: 20.0\n")
    args = [
        "run",
        str(model),
        f"cam={line_video}",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--max-frames",
        "12",
        "--config",
        str(config),
        "--batch-size",
        "3",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    events = read_events(tmp_path / "out" / "events.jsonl")
    frames = [e for e in events if e["event"] == "frame"]
    assert [e["frame"] for e in frames if e["source"] == "cam"] == list(range(12))
    assert [e["frame"] for e in frames if e["source"] == "imgs"] == [0]
    assert all(
        e["decision"] == "pass" and e["threshold"] == 20.0 for e in frames if e["source"] == "cam"
    )
    assert max(e["batch_size"] for e in frames) <= 3
    assert "frames 13: scored 13" in result.output


@pytest.mark.slow
def test_trained_graph_scores_match_the_runner(tmp_path, tiny_onnx, synthetic_category):
    """The real exported FMABS graph: the stream's scores are the runner's, masked or not."""
    from fmabs_edge.runtime.preprocess import load_image

    pictures = [load_image(p).rgb for p in sorted((synthetic_category / "test").rglob("*.png"))[:8]]
    video = write_video(tmp_path / "v.avi", pictures * 2)
    with VideoFileSource(str(video), "reference") as source:
        decoded = np.stack([frame.rgb for frame in source.frames()])
    left_half = ((0, 0), (31, 0), (31, 63), (0, 63))
    configs = CameraConfigs(cameras={"masked": CameraConfig(ignore_polygons=(left_half,))})
    sources = [VideoFileSource(str(video), "plain"), VideoFileSource(str(video), "masked")]

    with OrtRunner.open(tiny_onnx, intra_op_threads=1) as runner:
        run_stream(
            runner, sources, configs, StreamOptions(jsonl=tmp_path / "e.jsonl", batch_size=4)
        )
        reference = runner.infer(decoded)
        threshold = runner.metadata.threshold

    frames = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    plain = [e for e in frames if e["source"] == "plain"]
    masked = [e for e in frames if e["source"] == "masked"]
    assert len(plain) == len(masked) == len(decoded) == 16
    for i, (p, m) in enumerate(zip(plain, masked)):
        assert p["score_from"] == "graph" and p["image_score"] == pytest.approx(
            reference.image_score[i], rel=1e-4
        )
        assert p["decision"] == ("reject" if reference.image_score[i] > threshold else "pass")
        expected = reference.anomaly_map[i, 0][:, 32:].max()
        assert m["score_from"] == "masked_map" and m["image_score"] == pytest.approx(
            expected, rel=1e-4
        )


@pytest.mark.parametrize("aspect", ["stretch", "pad"])
def test_graph_with_in_graph_resize_gets_camera_size_frames(tmp_path, aspect):
    """A runner taking 48x64 camera frames (resized to S inside) maps defects back correctly."""
    defect = (40, 30, 8, 8)
    frames = [dark_frame(48, 64, 0), with_defect(dark_frame(48, 64, 1), defect)]
    runner = BrightnessRunner(tmp_path / "fake.bin", size=32, input_hw=(48, 64))
    configs = CameraConfigs(default=CameraConfig(aspect=aspect))
    run_stream(
        runner, [ScriptedSource("cam", frames)], configs, StreamOptions(jsonl=tmp_path / "e.jsonl")
    )
    events = [e for e in read_events(tmp_path / "e.jsonl") if e["event"] == "frame"]
    assert [e["decision"] for e in events] == ["pass", "reject"]
    assert any(overlaps(r, defect) for r in events[1]["regions"])
    assert events[1]["score_from"] == ("graph" if aspect == "stretch" else "masked_map")
