"""benchmarks/cuda_check.py and benchmarks/gpu_check.py on this CPU machine.

``gpu_check`` runs its full TensorRT path here against the stand-in TensorRT and the host-memory
CUDA double (which proves the script's plumbing, not an engine); both scripts refuse or dry-run
as documented without TensorRT.
"""

from __future__ import annotations

import json
import sys

import pytest

from fmabs_edge.benchmarks import cuda_check, gpu_check

from trt_fake_cuda import HostMemoryCuda


def test_gpu_check_full_path_on_the_stand_in(
    standin_trt, contract_onnx, synthetic_category, tmp_path
) -> None:
    onnx_path = contract_onnx(size=32)
    args = gpu_check.parse_args(
        [
            "--onnx",
            str(onnx_path),
            "--data",
            str(synthetic_category),
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--work",
            str(tmp_path / "work"),
        ]
    )
    args.cuda = HostMemoryCuda(events=standin_trt._state.calls)
    report = gpu_check.run(args)
    fp32 = report["engines"]["fp32"]
    assert fp32["status"] == "passed", fp32
    assert fp32["parity"]["n_images"] == report["model"]["n_images"] > 0
    assert (
        fp32["parity"]["max_abs_score_diff"] == 0.0
    )  # the stand-in runs the same graph with ONNX Runtime
    assert sorted(record["batch_size"] for record in fp32["timing"]) == [1, 8]
    assert report["tensorrt_version"] == standin_trt.__version__
    for precision in ("fp16", "int8"):  # made by the precision converter, or reported as not run
        assert report["engines"][precision]["status"] in ("passed", "FAILED", "not run")
    json.dumps(report, default=str)


def test_gpu_check_refuses_without_tensorrt(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert gpu_check.main(["--work", "unused"]) == 2
    error = capsys.readouterr().err
    assert "fmabs-edge[trt]" in error and "--system-site-packages" in error


def test_cuda_check_refuses_without_a_gpu(tmp_path, capsys) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real check runs instead (see the README)")
    code = cuda_check.main(
        ["--checkpoint", str(tmp_path / "never_read.pt"), "--work", str(tmp_path)]
    )
    assert code == 2 and "--dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_cuda_check_dry_run_exports_and_scores_with_onnx_runtime(
    tiny_checkpoint, tmp_path, capsys
) -> None:
    assert (
        cuda_check.main(
            ["--dry-run", "--checkpoint", str(tiny_checkpoint), "--work", str(tmp_path)]
        )
        == 0
    )
    report = json.loads((tmp_path / "cuda_check_dry_run.json").read_text())
    assert report["passed"] and report["checks"] == {"ort_reference_finite": True}
    assert len(report["ort_reference"]["scores"]) == report["model"]["n_images"] == 15


def test_slug_names_result_files() -> None:
    assert cuda_check.slug("NVIDIA H200") == "nvidia_h200"
    assert (
        cuda_check.slug("NVIDIA Jetson Orin Nano Developer Kit")
        == "nvidia_jetson_orin_nano_developer_kit"
    )
    assert cuda_check.slug("") == "unknown_gpu"
