"""CUDA streams and buffers for the TensorRT runner: one interface, two implementations.

TensorRT needs only a few CUDA calls from Python: a stream, page-locked (pinned) host buffers,
device buffers, asynchronous host-to-device and device-to-host copies, a stream synchronise, and
the frees. :class:`CudaBackend` is that interface; it has two implementations:

- ``"pycuda"`` (:class:`PyCudaBackend`): the ``[trt]`` extra installs pycuda (built from source;
  on Jetson it needs ``PATH=/usr/local/cuda/bin:$PATH CUDA_INC_DIR=/usr/local/cuda/include``);
- ``"cuda-python"`` (:class:`CudaPythonBackend`): NVIDIA's ``cuda.bindings.runtime`` (what
  TensorRT's own samples use since 10.14), falling back to the older ``cuda.cudart`` module that
  cuda-bindings 13 removed. Every call returns ``(err, *results)`` and each ``err`` is checked.

Both use the device's *primary* context, the one TensorRT's CUDA runtime calls bind to, and make
it current in whichever thread calls :meth:`CudaBackend.current`, so a runner opened in one
thread can infer in another. Release order matters: free TensorRT objects first, then the
buffers and streams, then :meth:`CudaBackend.close`.

Nothing here imports pycuda or cuda-python until a backend is opened.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Iterator

import numpy as np

from fmabs_edge.errors import FmabsError, MissingExtraError

logger = logging.getLogger(__name__)

#: Names accepted by :func:`open_cuda`, in the order tried when none is given.
IMPLEMENTATIONS = ("pycuda", "cuda-python")

#: How to get TensorRT and a CUDA binding, appended to every missing-extra message.
INSTALL_HINT = (
    "Desktop/x86-64: pip install 'fmabs-edge[trt]' (TensorRT wheels from PyPI plus pycuda). "
    "Jetson (JetPack >= 6.1, TensorRT 10.3): do not pip-install TensorRT; use JetPack's system "
    "TensorRT from a venv made with --system-site-packages "
    "(python3 -m venv --system-site-packages .venv && .venv/bin/pip install -e '.[trt]', with "
    "PATH=/usr/local/cuda/bin:$PATH and CUDA_INC_DIR=/usr/local/cuda/include so pycuda builds). "
    "See the README, section TensorRT."
)


class CudaError(FmabsError):
    """A CUDA call failed (no device, driver too old, out of memory, bad pointer)."""


def missing_gpu_extra(module: str, purpose: str) -> MissingExtraError:
    """The error for a missing TensorRT/CUDA package: names the ``[trt]`` extra and Jetson setup."""
    return MissingExtraError(
        f"{purpose} needs the Python package '{module}', which is not installed. {INSTALL_HINT}"
    )


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine manifest records about the GPU."""

    index: int
    name: str
    #: ``(major, minor)``, e.g. ``(8, 7)`` for Jetson Orin.
    compute_capability: tuple[int, int]
    #: CUDA runtime (toolkit) version the binding uses, e.g. ``"12.6"``; None if unknown.
    cuda_runtime_version: str | None
    #: Newest CUDA version the installed driver supports, e.g. ``"12.6"``; None if unknown.
    cuda_driver_version: str | None
    total_memory_mb: int

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass
class HostBuffer:
    """Page-locked host memory as a C-contiguous numpy array ``array`` at address ``ptr``."""

    array: np.ndarray
    ptr: int
    nbytes: int
    handle: Any = field(repr=False, default=None)
    freed: bool = False


@dataclass
class DeviceBuffer:
    """``nbytes`` of device memory at address ``ptr`` (the int TensorRT takes as an address)."""

    ptr: int
    nbytes: int
    handle: Any = field(repr=False, default=None)
    freed: bool = False


@dataclass
class Stream:
    """A CUDA stream; ``handle`` is the integer ``execute_async_v3`` takes."""

    handle: int
    native: Any = field(repr=False, default=None)
    freed: bool = False


