"""The build path against stand-in TensorRT 10.3 and 11.x modules (CPU only).

Stand-ins prove that the code uses only names each version has, numbers enums by name and
handles TensorRT's failure conventions; they do not prove that TensorRT builds this graph.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import onnx
import pytest
from onnx import helper

from fmabs_edge.artefacts import graph_sha256, load_onnx
from fmabs_edge.converters.tensorrt_build import build_engine
from fmabs_edge.errors import MissingExtraError, ModelError, UsageError
from fmabs_edge.runtime.engine_manifest import manifest_path, read_manifest
from fmabs_edge.runtime.trt_runner import import_tensorrt

import trt_standin
import trt_surfaces
from trt_fake_cuda import HostMemoryCuda


def _calls(module, name: str) -> list[tuple]:
    return [call for call in module._state.calls if call[0] == name]


def test_build_writes_engine_and_manifest(
    standin_trt, fake_cuda, contract_onnx, tmp_path: Path
) -> None:
    onnx_path = contract_onnx()
    engine = tmp_path / "out" / "model.engine"
    manifest = build_engine(onnx_path, engine, cuda=fake_cuda)

    assert engine.is_file() and manifest_path(engine).is_file()
    assert read_manifest(engine) == manifest
    assert manifest.built_on.tensorrt_version == standin_trt.__version__
    assert (manifest.built_on.compute_capability, manifest.built_on.gpu_name) == (
        "8.7",
        "Stand-in Orin",
    )
    assert (manifest.profile.min_batch, manifest.profile.opt_batch, manifest.profile.max_batch) == (
        1,
        8,
        8,
    )
    assert manifest.profile.input_hw == (16, 16)
    assert manifest.onnx_graph_sha256 == graph_sha256(load_onnx(onnx_path))
    assert manifest.metadata["threshold"] == 0.5
    assert manifest.precision == "fp32" and manifest.tf32 is False
    assert manifest.engine_nbytes == engine.stat().st_size


def test_network_is_strongly_typed_by_member_not_by_number(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    build_engine(contract_onnx(), tmp_path / "m.engine", cuda=fake_cuda)
    (call,) = _calls(standin_trt, "create_network")
    # 10.x and 11.x differ: STRONGLY_TYPED is bit 1 in 10.x, bit 0 in 11.x.
    expected_mask = (
        1
        << trt_surfaces.ENUMS[standin_trt._state.version]["NetworkDefinitionCreationFlag"][
            "STRONGLY_TYPED"
        ]
    )
    assert call[1] == expected_mask and call[2] == ["STRONGLY_TYPED"]
    assert {c[1] for c in _calls(standin_trt, "set_flag")}.isdisjoint(
        {"FP16", "INT8", "BF16", "FP8", "INT4"}
    )
    assert ("clear_flag", "TF32") in standin_trt._state.calls  # FP32 parity build


def test_fp16_graph_keeps_tensorrt_default_tf32(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    manifest = build_engine(contract_onnx(precision="fp16"), tmp_path / "m.engine", cuda=fake_cuda)
    assert _calls(standin_trt, "clear_flag") == []
    assert manifest.tf32 is True


def test_options_reach_the_builder_config(standin_trt, fake_cuda, contract_onnx, tmp_path) -> None:
    manifest = build_engine(
        contract_onnx(),
        tmp_path / "m.engine",
        min_batch=1,
        opt_batch=2,
        max_batch=4,
        workspace_mb=256,
        builder_optimization_level=5,
        cuda=fake_cuda,
    )
    calls = standin_trt._state.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 256 << 20) in calls
    assert ("builder_optimization_level", 5) in calls
    assert (manifest.workspace_mb, manifest.builder_optimization_level) == (256, 5)
    assert (manifest.profile.opt_batch, manifest.profile.max_batch) == (2, 4)


def test_compatibility_switches_are_set_by_name(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    manifest = build_engine(
        contract_onnx(),
        tmp_path / "m.engine",
        hardware_compatibility=True,
        version_compatible=True,
        cuda=fake_cuda,
    )
    assert ("hardware_compatibility_level", "AMPERE_PLUS") in standin_trt._state.calls
    assert ("set_flag", "VERSION_COMPATIBLE") in standin_trt._state.calls
    assert manifest.hardware_compatibility == "AMPERE_PLUS" and manifest.version_compatible


def test_hardware_compatibility_needs_an_ampere_build_gpu(
    standin_trt, contract_onnx, tmp_path
) -> None:
    turing = HostMemoryCuda(events=standin_trt._state.calls, compute_capability=(7, 5))
    with pytest.raises(UsageError, match="Ampere or newer"):
        build_engine(
            contract_onnx(), tmp_path / "m.engine", hardware_compatibility=True, cuda=turing
        )
    assert not (tmp_path / "m.engine").exists()


def test_parser_errors_name_the_node(standin_trt, fake_cuda, contract_onnx, tmp_path) -> None:
    bad = helper.make_node(
        "FancyOp", ["anomaly_map"], ["unused"], name="fmabs.scoring/fancy", domain="x.custom"
    )
    onnx_path = contract_onnx(extra_node=bad)
    with pytest.raises(
        ModelError, match=r"node 'fmabs.scoring/fancy' \(FancyOp\).*UNSUPPORTED_NODE"
    ):
        build_engine(onnx_path, tmp_path / "m.engine", cuda=fake_cuda)


def test_uint8_tensor_feeding_anything_but_a_cast_is_reported(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    bad = helper.make_node("Identity", ["images"], ["copy"], name="fmabs.pre/identity")
    with pytest.raises(ModelError, match=r"node 'fmabs.pre/identity' \(Identity\)"):
        build_engine(contract_onnx(extra_node=bad), tmp_path / "m.engine", cuda=fake_cuda)


def test_failed_build_carries_the_log_and_keeps_the_old_engine(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    onnx_path, engine = contract_onnx(), tmp_path / "m.engine"
    build_engine(onnx_path, engine, cuda=fake_cuda)
    good_engine, good_manifest = engine.read_bytes(), manifest_path(engine).read_text()

    standin_trt._state.fail_build_with = (
        "Internal Error: out of memory while timing fmabs.features/teacher"
    )
    with pytest.raises(
        ModelError, match="out of memory while timing fmabs.features/teacher"
    ) as caught:
        build_engine(onnx_path, engine, max_batch=16, cuda=fake_cuda)
    assert "--workspace-mb" in str(caught.value)
    assert engine.read_bytes() == good_engine
    assert manifest_path(engine).read_text() == good_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.engine", "m.engine.json", "model.onnx"]
    )


def test_timing_cache_is_loaded_and_saved(standin_trt, fake_cuda, contract_onnx, tmp_path) -> None:
    cache = tmp_path / "timing.cache"
    build_engine(contract_onnx(), tmp_path / "a.engine", timing_cache=cache, cuda=fake_cuda)
    first = cache.read_bytes()
    assert first.endswith(b"|timed")

    build_engine(contract_onnx(), tmp_path / "b.engine", timing_cache=cache, cuda=fake_cuda)
    loaded = _calls(standin_trt, "set_timing_cache")
    assert loaded[0][1] == b"" and loaded[1][1] == first[:16]
    assert all(call[2] is False for call in loaded)


def test_timing_cache_from_another_device_is_replaced(
    standin_trt, fake_cuda, contract_onnx, tmp_path, caplog
) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OTHER-DEVICE cache")
    with caplog.at_level(logging.WARNING):
        build_engine(contract_onnx(), tmp_path / "m.engine", timing_cache=cache, cuda=fake_cuda)
    assert "another device" in caplog.text
    assert not cache.read_bytes().startswith(b"OTHER-DEVICE")


def test_rebuild_if_stale_keeps_an_up_to_date_engine(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    onnx_path, engine = contract_onnx(), tmp_path / "m.engine"
    build_engine(onnx_path, engine, cuda=fake_cuda)
    build_engine(onnx_path, engine, rebuild_if_stale=True, cuda=fake_cuda)
    assert len(_calls(standin_trt, "build_serialized_network")) == 1

    build_engine(
        onnx_path, engine, max_batch=4, rebuild_if_stale=True, cuda=fake_cuda
    )  # other options
    assert len(_calls(standin_trt, "build_serialized_network")) == 2
    contract_onnx(onnx_path.name, size=24)  # the graph changed
    manifest = build_engine(onnx_path, engine, max_batch=4, rebuild_if_stale=True, cuda=fake_cuda)
    assert len(_calls(standin_trt, "build_serialized_network")) == 3
    assert manifest.profile.input_hw == (24, 24)


def test_tensorrt_8_6_is_refused_naming_jetpack_6_0(monkeypatch: pytest.MonkeyPatch) -> None:
    old = trt_standin.make_tensorrt("10.3")
    old.__version__ = "8.6.2.3"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(
        MissingExtraError, match=r"TensorRT 8.6.2.3 is too old.*JetPack 6.0.*JetPack 6.1"
    ):
        import_tensorrt()


def test_missing_tensorrt_names_the_extra_and_jetson_setup(
    monkeypatch, contract_onnx, tmp_path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(MissingExtraError) as caught:
        build_engine(contract_onnx(), tmp_path / "m.engine")
    message = str(caught.value)
    assert "pip install 'fmabs-edge[trt]'" in message
    assert "--system-site-packages" in message and "Jetson" in message


def test_out_path_may_not_be_an_onnx_file(contract_onnx) -> None:
    onnx_path = contract_onnx()
    with pytest.raises(UsageError, match="overwrite an ONNX file"):
        build_engine(onnx_path, onnx_path)
    assert onnx.load(str(onnx_path)).graph.name == "contract"
