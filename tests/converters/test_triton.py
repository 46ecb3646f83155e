"""Triton model repositories, parsed with Triton's own protobuf definitions (tritonclient)."""

from __future__ import annotations

import os

import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from _stream_doubles import write_brightness_onnx  # noqa: E402

from fmabs_edge.artefacts import graph_sha256, read_metadata  # noqa: E402
from fmabs_edge.converters.triton import check_config, export_triton, onnx_io  # noqa: E402
from fmabs_edge.errors import ModelError, UsageError  # noqa: E402
from fmabs_edge.metadata import sha256_file  # noqa: E402
from fmabs_edge.runtime.engine_manifest import (  # noqa: E402
    EngineManifest,
    EngineProfile,
    Platform,
    manifest_path,
    write_manifest,
)

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]"
)
text_format = pytest.importorskip("google.protobuf.text_format")

ONNX_TYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32"}


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def assert_matches_onnx(config, onnx_path: Path) -> None:
    """Every graph input/output is declared with its dtype and its shape without the batch."""
    graph = onnx.load(str(onnx_path)).graph
    for declared, infos in ((config.input, graph.input), (config.output, graph.output)):
        by_name = {t.name: t for t in declared}
        assert set(by_name) == {i.name for i in infos}
        for info in infos:
            entry = by_name[info.name]
            assert (
                model_config_pb2.DataType.Name(entry.data_type)
                == ONNX_TYPES[info.type.tensor_type.elem_type]
            )
            dims = [d.dim_value for d in info.type.tensor_type.shape.dim][1:]
            if dims:
                assert list(entry.dims) == dims
            else:  # the rank-1 score: one dim, reshaped away for the model
                assert (
                    list(entry.dims) == [1]
                    and entry.HasField("reshape")
                    and list(entry.reshape.shape) == []
                )


@pytest.fixture
def onnx_model(tmp_path) -> Path:
    return write_brightness_onnx(tmp_path / "brightness.onnx", size=64, threshold=6.0)


def test_onnx_repository(tmp_path, onnx_model):
    result = export_triton(
        onnx_model, tmp_path / "repo", name="bottle", preferred_batch_sizes=[4, 8]
    )
    model_dir = tmp_path / "repo" / "bottle"
    assert result.model_dir == model_dir
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()

    config = parse(model_dir / "config.pbtxt")
    assert config.name == "bottle" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert_matches_onnx(config, onnx_model)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert (
        float(params["fmabs_edge.threshold"]) == 6.0 == float(params["fmabs_edge.pixel_threshold"])
    )
    assert params["fmabs_edge.min_defect_area"] == "0"
    assert params["fmabs_edge.model_hash"] == graph_sha256(onnx.load(str(onnx_model)))
    assert not config.instance_group  # auto: Triton places it
    assert "parses as Triton's ModelConfig" in " ".join(result.checks)


def test_check_config_finds_mismatches(tmp_path, onnx_model):
    export_triton(onnx_model, tmp_path / "repo", name="m", instance_kind="cpu", threshold=2.5)
    config = parse(tmp_path / "repo" / "m" / "config.pbtxt")
    io = onnx_io(onnx.load(str(onnx_model)), "m")
    assert check_config(config, io) == []
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["fmabs_edge.threshold"].string_value == "2.5"

    config.output[1].ClearField("reshape")
    config.input[0].dims[:] = [1, 64, 64, 3]
    problems = check_config(config, io)
    assert any("reshape" in p for p in problems) and any(
        "dims [1, 64, 64, 3]" in p for p in problems
    )


def test_existing_model_is_replaced_only_when_asked(tmp_path, onnx_model):
    export_triton(onnx_model, tmp_path / "repo", name="m", max_batch_size=4)
    with pytest.raises(UsageError, match="exists"):
        export_triton(onnx_model, tmp_path / "repo", name="m")
    export_triton(onnx_model, tmp_path / "repo", name="m", max_batch_size=2, overwrite=True)
    assert parse(tmp_path / "repo" / "m" / "config.pbtxt").max_batch_size == 2
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]
    with pytest.raises(UsageError, match="1..2"):
        export_triton(
            onnx_model, tmp_path / "repo", name="n", max_batch_size=2, preferred_batch_sizes=[4]
        )


