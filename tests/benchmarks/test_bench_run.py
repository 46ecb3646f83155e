"""run_benchmark and the ``benchmark`` command on tiny ONNX graphs made in the test (ORT, CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from bench_graphs import make_brightness_onnx
from onnx import TensorProto, helper

from fmabs_edge.benchmarks.reference import ExternalOnnx, count_macs, measure_gemm_peak
from fmabs_edge.benchmarks.run import parse_variant, run_benchmark
from fmabs_edge.cli import main
from fmabs_edge.errors import ModelError, UsageError


def _external_onnx(path, batch: int | str = 1):
    """A foreign graph (NCHW float input 'input', Conv 3->8 3x3 and a MatMul), not our contract."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [8, 3, 3, 3], rng.random(216).astype(np.float32).tolist()
    )
    project = helper.make_tensor(
        "p", TensorProto.FLOAT, [16, 4], rng.random(64).astype(np.float32).tolist()
    )
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["features", "p"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 8, 16, 4])],
        initializer=[weight, project],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_mac_count_of_conv_and_matmul(tmp_path):
    counted = count_macs(_external_onnx(tmp_path / "ext.onnx"))
    conv = 8 * 16 * 16 * 3 * 3 * 3  # |out| * C_in * kH * kW
    matmul = 8 * 16 * 4 * 16  # |out| * K
    assert counted.by_op == {"Conv": conv, "MatMul": matmul}
    assert counted.macs_per_image == conv + matmul
    assert counted.gflop_per_image == pytest.approx(2 * (conv + matmul) / 1e9)


