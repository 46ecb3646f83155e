"""Every bad input of issue 2 through the CLI: exit code 2, a message naming the file or value and
the fix, and nothing already written lost or half-written."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result
from onnx import TensorProto, helper
from PIL import Image

from fmabs_edge.artefacts import atomic_output, write_metadata
from fmabs_edge.checkpoint import read_checkpoint
from fmabs_edge.cli import main
from fmabs_edge.metadata import ModelConfig, ModelMetadata

SENTINEL = "previous results, must survive a failed command\n"


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _flat(text: str) -> str:
    """Output with all whitespace removed: the log handler wraps long paths across lines."""
    return "".join(text.split())


def _assert_usage_error(result: Result, *named: str | Path) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for item in named:
        assert _flat(str(item)) in _flat(result.stderr), (item, result.stderr)


def _folder_listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def out_with_results(tmp_path: Path) -> Path:
    """An output folder that already holds a results.csv from an earlier run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text(SENTINEL)
    return out


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- data folders ----------------------------------------------------------------------------


def test_nonexistent_data_folder(tmp_path: Path, tiny_onnx: Path, out_with_results: Path) -> None:
    missing = tmp_path / "no_such_folder"
    result = _invoke("train", missing, "--out", tmp_path / "run", "--image-size", "64")
    _assert_usage_error(result, missing)
    assert "not found" in result.stderr and not (tmp_path / "run").exists()

    result = _invoke("run", tiny_onnx, missing, "--out", out_with_results)
    _assert_usage_error(result, missing)
    assert _folder_listing(out_with_results) == {"results.csv": SENTINEL.encode()}

    result = _invoke("eval", tiny_onnx, missing)
    _assert_usage_error(result, missing)


def test_folder_without_images(tmp_path: Path, tiny_onnx: Path, out_with_results: Path) -> None:
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    result = _invoke("train", empty, "--out", tmp_path / "run")
    _assert_usage_error(result, empty)
    assert "No images" in result.stderr and ".png" in result.stderr

    result = _invoke("run", tiny_onnx, empty, "--out", out_with_results)
    _assert_usage_error(result, empty)
    assert _folder_listing(out_with_results) == {"results.csv": SENTINEL.encode()}

    result = _invoke("eval", tiny_onnx, empty)
    _assert_usage_error(result, empty)
    assert "test/" in result.stderr


# -- image files -----------------------------------------------------------------------------


