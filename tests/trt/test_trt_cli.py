"""``fmabs-edge build`` and ``--backend trt`` from the command line (CPU only).

In process with click's runner (stand-in TensorRT or TensorRT made unimportable) and once through
the installed entry point, where TensorRT is really absent on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmabs_edge.cli import main
from fmabs_edge.cli_trt import build_command

from trt_fake_cuda import HostMemoryCuda


def test_every_build_flag_has_help_text() -> None:
    options = [p for p in build_command.params if p.param_type_name == "option"]
    assert {opt for p in options for opt in p.opts} >= {
        "--out",
        "--min-batch",
        "--opt-batch",
        "--max-batch",
        "--workspace-mb",
        "--timing-cache",
        "--builder-optimization-level",
        "--hardware-compatibility",
        "--version-compatible",
        "--rebuild-if-stale",
    }
    assert all(p.help and len(p.help) > 20 for p in options), [
        p.name for p in options if not p.help
    ]
    text = CliRunner().invoke(main, ["build", "--help"]).output
    for flag in (
        "--min-batch",
        "--timing-cache",
        "--no-hardware-compatibility",
        "--rebuild-if-stale",
    ):
        assert flag in text


def _missing_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def _assert_missing_extra(result) -> None:
    assert result.exit_code == 2, result.output
    assert "fmabs-edge[trt]" in result.output
    assert "--system-site-packages" in result.output and "Jetson" in result.output


def test_build_without_tensorrt_exits_2_naming_the_extra(
    monkeypatch, contract_onnx, tmp_path
) -> None:
    _missing_tensorrt(monkeypatch)
    result = CliRunner().invoke(
        main, ["build", str(contract_onnx()), "--out", str(tmp_path / "m.engine")]
    )
    _assert_missing_extra(result)
    assert not (tmp_path / "m.engine").exists()


def test_run_with_backend_trt_without_tensorrt_exits_2(
    monkeypatch, contract_onnx, tmp_path
) -> None:
    _missing_tensorrt(monkeypatch)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(contract_onnx()),
            str(image_dir),
            "--out",
            str(tmp_path / "out"),
            "--backend",
            "trt",
        ],
    )
    _assert_missing_extra(result)


def test_bad_profile_is_a_usage_error(contract_onnx, tmp_path) -> None:
    result = CliRunner().invoke(
        main,
        ["build", str(contract_onnx()), "--out", str(tmp_path / "m.engine"), "--min-batch", "0"],
    )
    assert result.exit_code == 2 and "must be at least 1" in result.output


def test_build_with_stand_in_prints_the_summary(
    standin_trt, monkeypatch, contract_onnx, tmp_path
) -> None:
    from fmabs_edge.converters import tensorrt_build

    monkeypatch.setattr(tensorrt_build, "open_cuda", lambda cuda, device: HostMemoryCuda())
    engine = tmp_path / "m.engine"
    result = CliRunner().invoke(
        main,
        [
            "-q",
            "build",
            str(contract_onnx()),
            "--out",
            str(engine),
            "--max-batch",
            "4",
            "--version-compatible",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["profile"] == "1/4/4" and summary["tensorrt"] == standin_trt.__version__
    assert ("set_flag", "VERSION_COMPATIBLE") in standin_trt._state.calls


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_installed_entry_point_exits_2_without_tensorrt(contract_onnx, tmp_path) -> None:
    executable = shutil.which("fmabs-edge", path=str(Path(sys.executable).parent))
    assert executable, "the fmabs-edge entry point is not installed in this environment"
    process = subprocess.run(
        [executable, "build", str(contract_onnx()), "--out", str(tmp_path / "m.engine")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert "fmabs-edge[trt]" in process.stderr and "--system-site-packages" in process.stderr