def test_mac_count_of_transposed_conv_and_gemm(tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 2, 2], [0.1] * 32)
    gemm_w = helper.make_tensor("g", TensorProto.FLOAT, [6, 128], [0.1] * 768)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["up"], strides=[2, 2]),
        helper.make_node("Flatten", ["up"], ["flat"]),
        helper.make_node("Gemm", ["flat", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        initializer=[weight, gemm_w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    counted = count_macs(model, batch_size=2)
    assert counted.by_op == {"ConvTranspose": 4 * 4 * 4 * 2 * 2 * 2, "Gemm": 6 * 128}


def test_mac_count_of_our_contract_graph(brightness_onnx):
    assert count_macs(brightness_onnx).macs_per_image == 32 * 32 * 3


def test_gemm_peak_is_reported_in_gflop_per_second():
    peak = measure_gemm_peak(seconds=0.05, size=64)
    assert peak["gemm_peak_gflop_per_s"] > 0 and peak["gemm_runs"] >= 3


def test_external_onnx_takes_its_own_input_and_fixed_batch(tmp_path):
    external = ExternalOnnx(_external_onnx(tmp_path / "ext.onnx", batch=1))
    assert external.example_input(1).shape == (1, 3, 16, 16)
    assert external.example_input(1).dtype == np.float32
    assert external.infer(external.example_input(1))[0].shape == (1, 8, 16, 4)
    with pytest.raises(UsageError, match="fixed batch"):
        external.example_input(4)
    dynamic = ExternalOnnx(_external_onnx(tmp_path / "dyn.onnx", batch="N"))
    assert dynamic.example_input(4).shape == (4, 3, 16, 16)


def test_variant_parsing_and_backend_rules(brightness_onnx, tmp_path):
    assert parse_variant(brightness_onnx).backend == "ort"
    spec = parse_variant(f"small={brightness_onnx}", backend="trt")
    assert (spec.name, spec.backend) == ("small", "trt")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    assert parse_variant(checkpoint, backend="ort").backend == "torch"
    with pytest.raises(UsageError, match="checkpoints"):
        parse_variant(brightness_onnx, backend="torch")
    with pytest.raises(UsageError, match="not found"):
        parse_variant(tmp_path / "missing.onnx")


def test_ort_variants_reference_and_profile_in_one_run(tmp_path, bright_category, brightness_onnx):
    int8_like = make_brightness_onnx(tmp_path / "model_int8.onnx", precision="int8")
    result = run_benchmark(
        [brightness_onnx, int8_like],
        bright_category,
        batch_sizes=(1, 2),
        warmup=1,
        iterations=3,
        out_dir=tmp_path / "out",
        reference=_external_onnx(tmp_path / "ext.onnx"),
        gemm_seconds=0.05,
        profile=True,
        progress=False,
    )
    records = {(r["variant"], r["batch_size"]): r for r in result.records}
    assert set(records) == {
        ("brightness", 1),
        ("model_int8", 1),
        ("ext (external)", 1),
        ("brightness", 2),
        ("model_int8", 2),
    }
    ours = records[("brightness", 1)]
    assert ours["image_auroc"] == pytest.approx(1.0)
    assert ours["gflop_per_image"] == pytest.approx(2 * 32 * 32 * 3 / 1e9)
    assert ours["gemm_peak_gflop_per_s"] > 0 and ours["gemm_peak_fraction"] > 0
    assert ours["decode_ms_p50"] > 0 and ours["artefact_mb"] > 0
    assert records[("model_int8", 1)]["decision_agreement"] == pytest.approx(1.0)
    external = records[("ext (external)", 1)]
    assert external["latency_ms_p50"] is None and external["infer_ms_p50"] > 0
    assert external.get("image_auroc") is None
    text = result.files["report"].read_text()
    assert "ONNX Runtime profiler" in text and "Conv" in text
    assert "ORT INT8 vs FP32" in text


def test_plain_folder_gives_timing_only_and_skips_corrupt_files(
    tmp_path, bright_category, brightness_onnx
):
    folder = tmp_path / "plain"
    shutil.copytree(bright_category / "test" / "spot", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    result = run_benchmark(
        [brightness_onnx],
        folder,
        batch_sizes=(1,),
        warmup=0,
        iterations=2,
        out_dir=tmp_path / "out",
        gemm_seconds=0,
        progress=False,
    )
    record = result.records[0]
    assert record["n_skipped"] == 1
    assert record.get("image_auroc") is None and record["infer_ms_p50"] > 0


def test_nothing_to_benchmark_is_an_error(tmp_path, bright_category):
    with pytest.raises(UsageError, match="Nothing to benchmark"):
        run_benchmark([], bright_category, out_dir=tmp_path)


def test_cli_benchmark_in_process(tmp_path, bright_category, brightness_onnx):
    out = tmp_path / "cli_out"
    result = CliRunner().invoke(
        main,
        [
            "benchmark",
            f"small={brightness_onnx}",
            "--data",
            str(bright_category),
            "--batch-sizes",
            "1,2",
            "--warmup",
            "1",
            "--iterations",
            "2",
            "--out",
            str(out),
            "--accuracy-axis",
            "aupro",
            "--gemm-seconds",
            "0",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    data = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in data] == ["small", "small"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "1,x"], "positive integers"),
        (["--batch-sizes", "0"], "positive integers"),
        (["--iterations", "0"], "at least 1"),
    ],
)
def test_cli_bad_flags_exit_2(tmp_path, bright_category, brightness_onnx, args, message):
    result = CliRunner().invoke(
        main,
        [
            "benchmark",
            str(brightness_onnx),
            "--data",
            str(bright_category),
            "--out",
            str(tmp_path / "o"),
            *args,
        ],
    )
    assert result.exit_code == 2 and message in result.output


def test_cli_without_variants_exits_2(tmp_path, bright_category):
    result = CliRunner().invoke(
        main, ["benchmark", "--data", str(bright_category), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "Nothing to benchmark" in result.output


def test_every_benchmark_option_has_help():
    from fmabs_edge.cli_benchmark import benchmark

    for param in benchmark.params:
        if param.param_type_name == "option":
            assert param.help, f"--{param.name} has no help text"


def test_count_macs_refuses_dynamic_non_batch_dims(tmp_path):
    path = tmp_path / "dyn.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelError, match="dynamic dimension"):
        count_macs(path)
    assert count_macs(path, input_shape=(1, 4)).macs_per_image == 0
