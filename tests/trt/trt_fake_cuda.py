"""CUDA test doubles backed by host memory, for CPU-only tests.

- :class:`HostMemoryCuda`: a :class:`~fmabs_edge.runtime.cuda_buffers.CudaBackend` whose
  "device" buffers are ordinary host memory at real addresses, so the stand-in TensorRT context
  can read and write them; it records every call (and in which thread) in ``events``.
- :func:`make_fake_pycuda` / :func:`make_fake_cudart`: stand-ins for ``pycuda.driver`` and
  ``cuda.bindings.runtime`` with the calls fmabs-edge uses, the same calling conventions (cudart
  returns ``(err, *values)`` tuples) and real memory, so both real implementations'
  pointer handling runs here. They prove the calling code, not CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import threading
import types
from typing import Any, Iterator

import numpy as np

from fmabs_edge.runtime.cuda_buffers import (
    CudaBackend,
    DeviceBuffer,
    DeviceInfo,
    HostBuffer,
    Stream,
)

_handles = itertools.count(0x1000)


class HostMemoryCuda(CudaBackend):
    """Host-memory CUDA double; ``events`` lists ``(call, ...)`` tuples in call order."""

    name = "host-memory stand-in"

    def __init__(
        self, events: list | None = None, compute_capability: tuple[int, int] = (8, 7)
    ) -> None:
        super().__init__(0)
        self.events = events if events is not None else []
        self.compute_capability = compute_capability
        self.current_threads: list[int] = []
        self._memory: dict[int, Any] = {}

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self.current_threads.append(threading.get_ident())
        yield

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(0, "Stand-in Orin", self.compute_capability, "12.6", "12.6", 8192)

    def create_stream(self) -> Stream:
        handle = next(_handles)
        self.events.append(("create_stream", handle))
        return Stream(handle=handle, native=handle)

    def alloc_host(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        array = np.zeros(shape, dtype=dtype)
        self.events.append(("alloc_host", tuple(shape), str(np.dtype(dtype))))
        return HostBuffer(
            array=array, ptr=int(array.ctypes.data), nbytes=int(array.nbytes), handle=array
        )

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        memory = (ctypes.c_ubyte * max(1, nbytes))()
        ptr = ctypes.addressof(memory)
        self._memory[ptr] = memory
        self.events.append(("alloc_device", nbytes))
        return DeviceBuffer(ptr=ptr, nbytes=nbytes, handle=memory)

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        self._check_copy(src.nbytes, dst.nbytes, "copy to device")
        ctypes.memmove(dst.ptr, src.ctypes.data, src.nbytes)
        self.events.append(("copy_to_device", src.nbytes, stream.handle))

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        self._check_copy(dst.nbytes, src.nbytes, "copy to host")
        ctypes.memmove(dst.ctypes.data, src.ptr, dst.nbytes)
        self.events.append(("copy_to_host", dst.nbytes, stream.handle))

    def synchronize(self, stream: Stream) -> None:
        self.events.append(("synchronize", stream.handle))

    def _free_host(self, buffer: HostBuffer) -> None:
        self.events.append(("free_host", buffer.nbytes))

    def _free_device(self, buffer: DeviceBuffer) -> None:
        self._memory.pop(buffer.ptr, None)
        self.events.append(("free_device", buffer.nbytes))

    def _destroy_stream(self, stream: Stream) -> None:
        self.events.append(("destroy_stream", stream.handle))

    def _release_context(self) -> None:
        self.events.append(("release_context",))


# -- pycuda.driver double ---------------------------------------------------------------------


class _Pinned(bytearray):
    """Backing store of a page-locked array; pycuda's HostAllocation has ``free()`` too."""

    freed = False

    def free(self) -> None:
        self.freed = True


