"""The TensorRT runner against stand-in TensorRT 10.3 and 11.x modules (CPU only).

The stand-in "engine" runs the ONNX graph with ONNX Runtime on the bytes at the addresses the
runner gives it, so these tests check the runner's plumbing (I/O by name, shapes, buffers,
copies on a stream, batch splitting, manifest checks, release order), not TensorRT's numerics.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fmabs_edge.converters.tensorrt_build import build_engine
from fmabs_edge.errors import MissingExtraError, ModelError
from fmabs_edge.runtime import trt_runner as trt_runner_module
from fmabs_edge.runtime.engine_manifest import (
    EngineMismatchError,
    manifest_path,
    update_manifest_operating_point,
)
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.runtime.runners import load_runner
from fmabs_edge.runtime.trt_runner import TrtRunner

import trt_standin
from trt_fake_cuda import HostMemoryCuda


@pytest.fixture
def built(standin_trt, fake_cuda, contract_onnx, tmp_path: Path):
    """``(engine_path, onnx_path)``: an engine with profile 1/2/4 built from the tiny graph."""
    onnx_path = contract_onnx()
    engine = tmp_path / "model.engine"
    build_engine(onnx_path, engine, opt_batch=2, max_batch=4, cuda=fake_cuda)
    return engine, onnx_path


def _executions(module) -> list[tuple[int, ...]]:
    return [call[2]["images"] for call in module._state.calls if call[0] == "execute_async_v3"]


def test_runner_matches_onnx_runtime_and_splits_batches(
    built, standin_trt, fake_cuda, frames
) -> None:
    engine, onnx_path = built
    images = frames(11)
    with TrtRunner.open(engine, cuda=fake_cuda) as runner:
        assert runner.max_batch == 4 and runner.min_batch == 1 and runner.input_hw == (16, 16)
        result = runner.infer(images)
    with OrtRunner.open(onnx_path) as reference:
        expected = reference.infer(images)
    np.testing.assert_array_equal(result.image_score, expected.image_score)
    np.testing.assert_array_equal(result.anomaly_map, expected.anomaly_map)
    assert result.anomaly_map.shape == (11, 1, 16, 16)
    assert [shape[0] for shape in _executions(standin_trt)] == [4, 4, 3]


def test_buffers_are_allocated_once_and_copies_use_one_stream(
    built, standin_trt, fake_cuda, frames
) -> None:
    engine, _ = built
    with TrtRunner.open(engine, cuda=fake_cuda) as runner:
        allocations = sum(1 for e in fake_cuda.events if e[0] == "alloc_device")
        runner.infer(frames(3))
        runner.infer(frames(1))
        runner.infer(frames(4))
    assert allocations == 3  # images, anomaly_map, image_score, sized for batch 4
    assert sum(1 for e in fake_cuda.events if e[0] == "alloc_device") == 3
    streams = {e[2] for e in fake_cuda.events if e[0] in ("copy_to_device", "copy_to_host")}
    executed = {call[1] for call in standin_trt._state.calls if call[0] == "execute_async_v3"}
    assert len(streams) == 1 and streams == executed
    copied_in = [e[1] for e in fake_cuda.events if e[0] == "copy_to_device"]
    assert copied_in == [3 * 16 * 16 * 3, 16 * 16 * 3, 4 * 16 * 16 * 3]


def test_outputs_are_found_by_name_not_position(
    standin_trt, fake_cuda, contract_onnx, tmp_path, frames
) -> None:
    onnx_path = contract_onnx(outputs_reversed=True)
    engine = tmp_path / "reversed.engine"
    build_engine(onnx_path, engine, max_batch=2, cuda=fake_cuda)
    images = frames(3)
    with TrtRunner.open(engine, cuda=fake_cuda) as runner:
        result = runner.infer(images)
    with OrtRunner.open(onnx_path) as reference:
        expected = reference.infer(images)
    np.testing.assert_array_equal(result.image_score, expected.image_score)
    assert result.anomaly_map.shape == (3, 1, 16, 16)


def test_results_are_copies_not_views_of_reused_buffers(built, fake_cuda, frames) -> None:
    engine, _ = built
    with TrtRunner.open(engine, cuda=fake_cuda) as runner:
        first = runner.infer(frames(2))
        kept = first.image_score.copy()
        runner.infer(frames(3))
    np.testing.assert_array_equal(first.image_score, kept)


def test_trt_objects_are_freed_before_buffers_and_context(
    built, standin_trt, monkeypatch, frames
) -> None:
    engine, _ = built
    owned = HostMemoryCuda(events=standin_trt._state.calls)
    monkeypatch.setattr(trt_runner_module, "open_cuda", lambda cuda, device: owned)
    with TrtRunner.open(engine) as runner:
        runner.infer(frames(2))
    names = [call[0] if call[0] != "del" else f"del {call[1]}" for call in standin_trt._state.calls]
    last_trt = max(names.index("del IExecutionContext"), names.index("del ICudaEngine"))
    first_free = min(
        i for i, name in enumerate(names) if name in ("free_device", "free_host", "destroy_stream")
    )
    assert names.index("del IExecutionContext") < names.index("del ICudaEngine")
    assert last_trt < first_free < names.index("release_context")
    assert runner._slots == {} and runner._cuda is None


def test_inference_in_another_thread_makes_the_context_current_there(
    built, fake_cuda, frames
) -> None:
    engine, _ = built
    runner = TrtRunner.open(engine, cuda=fake_cuda)
    results = {}
    worker = threading.Thread(
        target=lambda: results.update(ident=threading.get_ident(), out=runner.infer(frames(5)))
    )
    worker.start()
    worker.join()
    runner.close()
    assert results["ident"] in fake_cuda.current_threads
    assert results["out"].image_score.shape == (5,)


def test_operating_point_comes_from_the_manifest(built, fake_cuda) -> None:
    engine, onnx_path = built
    update_manifest_operating_point(engine, threshold=0.9, threshold_rule="refit")
    with TrtRunner.open(engine, cuda=fake_cuda, onnx=onnx_path) as runner:
        assert runner.metadata.threshold == 0.9
        assert runner.model_hash


def test_other_tensorrt_version_is_refused_before_deserialising(built, monkeypatch) -> None:
    engine, _ = built
    version = sys.modules["tensorrt"]._state.version
    other = trt_standin.make_tensorrt("11.1" if version == "10.3" else "10.3")
    monkeypatch.setitem(sys.modules, "tensorrt", other)
    cuda = HostMemoryCuda(events=other._state.calls)
    with pytest.raises(
        EngineMismatchError, match=r"built with TensorRT .* / running TensorRT .*fmabs-edge build"
    ):
        TrtRunner.open(engine, cuda=cuda)
    assert not [c for c in other._state.calls if c[0] == "deserialize_cuda_engine"]


def test_version_compatible_10_3_engine_runs_on_11(
    monkeypatch, contract_onnx, tmp_path, frames
) -> None:
    engine = tmp_path / "vc.engine"
    older, newer = trt_standin.make_tensorrt("10.3"), trt_standin.make_tensorrt("11.1")
    monkeypatch.setitem(sys.modules, "tensorrt", older)
    cuda = HostMemoryCuda(events=older._state.calls)
    build_engine(contract_onnx(), engine, max_batch=2, version_compatible=True, cuda=cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", newer)
    with TrtRunner.open(engine, cuda=HostMemoryCuda(events=newer._state.calls)) as runner:
        assert runner.infer(frames(3)).image_score.shape == (3,)
    assert ("engine_host_code_allowed", True) in newer._state.calls


def test_standard_11_engine_is_refused_on_10_3(monkeypatch, contract_onnx, tmp_path) -> None:
    engine = tmp_path / "new.engine"
    older, newer = trt_standin.make_tensorrt("10.3"), trt_standin.make_tensorrt("11.1")
    monkeypatch.setitem(sys.modules, "tensorrt", newer)
    build_engine(
        contract_onnx(),
        engine,
        version_compatible=True,
        cuda=HostMemoryCuda(events=newer._state.calls),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", older)
    with pytest.raises(
        EngineMismatchError, match="built with TensorRT 11.1.0.106 / running TensorRT 10.3.0.30"
    ):
        TrtRunner.open(engine, cuda=HostMemoryCuda(events=older._state.calls))


def test_rebuild_if_stale_rebuilds_for_another_gpu(built, standin_trt, frames) -> None:
    engine, _ = built
    standin_trt._state.compute_capability = "8.6"
    desktop = HostMemoryCuda(events=standin_trt._state.calls, compute_capability=(8, 6))
    with pytest.raises(EngineMismatchError, match="compute capability 8.7"):
        TrtRunner.open(engine, cuda=desktop)
    with TrtRunner.open(engine, cuda=desktop, rebuild_if_stale=True) as runner:
        assert runner.manifest.built_on.compute_capability == "8.6"
        assert runner.max_batch == 4  # the manifest's profile was kept
        runner.infer(frames(2))


def test_engine_with_min_batch_above_one_is_refused_for_serving(
    standin_trt, fake_cuda, contract_onnx, tmp_path
) -> None:
    engine = tmp_path / "m.engine"
    build_engine(contract_onnx(), engine, min_batch=2, max_batch=4, cuda=fake_cuda)
    with pytest.raises(ModelError, match="--min-batch 1"):
        TrtRunner.open(engine, cuda=fake_cuda)


def test_missing_manifest_warns_and_takes_metadata_from_the_onnx_beside_it(
    built, fake_cuda, caplog
) -> None:
    engine, onnx_path = built
    manifest_path(engine).unlink()
    engine.with_suffix(".onnx").write_bytes(onnx_path.read_bytes())
    with caplog.at_level(logging.WARNING), TrtRunner.open(engine, cuda=fake_cuda) as runner:
        assert runner.metadata.threshold == 0.5
    assert "no manifest" in caplog.text


def test_corrupt_engine_without_manifest_reports_what_tensorrt_logged(built, fake_cuda) -> None:
    engine, _ = built
    manifest_path(engine).unlink()
    engine.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(
        EngineMismatchError, match=r"could not deserialise.*Serialization assertion.*corrupt"
    ):
        TrtRunner.open(engine, cuda=fake_cuda)


def test_truncated_engine_is_refused_with_its_manifest(built, fake_cuda) -> None:
    engine, _ = built
    engine.write_bytes(engine.read_bytes()[:100])
    with pytest.raises(EngineMismatchError, match="truncated"):
        TrtRunner.open(engine, cuda=fake_cuda)


def test_failed_execution_is_an_error_with_the_log(built, standin_trt, fake_cuda, frames) -> None:
    engine, _ = built
    standin_trt._state.fail_execute = True
    with (
        TrtRunner.open(engine, cuda=fake_cuda) as runner,
        pytest.raises(ModelError, match="execution failed"),
    ):
        runner.infer(frames(1))


def test_opening_an_onnx_file_builds_the_engine_beside_it(
    standin_trt, fake_cuda, contract_onnx, frames
) -> None:
    onnx_path = contract_onnx()
    with load_runner(onnx_path, backend="trt", cuda=fake_cuda) as runner:
        assert runner.path == onnx_path.with_suffix(".engine")
        assert runner.infer(frames(2)).image_score.shape == (2,)
    assert onnx_path.with_suffix(".engine").is_file()


def test_describe_names_tensorrt_and_the_cuda_binding(built, fake_cuda) -> None:
    engine, _ = built
    with TrtRunner.open(engine, cuda=fake_cuda) as runner:
        info = runner.describe()
    assert info["backend"] == "trt" and info["max_batch"] == 4
    assert info["tensorrt_version"] == sys.modules["tensorrt"].__version__
    assert info["cuda_implementation"] == "host-memory stand-in"


def test_missing_tensorrt_is_a_missing_extra_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(MissingExtraError, match=r"fmabs-edge\[trt\].*--system-site-packages"):
        load_runner(engine, backend="trt")