def make_engine(
    tmp_path: Path, onnx_path: Path, min_batch: int = 1, trt_version: str = "10.3.0.30"
) -> Path:
    """A stand-in engine file with the manifest 'fmabs-edge build' writes beside real ones."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real plan" * 64)
    graph = onnx.load(str(onnx_path))
    manifest = EngineManifest(
        engine_file=engine.name,
        engine_sha256=sha256_file(engine),
        engine_nbytes=engine.stat().st_size,
        built_on=Platform(tensorrt_version=trt_version, compute_capability="8.7", gpu_name="Orin"),
        profile=EngineProfile(min_batch, 4, 16, input_hw=(64, 64)),
        precision="fp16",
        onnx_path=str(onnx_path),
        onnx_graph_sha256=graph_sha256(graph),
        metadata=read_metadata(graph, "test").to_dict(),
    )
    write_manifest(manifest, manifest_path(engine))
    return engine


def test_plan_repository_and_its_checks(tmp_path, onnx_model):
    engine = make_engine(tmp_path, onnx_model)
    result = export_triton(
        engine, tmp_path / "repo", name="plan", triton_tensorrt_version="10.3.0.30"
    )
    config = parse(tmp_path / "repo" / "plan" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert (tmp_path / "repo" / "plan" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert_matches_onnx(config, onnx_model)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.parameters["fmabs_edge.tensorrt_version"].string_value == "10.3.0.30"
    assert any("profile covers batch 1..16" in c for c in result.checks)
    assert any("compute capability 8.7" in u for u in result.unchecked)

    with pytest.raises(ModelError, match="TensorRT 10.8"):
        export_triton(engine, tmp_path / "repo", name="p2", triton_tensorrt_version="10.8.0.43")
    with pytest.raises(UsageError, match="above the engine profile"):
        export_triton(engine, tmp_path / "repo", name="p3", max_batch_size=32)
    unchecked = export_triton(engine, tmp_path / "repo", name="p4").unchecked
    assert any("must ship this exact version" in u for u in unchecked)


def test_plan_profile_must_start_at_one_and_file_must_match(tmp_path, onnx_model):
    engine = make_engine(tmp_path, onnx_model, min_batch=2)
    with pytest.raises(ModelError, match="starts at batch 2"):
        export_triton(engine, tmp_path / "repo")
    engine = make_engine(tmp_path, onnx_model)
    engine.write_bytes(engine.read_bytes()[:-10])
    with pytest.raises(ModelError, match="not the engine its manifest describes"):
        export_triton(engine, tmp_path / "repo")
    assert not (tmp_path / "repo" / "model").exists()


def test_cli_export_triton(tmp_path, onnx_model):
    from fmabs_edge.cli import main

    result = CliRunner().invoke(
        main,
        [
            "export-triton",
            str(onnx_model),
            "--out",
            str(tmp_path / "repo"),
            "--name",
            "cli",
            "--preferred-batch-size",
            "2",
            "--max-batch-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    config = parse(tmp_path / "repo" / "cli" / "config.pbtxt")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2]


@pytest.mark.slow
def test_trained_model_repository(tmp_path, tiny_onnx):
    """The real exported FMABS graph (the lead's tiny model) passes the same config test."""
    export_triton(tiny_onnx, tmp_path / "repo", name="tiny")
    config = parse(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert_matches_onnx(config, tiny_onnx)
    assert check_config(config, onnx_io(onnx.load(str(tiny_onnx)), "tiny")) == []


#: The trained bottle model (benchmarks/reproduce_accuracy.py writes it); FMABS_BOTTLE_ONNX overrides.
BOTTLE_ONNX = Path(
    os.environ.get("FMABS_BOTTLE_ONNX", Path(__file__).resolve().parents[2] / "runs" / "mvtec_bottle" / "model.onnx")
)


@pytest.mark.data
@pytest.mark.skipif(not BOTTLE_ONNX.is_file(), reason=f"needs the trained bottle model at {BOTTLE_ONNX}")
def test_bottle_model_repository(tmp_path):
    """The bottle model (README: runs/bottle/model.onnx) passes the same config test."""
    export_triton(BOTTLE_ONNX, tmp_path / "repo", name="bottle")
    config = parse(tmp_path / "repo" / "bottle" / "config.pbtxt")
    assert_matches_onnx(config, BOTTLE_ONNX)
    assert check_config(config, onnx_io(onnx.load(str(BOTTLE_ONNX)), "bottle")) == []