def _version_string(encoded: int) -> str:
    """CUDA's integer version (``12060``) as ``"12.6"``."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


class CudaBackend(abc.ABC):
    """The CUDA calls the TensorRT runner needs, on one device. See the module docstring."""

    name: ClassVar[str] = ""

    def __init__(self, device: int = 0) -> None:
        self.device = int(device)
        self._closed = False

    # -- context -------------------------------------------------------------------------------

    @abc.abstractmethod
    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the device's primary context current in the calling thread for the block."""

    @abc.abstractmethod
    def device_info(self) -> DeviceInfo:
        """Name, compute capability and CUDA versions of the device."""

    # -- resources -----------------------------------------------------------------------------

    @abc.abstractmethod
    def create_stream(self) -> Stream:
        """A new non-default stream."""

    @abc.abstractmethod
    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype | type) -> HostBuffer:
        """Page-locked host memory for a ``shape``/``dtype`` array."""

    @abc.abstractmethod
    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        """``nbytes`` of device memory (at least 1 byte is allocated)."""

    @abc.abstractmethod
    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        """Queue a copy of the C-contiguous pinned array ``src`` into ``dst`` on ``stream``."""

    @abc.abstractmethod
    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        """Queue a copy of the first ``dst.nbytes`` of ``src`` into the pinned array ``dst``."""

    @abc.abstractmethod
    def synchronize(self, stream: Stream) -> None:
        """Block until everything queued on ``stream`` has finished."""

    @abc.abstractmethod
    def _free_host(self, buffer: HostBuffer) -> None: ...

    @abc.abstractmethod
    def _free_device(self, buffer: DeviceBuffer) -> None: ...

    @abc.abstractmethod
    def _destroy_stream(self, stream: Stream) -> None: ...

    @abc.abstractmethod
    def _release_context(self) -> None: ...

    def free(self, resource: HostBuffer | DeviceBuffer | Stream) -> None:
        """Free a buffer or destroy a stream (once; a second call does nothing)."""
        if resource.freed:
            return
        with self.current():
            if isinstance(resource, HostBuffer):
                self._free_host(resource)
            elif isinstance(resource, DeviceBuffer):
                self._free_device(resource)
            else:
                self._destroy_stream(resource)
        resource.freed = True

    def close(self) -> None:
        """Release the context. Call after every TensorRT object and buffer is gone."""
        if not self._closed:
            self._release_context()
            self._closed = True

    def _check_copy(self, nbytes: int, capacity: int, what: str) -> None:
        if nbytes > capacity:
            raise CudaError(f"{what}: {nbytes} bytes do not fit a {capacity}-byte device buffer.")


class PyCudaBackend(CudaBackend):
    """:class:`CudaBackend` on pycuda (``pycuda.driver``), without ``pycuda.autoinit``.

    ``pycuda.autoinit`` creates a private context bound to the importing thread; this backend
    retains the device's primary context instead and pushes it in the thread that calls
    :meth:`current`.
    """

    name = "pycuda"

    def __init__(self, device: int = 0, driver: ModuleType | None = None) -> None:
        super().__init__(device)
        self._cuda = driver or _import("pycuda.driver", "The pycuda CUDA binding")
        try:
            self._cuda.init()
            count = self._cuda.Device.count()
            if self.device >= count:
                raise CudaError(
                    f"CUDA device {self.device} requested, but {count} device(s) are visible."
                )
            self._device = self._cuda.Device(self.device)
            self._context = self._device.retain_primary_context()
        except CudaError:
            raise
        except Exception as err:  # pycuda raises pycuda._driver.Error subclasses
            raise CudaError(f"pycuda could not open CUDA device {self.device}: {err}") from err

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def device_info(self) -> DeviceInfo:
        major, minor = self._device.compute_capability()
        runtime = ".".join(str(v) for v in self._cuda.get_version()[:2])
        return DeviceInfo(
            index=self.device,
            name=str(self._device.name()),
            compute_capability=(int(major), int(minor)),
            cuda_runtime_version=runtime,
            cuda_driver_version=_version_string(int(self._cuda.get_driver_version())),
            total_memory_mb=int(self._device.total_memory()) >> 20,
        )

    def create_stream(self) -> Stream:
        with self.current():
            native = self._cuda.Stream()
        return Stream(handle=int(native.handle), native=native)

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype | type) -> HostBuffer:
        with self.current():
            array = self._cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))
        return HostBuffer(
            array=array, ptr=int(array.ctypes.data), nbytes=int(array.nbytes), handle=array.base
        )

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        with self.current():
            allocation = self._cuda.mem_alloc(max(1, int(nbytes)))
        return DeviceBuffer(ptr=int(allocation), nbytes=int(nbytes), handle=allocation)

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        self._check_copy(src.nbytes, dst.nbytes, "copy to device")
        self._cuda.memcpy_htod_async(dst.ptr, src, stream.native)

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        self._check_copy(dst.nbytes, src.nbytes, "copy to host")
        self._cuda.memcpy_dtoh_async(dst, src.ptr, stream.native)

    def synchronize(self, stream: Stream) -> None:
        stream.native.synchronize()

    def _free_host(self, buffer: HostBuffer) -> None:
        free = getattr(buffer.handle, "free", None)
        if free is not None:
            free()

    def _free_device(self, buffer: DeviceBuffer) -> None:
        buffer.handle.free()

    def _destroy_stream(self, stream: Stream) -> None:
        stream.native = None  # pycuda destroys the stream when the object is collected

    def _release_context(self) -> None:
        self._context.detach()


