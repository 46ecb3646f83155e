"""In-graph input resize (``export --input-size``): surgery, TensorRT's uint8 rule, metadata, gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fmabs_edge.artefacts import check_contract, input_hw, load_onnx, read_metadata
from fmabs_edge.cli import main
from fmabs_edge.converters.input_resize import add_input_resize, gate_input_resize, parse_input_size
from fmabs_edge.converters.tensorrt_build import build_engine
from fmabs_edge.errors import GateError, ModelError, UsageError
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.runtime.trt_runner import TrtRunner


def test_parse_input_size() -> None:
    assert parse_input_size("1920x1080") == (1920, 1080)
    assert parse_input_size(" 640 X 480 ") == (640, 480)
    for bad in ("1920", "0x10", "axb", "1920x1080x3"):
        with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
            parse_input_size(bad)


def test_resize_is_prepended_with_a_cast_first(contract_onnx, tmp_path: Path) -> None:
    source = contract_onnx(size=16)
    report = add_input_resize(source, tmp_path / "camera.onnx", width=40, height=30)
    model = load_onnx(tmp_path / "camera.onnx")
    assert input_hw(model) == (30, 40)
    check_contract(model, "camera.onnx", 16)
    consumers = [n for n in model.graph.node if "images" in n.input]
    assert [(n.op_type, n.name) for n in consumers] == [("Cast", "fmabs.resize/cast")]
    assert any(n.op_type == "Resize" for n in model.graph.node)
    conversion = read_metadata(model, "camera.onnx").conversion["input_resize"]
    assert conversion["input_hw"] == [30, 40] and conversion["model_size"] == 16
    assert conversion["gate"] == {"status": "not run"}
    assert report["parity_max_map_diff"] <= 1.0 / 255.0 + 1e-6  # one grey level of rounding


def test_uniform_frames_score_as_in_the_original(contract_onnx, tmp_path: Path) -> None:
    source = contract_onnx(size=16)
    add_input_resize(source, tmp_path / "camera.onnx", width=48, height=36)
    camera = np.full((2, 36, 48, 3), 97, dtype=np.uint8)
    small = np.full((2, 16, 16, 3), 97, dtype=np.uint8)
    with OrtRunner.open(tmp_path / "camera.onnx") as variant, OrtRunner.open(source) as original:
        assert variant.input_hw == (36, 48)
        np.testing.assert_array_equal(
            variant.infer(camera).anomaly_map, original.infer(small).anomaly_map
        )


def test_resized_graph_passes_the_stand_in_parser_and_runs(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    camera_onnx = tmp_path / "camera.onnx"
    add_input_resize(contract_onnx(size=16), camera_onnx, width=40, height=30)
    engine = tmp_path / "camera.engine"
    manifest = build_engine(camera_onnx, engine, max_batch=2, cuda=fake_cuda)
    assert manifest.profile.input_hw == (30, 40)
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 30, 40, 3), dtype=np.uint8)
    with TrtRunner.open(engine, cuda=fake_cuda) as runner, OrtRunner.open(camera_onnx) as reference:
        assert runner.input_hw == (30, 40) and runner.image_size == 16
        np.testing.assert_array_equal(
            runner.infer(frames).image_score, reference.infer(frames).image_score
        )


def test_a_resized_graph_is_not_resized_again(contract_onnx, tmp_path: Path) -> None:
    add_input_resize(contract_onnx(), tmp_path / "camera.onnx", width=40, height=30)
    with pytest.raises(ModelError, match="already takes"):
        add_input_resize(tmp_path / "camera.onnx", tmp_path / "twice.onnx", width=80, height=60)


def test_gate_compares_eval_metrics_and_records_the_result(
    contract_onnx, synthetic_category, tmp_path
) -> None:
    source = contract_onnx(size=32)
    camera = tmp_path / "camera.onnx"
    add_input_resize(source, camera, width=96, height=72)
    result = gate_input_resize(camera, source, synthetic_category, max_drop=1.0)
    assert result["status"] == "passed" and set(result["drops"]) == {
        "image_auroc",
        "pixel_auroc",
        "aupro",
    }
    stored = read_metadata(load_onnx(camera), "camera").conversion["input_resize"]["gate"]
    assert stored["status"] == "passed" and stored["n_images"] == result["n_images"] > 0

    before = onnx.load(str(camera)).graph.SerializeToString()
    with pytest.raises(GateError, match="loses accuracy"):
        gate_input_resize(camera, source, synthetic_category, max_drop=-1.0)
    assert (
        read_metadata(load_onnx(camera), "camera").conversion["input_resize"]["gate"]["status"]
        == "failed"
    )
    assert onnx.load(str(camera)).graph.SerializeToString() == before  # kept, graph untouched


def test_export_input_size_flag_resizes_the_exported_file(
    contract_onnx, monkeypatch, tmp_path
) -> None:
    from fmabs_edge.converters import export as export_module

    source = contract_onnx(size=16)

    def fake_export(
        checkpoint, out_path, check=True
    ):  # the real export is tested with the lead's model
        Path(out_path).write_bytes(source.read_bytes())
        return {"onnx": str(out_path)}

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(
        main, ["-q", "export", "ckpt.pt", "--out", str(out), "--input-size", "64x48"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["input_resize"]["input_hw"] == [48, 64]
    assert input_hw(load_onnx(out)) == (48, 64)
    bad = CliRunner().invoke(main, ["export", "ckpt.pt", "--out", str(out), "--input-size", "wide"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
