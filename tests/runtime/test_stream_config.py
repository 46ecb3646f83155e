"""Per-camera configuration files and the frame <-> model geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fmabs_edge.errors import DataError, UsageError
from fmabs_edge.metadata import ScoringConfig
from fmabs_edge.runtime.camera_config import CameraConfig, CameraView, load_camera_configs
from fmabs_edge.runtime.stream import reduce_map

YAML = """
default:
  aspect: pad
  min_defect_area: 5
cameras:
  left:
    roi: [10, 20, 60, 40]
    ignore:
      mask: masks/left.png
      polygons:
        - [[0, 0], [5, 0], [5, 5]]
    image_threshold: 2.5
  right:
    aspect: stretch
"""

TOML = """
[default]
pixel_threshold = 1.5

[cameras.top]
roi = { x = 0, y = 0, width = 32, height = 16 }
"""


def test_yaml_file_with_default_and_cameras(tmp_path):
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "left.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "line.yaml").write_text(YAML)
    configs = load_camera_configs(tmp_path / "line.yaml")
    left, right = configs.for_source("left"), configs.for_source("right")
    assert (
        left.roi == (10, 20, 60, 40) and left.image_threshold == 2.5 and left.min_defect_area == 5
    )
    assert left.ignore_mask == tmp_path / "masks" / "left.png" and len(left.ignore_polygons) == 1
    assert right.aspect == "stretch" and right.min_defect_area == 5 and right.roi is None
    assert configs.for_source("unknown") == configs.default
    assert configs.warn_unused(["left"]) == ["right"]


def test_toml_file_and_flat_file(tmp_path):
    (tmp_path / "line.toml").write_text(TOML)
    configs = load_camera_configs(tmp_path / "line.toml")
    assert (
        configs.for_source("top").roi == (0, 0, 32, 16)
        and configs.for_source("top").pixel_threshold == 1.5
    )
    (tmp_path / "flat.yml").write_text("image_threshold: 3\n")
    assert load_camera_configs(tmp_path / "flat.yml").for_source("any").image_threshold == 3.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("colour: red\n", "unknown key"),
        ("roi: [1, 2, 3]\n", "roi must be"),
        ("aspect: crop\n", "aspect 'crop' unknown"),
        ("ignore: {mask: nowhere.png}\n", "not found"),
        ("ignore: {polygons: [[[0, 0], [1, 1]]]}\n", "at least 3 points"),
        ("min_defect_area: -1\n", "min_defect_area"),
        ("cameras: {a: {roi: [0, 0, 0, 5]}}\n", "width, height > 0"),
        ("- 1\n- 2\n", "top level must be a mapping"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UsageError, match=message):
        load_camera_configs(tmp_path / "c.yaml")


def test_pad_keeps_the_whole_part_and_maps_back():
    view = CameraView(CameraConfig(roi=(8, 4, 40, 20)), "cam")
    geometry = view.geometry((30, 60))
    assert geometry.roi == (8, 4, 40, 20) and geometry.padding == (10, 10, 0, 0)
    frame = np.zeros((30, 60, 3), np.uint8)
    frame[4:24, 8:48] = 200  # exactly the ROI
    model_input = geometry.to_model(frame, (20, 20))
    assert model_input.shape == (20, 20, 3)
    assert (
        model_input[:5].max() == 0
        and model_input[15:].max() == 0
        and model_input[5:15].min() == 200
    )

    anomaly = np.zeros((20, 20), np.float32)
    anomaly[8:12, 14:18] = (
        5.0  # model pixels -> ROI x 28..36, y 6..14 (scale 2, 10 px of padding on top)
    )
    roi_map = geometry.map_to_roi(anomaly)
    assert roi_map.shape == (20, 40)
    ys, xs = np.nonzero(roi_map > 2.5)
    assert 5 <= ys.min() and ys.max() <= 14 and 27 <= xs.min() and xs.max() <= 36


def test_stretch_and_clipped_roi():
    geometry = CameraView(CameraConfig(roi=(50, 0, 100, 10), aspect="stretch"), "cam").geometry(
        (20, 80)
    )
    assert geometry.roi == (50, 0, 30, 10) and geometry.padding == (0, 0, 0, 0)
    with pytest.raises(DataError, match="outside"):
        CameraView(CameraConfig(roi=(90, 0, 5, 5)), "cam").geometry((20, 80))
    assert CameraView(CameraConfig(aspect="stretch"), "cam").geometry((20, 80)).is_identity
    assert not CameraView(CameraConfig(), "cam").geometry((20, 80)).is_identity


def test_ignore_mask_file_and_polygons(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[:, 25:] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    config = CameraConfig(
        ignore_mask=tmp_path / "m.png", ignore_polygons=(((0, 0), (9, 0), (9, 9), (0, 9)),)
    )
    valid = CameraView(config, "cam").geometry((20, 30)).valid
    assert not valid[:, 25:].any() and not valid[:10, :10].any() and valid[15, 15]
    with pytest.raises(DataError, match="frames are 40x20"):
        CameraView(config, "cam").geometry((20, 40))


def test_reduce_map_matches_the_graph_reductions():
    values = np.arange(1000, dtype=np.float32)
    assert reduce_map(values, ScoringConfig(reduction="max")) == 999.0
    topk = ScoringConfig(reduction="topk_mean", topk_fraction=0.01)
    assert reduce_map(values, topk) == pytest.approx(np.mean(np.arange(990, 1000)))
    values[3] = np.nan
    assert np.isnan(reduce_map(values, topk))