class CudaPythonBackend(CudaBackend):
    """:class:`CudaBackend` on cuda-python's runtime API (``cuda.bindings.runtime``).

    Falls back to the pre-13 module ``cuda.cudart``. cuda-bindings 13.x needs a driver >= 580,
    so on JetPack 6 (CUDA 12.x) install ``cuda-python<13``.
    """

    name = "cuda-python"

    def __init__(self, device: int = 0, runtime: ModuleType | None = None) -> None:
        super().__init__(device)
        self._rt = runtime or _import_cudart()
        count = self._call("cudaGetDeviceCount")
        if self.device >= count:
            raise CudaError(
                f"CUDA device {self.device} requested, but {count} device(s) are visible."
            )
        self._call("cudaSetDevice", self.device)

    def _call(self, function: str, *args: Any) -> Any:
        """Call ``cudart.<function>(*args)``; raise CudaError unless it returned cudaSuccess."""
        try:
            result = getattr(self._rt, function)(*args)
        except Exception as err:  # the binding raises when libcuda cannot be loaded
            raise CudaError(f"{function} failed: {err}") from err
        err, *values = result
        if err != self._rt.cudaError_t.cudaSuccess:
            try:
                name = self._rt.cudaGetErrorName(err)[1].decode()
            except Exception:  # the name is a courtesy; the code is already known
                name = str(err)
            raise CudaError(
                f"{function} failed with {name} on device {self.device}. "
                "Check that a CUDA driver and GPU are present (nvidia-smi, or tegrastats on "
                "Jetson) and that cuda-python matches the driver's CUDA version."
            )
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        # cudaSetDevice binds the primary context in the calling thread; cheap when already bound.
        self._call("cudaSetDevice", self.device)
        yield

    def device_info(self) -> DeviceInfo:
        props = self._call("cudaGetDeviceProperties", self.device)
        raw_name = props.name
        name = (
            raw_name.split(b"\0", 1)[0].decode() if isinstance(raw_name, bytes) else str(raw_name)
        )
        return DeviceInfo(
            index=self.device,
            name=name,
            compute_capability=(int(props.major), int(props.minor)),
            cuda_runtime_version=_version_string(int(self._call("cudaRuntimeGetVersion"))),
            cuda_driver_version=_version_string(int(self._call("cudaDriverGetVersion"))),
            total_memory_mb=int(props.totalGlobalMem) >> 20,
        )

    def create_stream(self) -> Stream:
        with self.current():
            native = self._call("cudaStreamCreate")
        return Stream(handle=_native_handle(native), native=native)

    def alloc_host(self, shape: tuple[int, ...], dtype: np.dtype | type) -> HostBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with self.current():
            ptr = int(self._call("cudaMallocHost", max(1, nbytes)))
        raw = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_ubyte)), (max(1, nbytes),)
        )
        array = raw[:nbytes].view(dtype).reshape(shape)
        return HostBuffer(array=array, ptr=ptr, nbytes=nbytes, handle=ptr)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        with self.current():
            ptr = int(self._call("cudaMalloc", max(1, int(nbytes))))
        return DeviceBuffer(ptr=ptr, nbytes=int(nbytes), handle=ptr)

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        self._check_copy(src.nbytes, dst.nbytes, "copy to device")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(
            "cudaMemcpyAsync", dst.ptr, int(src.ctypes.data), int(src.nbytes), kind, stream.native
        )

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        self._check_copy(dst.nbytes, src.nbytes, "copy to host")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(
            "cudaMemcpyAsync", int(dst.ctypes.data), src.ptr, int(dst.nbytes), kind, stream.native
        )

    def synchronize(self, stream: Stream) -> None:
        self._call("cudaStreamSynchronize", stream.native)

    def _free_host(self, buffer: HostBuffer) -> None:
        self._call("cudaFreeHost", buffer.ptr)

    def _free_device(self, buffer: DeviceBuffer) -> None:
        self._call("cudaFree", buffer.ptr)

    def _destroy_stream(self, stream: Stream) -> None:
        self._call("cudaStreamDestroy", stream.native)

    def _release_context(self) -> None:
        # The primary context is shared with TensorRT and released by the driver at exit;
        # resetting the device here would break other users of it in this process.
        pass


