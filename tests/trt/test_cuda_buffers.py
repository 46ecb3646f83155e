"""The CUDA buffer module's two implementations against doubles of pycuda and cuda-python.

The doubles use real host memory at real addresses, so pointer handling, page-locked array
views, copy directions and the error convention of cuda-python run here; CUDA itself does not
(benchmarks/cuda_check.py round-trips through a real GPU, and the ``gpu`` test below does too).
"""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

from fmabs_edge.errors import MissingExtraError
from fmabs_edge.runtime.cuda_buffers import (
    CudaError,
    CudaPythonBackend,
    PyCudaBackend,
    open_cuda,
    round_trip,
)

from trt_fake_cuda import make_fake_cudart, make_fake_pycuda

DATA = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3) / 7.0


@pytest.fixture
def fake_pycuda(monkeypatch: pytest.MonkeyPatch) -> list:
    log: list = []
    package = types.ModuleType("pycuda")
    driver = make_fake_pycuda(log)
    package.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return log


@pytest.fixture
def fake_cudart(monkeypatch: pytest.MonkeyPatch) -> list:
    log: list = []
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", make_fake_cudart(log))
    return log


def test_pycuda_round_trip_and_context_per_thread(fake_pycuda: list) -> None:
    backend = PyCudaBackend(0)
    assert np.array_equal(round_trip(backend, DATA), DATA)
    info = backend.device_info()
    assert (info.name, info.compute_capability_str, info.cuda_driver_version) == (
        "Fake pycuda GPU",
        "8.6",
        "12.6",
    )

    worker = threading.Thread(target=lambda: round_trip(backend, DATA[:1]))
    worker.start()
    worker.join()
    pushes = {entry[1] for entry in fake_pycuda if entry[0] == "push"}
    assert worker.ident in pushes and threading.get_ident() in pushes
    assert sum(e[0] == "push" for e in fake_pycuda) == sum(e[0] == "pop" for e in fake_pycuda)
    backend.close()
    assert fake_pycuda[-1] == ("detach",)


def test_cuda_python_round_trip_and_copy_directions(fake_cudart: list) -> None:
    backend = CudaPythonBackend(0)
    out = round_trip(backend, DATA)
    assert out.dtype == DATA.dtype and np.array_equal(out, DATA)
    kinds = [entry[1] for entry in fake_cudart if entry[0] == "memcpy"]
    assert kinds == [1, 2]  # host-to-device, then device-to-host
    frees = [
        entry[0]
        for entry in fake_cudart
        if entry[0].startswith("free") or entry[0] == "destroy_stream"
    ]
    assert frees == ["free_device", "free_host", "free_host", "destroy_stream"]
    info = backend.device_info()
    assert info.name == "Fake cuda-python GPU" and info.compute_capability == (8, 9)
    assert (info.cuda_runtime_version, info.cuda_driver_version) == ("12.6", "12.8")


def test_cuda_python_errors_name_the_cuda_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", make_fake_cudart([], device_count=0))
    with pytest.raises(CudaError, match="cudaGetDeviceCount failed with cudaErrorNoDevice"):
        CudaPythonBackend(0)


def test_old_cuda_cudart_module_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", make_fake_cudart([]))
    assert np.array_equal(round_trip(CudaPythonBackend(0), DATA), DATA)


def test_freeing_twice_is_harmless(fake_cudart: list) -> None:
    backend = CudaPythonBackend(0)
    buffer = backend.alloc_device(64)
    backend.free(buffer)
    backend.free(buffer)
    assert sum(entry[0] == "free_device" for entry in fake_cudart) == 1


def test_copies_larger_than_the_device_buffer_are_refused(fake_cudart: list) -> None:
    backend = CudaPythonBackend(0)
    stream, host, device = (
        backend.create_stream(),
        backend.alloc_host((16,), np.float32),
        backend.alloc_device(32),
    )
    with pytest.raises(CudaError, match="do not fit"):
        backend.copy_to_device(device, host.array, stream)


def test_open_cuda_prefers_pycuda_then_cuda_python(
    fake_pycuda: list, fake_cudart: list, monkeypatch
) -> None:
    assert open_cuda().name == "pycuda"
    assert open_cuda("cuda-python").name == "cuda-python"
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    assert open_cuda().name == "cuda-python"


def test_no_binding_at_all_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pycuda", "pycuda.driver", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        MissingExtraError, match=r"pycuda or cuda-python.*fmabs-edge\[trt\].*--system-site-packages"
    ):
        open_cuda()
    with pytest.raises(MissingExtraError, match="'pycuda'"):
        open_cuda("pycuda")


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["pycuda", "cuda-python"])
def test_round_trip_on_a_real_gpu(implementation: str) -> None:
    """Real CUDA: skipped where no GPU is visible (and then it proves nothing)."""
    try:
        backend = open_cuda(implementation)
    except MissingExtraError as err:
        pytest.skip(f"{implementation} is not installed: {err}")
    try:
        assert np.array_equal(round_trip(backend, DATA), DATA)
    finally:
        backend.close()