def make_fake_pycuda(log: list) -> types.ModuleType:
    """A ``pycuda.driver`` double (init, Device, Context, Stream, pagelocked_empty, mem_alloc, copies)."""
    driver = types.ModuleType("pycuda.driver")
    memory: dict[int, Any] = {}

    class Context:
        stack: list = []

        def push(self) -> None:
            Context.stack.append(self)
            log.append(("push", threading.get_ident()))

        @staticmethod
        def pop() -> None:
            Context.stack.pop()
            log.append(("pop", threading.get_ident()))

        def detach(self) -> None:
            log.append(("detach",))

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Fake pycuda GPU"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 6)

        def total_memory(self) -> int:
            return 4 << 30

        def retain_primary_context(self) -> Context:
            log.append(("retain_primary_context", self.index))
            return Context()

    class Stream:
        def __init__(self) -> None:
            self.handle = next(_handles)

        def synchronize(self) -> None:
            log.append(("synchronize", self.handle))

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self._memory = (ctypes.c_ubyte * nbytes)()
            memory[int(self)] = self._memory

        def __int__(self) -> int:
            return ctypes.addressof(self._memory)

        def free(self) -> None:
            log.append(("free_device",))

    def _require_context() -> None:
        if not Context.stack:
            raise RuntimeError("fake pycuda: no current context")

    def pagelocked_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        _require_context()
        dtype = np.dtype(dtype)
        store = _Pinned(max(1, int(np.prod(shape)) * dtype.itemsize))
        return np.ndarray(shape, dtype, buffer=store)

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        _require_context()
        return DeviceAllocation(nbytes)

    def memcpy_htod_async(dest: int, src: np.ndarray, stream: Stream) -> None:
        ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)
        log.append(("htod", src.nbytes, stream.handle))

    def memcpy_dtoh_async(dest: np.ndarray, src: int, stream: Stream) -> None:
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)
        log.append(("dtoh", dest.nbytes, stream.handle))

    driver.init = lambda: log.append(("init",))
    driver.Device, driver.Context, driver.Stream = Device, Context, Stream
    driver.pagelocked_empty, driver.mem_alloc = pagelocked_empty, mem_alloc
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    driver.get_version = lambda: (12, 6, 0)
    driver.get_driver_version = lambda: 12060
    return driver


# -- cuda.bindings.runtime double -------------------------------------------------------------


def make_fake_cudart(log: list, device_count: int = 1) -> types.ModuleType:
    """A ``cuda.bindings.runtime`` double: every call returns ``(err, *values)``."""
    rt = types.ModuleType("cuda.bindings.runtime")
    memory: dict[int, Any] = {}

    class cudaError_t:  # noqa: N801 - the binding's name
        cudaSuccess = 0
        cudaErrorNoDevice = 100
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:  # noqa: N801
        def __init__(self) -> None:
            self._handle = next(_handles)

        def __int__(self) -> int:
            return self._handle

    class Props:
        name = b"Fake cuda-python GPU\0\0\0\0"
        major, minor = 8, 9
        totalGlobalMem = 16 << 30

    def _alloc(nbytes: int) -> int:
        block = (ctypes.c_ubyte * nbytes)()
        memory[ctypes.addressof(block)] = block
        return ctypes.addressof(block)

    def _free(ptr: int, what: str) -> tuple:
        if ptr not in memory:
            return (cudaError_t.cudaErrorInvalidValue,)
        del memory[ptr]
        log.append((what, ptr))
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(
        dst: int, src: int, nbytes: int, kind: int, stream: cudaStream_t
    ) -> tuple:  # noqa: N802
        if not isinstance(stream, cudaStream_t):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(nbytes))
        log.append(("memcpy", kind, nbytes, int(stream)))
        return (cudaError_t.cudaSuccess,)

    ok = cudaError_t.cudaSuccess
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaGetDeviceCount = lambda: (
        (ok, device_count) if device_count else (cudaError_t.cudaErrorNoDevice, 0)
    )
    rt.cudaSetDevice = lambda index: log.append(("set_device", index, threading.get_ident())) or (
        ok,
    )
    rt.cudaGetDeviceProperties = lambda index: (ok, Props())
    rt.cudaRuntimeGetVersion = lambda: (ok, 12060)
    rt.cudaDriverGetVersion = lambda: (ok, 12080)
    rt.cudaGetErrorName = lambda err: (
        ok,
        {100: b"cudaErrorNoDevice", 1: b"cudaErrorInvalidValue"}[err],
    )
    rt.cudaStreamCreate = lambda: (ok, cudaStream_t())
    rt.cudaStreamSynchronize = lambda stream: log.append(("synchronize", int(stream))) or (ok,)
    rt.cudaStreamDestroy = lambda stream: log.append(("destroy_stream", int(stream))) or (ok,)
    rt.cudaMallocHost = lambda nbytes: (ok, _alloc(nbytes))
    rt.cudaMalloc = lambda nbytes: (ok, _alloc(nbytes))
    rt.cudaFreeHost = lambda ptr: _free(ptr, "free_host")
    rt.cudaFree = lambda ptr: _free(ptr, "free_device")
    rt.cudaMemcpyAsync = cudaMemcpyAsync
    return rt