def test_mixed_sizes_and_modes_are_all_scored(tmp_path: Path, tiny_onnx: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = {}
    Image.fromarray(_rgb(120, 90)).save(folder / "rgb.jpg", quality=90)
    sizes["rgb.jpg"] = (90, 120)
    Image.fromarray(_rgb(50, 70)[..., 0], mode="L").save(folder / "gray.png")
    sizes["gray.png"] = (70, 50)
    palette = Image.fromarray(_rgb(40, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png")
    sizes["palette.png"] = (40, 40)
    rgba = np.concatenate([_rgb(64, 100), np.full((64, 100, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    sizes["rgba.png"] = (100, 64)
    assert cv2.imwrite(str(folder / "deep.png"), _rgb(30, 200).astype(np.uint16) * 257)
    sizes["deep.png"] = (200, 30)

    out = tmp_path / "out"
    result = _invoke("run", tiny_onnx, folder, "--out", out, "--batch-size", "2", "--save-maps")
    assert result.exit_code == 0, result.output
    assert "scored 5, skipped 0" in result.output
    with open(out / "results.csv", newline="") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert {name: (int(r["width"]), int(r["height"])) for name, r in rows.items()} == sizes
    assert all(np.isfinite(float(r["image_score"])) for r in rows.values())
    # Each overlay shows the map resized back to its image's own size.
    for name, (width, height) in sizes.items():
        (overlay,) = (out / "maps").glob(f"*_{Path(name).stem}_overlay.png")
        assert cv2.imread(str(overlay)).shape == (height, width, 3), name


def test_corrupt_files_are_reported_skipped_and_counted(tmp_path: Path, tiny_onnx: Path) -> None:
    folder = tmp_path / "dirty"
    folder.mkdir()
    Image.fromarray(_rgb(64, 64, 1)).save(folder / "good_a.png")
    Image.fromarray(_rgb(80, 60, 2)).save(folder / "good_b.jpg", quality=90)
    png = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 3)).save(png, format="PNG")
    (folder / "cut.png").write_bytes(png.getvalue()[: len(png.getvalue()) * 2 // 3])
    jpeg = io.BytesIO()
    Image.fromarray(_rgb(256, 256, 4)).save(jpeg, format="JPEG", quality=90)
    (folder / "cut.jpg").write_bytes(jpeg.getvalue()[: int(len(jpeg.getvalue()) * 0.6)])
    (folder / "text.png").write_text("not an image")
    (folder / "zero.jpg").write_bytes(b"")
    bad = ["cut.png", "cut.jpg", "text.png", "zero.jpg"]

    out = tmp_path / "out"
    result = _invoke("run", tiny_onnx, folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("scored 2, skipped 4, rejected ")
    for name in bad:
        assert _flat(str(folder / name)) in _flat(result.output), name
    with open(out / "results.csv", newline="") as handle:
        scored = sorted(Path(r["file"]).name for r in csv.DictReader(handle))
    assert scored == ["good_a.png", "good_b.jpg"]


# -- model files -----------------------------------------------------------------------------


@pytest.fixture
def foreign_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint's weights, labelled as a resnet18 model: another architecture."""
    payload = read_checkpoint(tiny_checkpoint)
    payload["metadata"]["model"]["backbone"] = "resnet18"
    path = tmp_path / "other_arch.pt"
    torch.save(payload, path)
    return path


def test_checkpoint_of_another_architecture(foreign_checkpoint: Path, tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"an earlier good export")
    result = _invoke("export", foreign_checkpoint, "--out", onnx_path)
    _assert_usage_error(result, foreign_checkpoint)
    assert "architecture" in result.stderr
    assert _folder_listing(tmp_path) == {
        "other_arch.pt": foreign_checkpoint.read_bytes(),
        "model.onnx": b"an earlier good export",
    }

    result = _invoke("run", foreign_checkpoint, tmp_path, "--out", tmp_path / "out")
    _assert_usage_error(result, foreign_checkpoint)
    assert not (tmp_path / "out").exists()


def test_state_dict_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    result = _invoke("export", plain, "--out", tmp_path / "model.onnx")
    _assert_usage_error(result, plain)
    assert "fmabs-edge train" in result.stderr
    assert not (tmp_path / "model.onnx").exists()


def _off_contract_onnx(path: Path) -> Path:
    """A graph with fmabs metadata but a classifier's I/O: float NCHW in, 'output' out."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 64, 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_metadata(model, ModelMetadata(model=ModelConfig(image_size=64)))
    onnx.save(model, str(path))
    return path


def test_onnx_off_the_contract(
    tmp_path: Path, out_with_results: Path, synthetic_category: Path
) -> None:
    model = _off_contract_onnx(tmp_path / "classifier.onnx")
    result = _invoke("run", model, synthetic_category / "test" / "good", "--out", out_with_results)
    _assert_usage_error(result, model)
    for phrase in ("contract", "'images'", "anomaly_map"):
        assert phrase in result.stderr, phrase
    assert "fmabs-edge export" in result.stderr
    assert _folder_listing(out_with_results) == {"results.csv": SENTINEL.encode()}

    result = _invoke("eval", model, synthetic_category)
    _assert_usage_error(result, model)


# -- flag values -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "eval", "train", "threshold"])
def test_batch_size_zero(
    command: str, tiny_onnx: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    args = {
        "run": ["run", tiny_onnx, synthetic_category, "--out", tmp_path / "out"],
        "eval": ["eval", tiny_onnx, synthetic_category],
        "train": ["train", synthetic_category, "--out", tmp_path / "run"],
        "threshold": [
            "threshold", tiny_onnx, "--good", synthetic_category, "--max-false-reject", "1%"
        ],
    }[command]
    result = _invoke(*args, "--batch-size", "0")
    assert result.exit_code == 2, result.output
    assert "--batch-size" in result.output and "0" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_image_size_not_divisible_by_16(synthetic_category: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(b"an earlier model")
    result = _invoke("train", synthetic_category, "--out", run_dir, "--image-size", "72")
    _assert_usage_error(result, "image_size=72")
    assert "multiple of 16" in result.stderr
    assert _folder_listing(run_dir) == {"model.pt": b"an earlier model"}


def test_bad_threshold_rate(tiny_onnx: Path, synthetic_category: Path) -> None:
    result = _invoke(
        "threshold", tiny_onnx, "--good", synthetic_category, "--max-false-reject", "lots"
    )
    _assert_usage_error(result, "lots")


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")
    with pytest.raises(OSError, match="disk full"):
        with atomic_output(target) as temp:
            temp.write_bytes(b"half of a new fi")
            raise OSError("disk full")
    assert _folder_listing(tmp_path) == {"model.onnx": b"good"}
    with atomic_output(target) as temp:
        temp.write_bytes(b"new")
    assert _folder_listing(tmp_path) == {"model.onnx": b"new"}