def _import(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_gpu_extra(module.split(".")[0], purpose) from err


def _import_cudart() -> ModuleType:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older ``cuda.cudart``."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        pass
    try:
        return importlib.import_module("cuda.cudart")  # removed in cuda-bindings 13.0
    except ImportError as err:
        raise missing_gpu_extra("cuda-python", "The cuda-python CUDA binding") from err


def _native_handle(stream: Any) -> int:
    """The integer behind a cuda-python stream object.

    ``int(obj)`` is deprecated from cuda-bindings 12.9.1/13.0 in favour of
    ``cuda.bindings.utils.get_cuda_native_handle``, which older 12.x lacks: try it first.
    """
    try:
        utils = importlib.import_module("cuda.bindings.utils")
        return int(utils.get_cuda_native_handle(stream))
    except Exception:  # older bindings lack the helper, or it does not know this object
        return int(stream)


_BACKEND_CLASSES: dict[str, type[CudaBackend]] = {
    PyCudaBackend.name: PyCudaBackend,
    CudaPythonBackend.name: CudaPythonBackend,
}


def open_cuda(implementation: str | CudaBackend | None = None, device: int = 0) -> CudaBackend:
    """Open a :class:`CudaBackend` on ``device``.

    ``implementation``: ``"pycuda"``, ``"cuda-python"``, an already open backend (returned as
    is), or None to take the first of :data:`IMPLEMENTATIONS` whose package imports.
    """
    if isinstance(implementation, CudaBackend):
        return implementation
    if implementation is not None:
        if implementation not in _BACKEND_CLASSES:
            raise FmabsError(
                f"Unknown CUDA implementation '{implementation}'; choose one of {IMPLEMENTATIONS}."
            )
        return _BACKEND_CLASSES[implementation](device)
    missing = []
    for name in IMPLEMENTATIONS:
        try:
            return _BACKEND_CLASSES[name](device)
        except MissingExtraError as err:
            missing.append(str(err))
            logger.debug("CUDA implementation %s unavailable: %s", name, err)
    raise MissingExtraError(
        "The TensorRT runtime needs a CUDA binding (pycuda or cuda-python); neither is installed. "
        + INSTALL_HINT
    )


def round_trip(backend: CudaBackend, data: np.ndarray) -> np.ndarray:
    """Copy ``data`` host -> pinned -> device -> pinned on one stream and return the result.

    A self-check of a backend: the result must equal ``data`` bit for bit.
    """
    data = np.ascontiguousarray(data)
    stream = backend.create_stream()
    host_in = backend.alloc_host(data.shape, data.dtype)
    host_out = backend.alloc_host(data.shape, data.dtype)
    device = backend.alloc_device(data.nbytes)
    try:
        with backend.current():
            host_in.array[...] = data
            host_out.array[...] = 0
            backend.copy_to_device(device, host_in.array, stream)
            backend.copy_to_host(host_out.array, device, stream)
            backend.synchronize(stream)
            return host_out.array.copy()
    finally:
        for resource in (device, host_out, host_in, stream):
            backend.free(resource)
