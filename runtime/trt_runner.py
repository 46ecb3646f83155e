"""TensorRT runner: an engine behind the same :class:`~fmabs_edge.runtime.runners.Runner` interface.

``TrtRunner.open("model.engine")`` checks the manifest beside the engine *before* deserialising
(:mod:`fmabs_edge.runtime.engine_manifest`), deserialises it, reads every I/O tensor's name,
dtype and shape from the engine (by name, never by position), and allocates page-locked host and
device buffers once, at the optimisation profile's largest shape. Each batch is copied in,
executed (``execute_async_v3``) and copied out on one CUDA stream; batches above the profile's
maximum are split by :meth:`Runner.infer`. Frames go in as ``(N, H, W, 3) uint8``: cast,
normalisation and layout happen on the GPU inside the engine.

The code is written against TensorRT 10.3 (JetPack 6.1/6.2) and 10.x/11.x desktop releases using
only names present in all of them (TENSORRT.md §4); where 10.x and 11.x differ a comment says so.
It was checked against stand-in ``tensorrt`` modules, not against TensorRT itself.

Threads: the CUDA context is made current in whichever thread calls :meth:`infer`; one runner
serves one thread at a time. TensorRT objects are released before the buffers and the context.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fmabs_edge.artefacts import INPUT_NAME, MAP_OUTPUT, OUTPUT_NAMES, SCORE_OUTPUT
from fmabs_edge.errors import MissingExtraError, ModelError, UsageError
from fmabs_edge.metadata import ModelMetadata
from fmabs_edge.runtime.cuda_buffers import (
    CudaBackend,
    DeviceBuffer,
    HostBuffer,
    Stream,
    missing_gpu_extra,
    open_cuda,
)
from fmabs_edge.runtime.engine_manifest import (
    EngineCheck,
    EngineManifest,
    EngineMismatchError,
    Platform,
    check_manifest,
    jetpack_for,
    parse_version,
    read_l4t_release,
    read_manifest,
    rebuild_command,
)
from fmabs_edge.runtime.runners import Runner

logger = logging.getLogger(__name__)

#: Oldest TensorRT with strongly typed networks and the name-based I/O API used here.
MIN_TENSORRT = (10, 3)
#: TensorRT logger severities (member names) that count as errors.
ERROR_SEVERITIES = ("ERROR", "INTERNAL_ERROR")
_LOG_LEVELS = {
    "INTERNAL_ERROR": logging.ERROR,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,
    "VERBOSE": logging.DEBUG,
}
#: Messages kept per logger (the last ones), so a long build cannot grow memory without bound.
_MAX_KEPT_MESSAGES = 500


# -- TensorRT import, version gate and logger ------------------------------------------------


def import_tensorrt(purpose: str = "The TensorRT backend") -> ModuleType:
    """Import ``tensorrt`` and refuse versions older than :data:`MIN_TENSORRT`.

    Raises MissingExtraError naming the ``[trt]`` extra and the Jetson setup when it is absent,
    and naming JetPack 6.0 when it is TensorRT 8.6 (which has no strongly typed networks).
    """
    try:
        import tensorrt as trt
    except ImportError as err:
        raise missing_gpu_extra("tensorrt", purpose) from err
    version = parse_version(trt.__version__)
    if version[:2] < MIN_TENSORRT:
        jetpack = ""
        if version[0] == 8:
            jetpack = (
                " JetPack 6.0 ships TensorRT 8.6, which has no strongly typed networks: upgrade "
                "the Jetson to JetPack 6.1 or later (TensorRT 10.3)."
            )
        raise MissingExtraError(
            f"TensorRT {trt.__version__} is too old: fmabs-edge needs TensorRT >= "
            f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} "
            f"(strongly typed networks, name-based I/O).{jetpack}"
        )
    return trt


def make_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that forwards to Python logging and keeps what TensorRT said.

    ``.messages`` is a list of ``(severity_name, text)`` (VERBOSE dropped); ``.errors()`` the
    ERROR/INTERNAL_ERROR texts, quoted in every error fmabs-edge raises after a TensorRT None.
    """

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).split(".")[-1]
            logger.log(_LOG_LEVELS.get(name, logging.INFO), "TensorRT: %s", msg)
            if name != "VERBOSE":
                self.messages.append((name, str(msg)))
                del self.messages[:-_MAX_KEPT_MESSAGES]

        def errors(self) -> list[str]:
            return [text for name, text in self.messages if name in ERROR_SEVERITIES]

        def summary(self, limit: int = 5) -> str:
            """The last ``limit`` errors (or warnings if there are none) as one string."""
            picked = self.errors() or [text for name, text in self.messages if name == "WARNING"]
            return " | ".join(picked[-limit:]) if picked else "TensorRT logged no error"

    return RecordingLogger()


def probe_platform(trt: ModuleType, cuda: CudaBackend) -> Platform:
    """The running TensorRT, GPU and (on Jetson) L4T release, as a manifest records them."""
    device = cuda.device_info()
    l4t = read_l4t_release()
    return Platform(
        tensorrt_version=str(trt.__version__),
        compute_capability=device.compute_capability_str,
        gpu_name=device.name,
        cuda_runtime_version=device.cuda_runtime_version,
        cuda_driver_version=device.cuda_driver_version,
        l4t_release=l4t,
        jetpack_release=jetpack_for(l4t),
    )


# -- the runner ------------------------------------------------------------------------------


@dataclass
class _TensorSlot:
    """One engine I/O tensor with buffers sized for the profile's largest shape."""

    name: str
    dtype: np.dtype
    is_input: bool
    host: HostBuffer
    device: DeviceBuffer


class TrtRunner(Runner):
    """Runs an fmabs-edge TensorRT engine (see the module docstring).

    Open with :meth:`open`. ``cuda``: ``"pycuda"``, ``"cuda-python"`` or None (the first
    available). ``rebuild_if_stale``: rebuild from the ONNX file (the manifest's, or ``onnx``)
    and its timing cache instead of refusing an engine built by another TensorRT or for another
    GPU. ``onnx``: the source ONNX file, to check the engine's graph hash against it and to read
    metadata from when the manifest is missing.
    """

    backend = "trt"

    def __init__(
        self, path: Path, metadata: ModelMetadata, input_hw: tuple[int, int], max_batch: int
    ) -> None:
        super().__init__(path, metadata, input_hw, max_batch)
        self._trt: ModuleType | None = None
        self._trt_logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._cuda: CudaBackend | None = None
        self._owns_cuda = False
        self._stream: Stream | None = None
        self._slots: dict[str, _TensorSlot] = {}
        self._batch = 0
        self.manifest: EngineManifest | None = None
        self.min_batch = 1

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        cuda: str | CudaBackend | None = None,
        device: int = 0,
        rebuild_if_stale: bool = False,
        onnx: str | Path | None = None,
        verify_sha256: bool = True,
    ) -> "TrtRunner":
        """Open an engine (or an ONNX file: its ``.engine`` sibling is built or reused)."""
        trt = import_tensorrt("The TensorRT backend (--backend trt)")
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            onnx, path, rebuild_if_stale = path, path.with_suffix(".engine"), True
        backend = open_cuda(cuda, device)
        owns_cuda = not isinstance(cuda, CudaBackend)
        try:
            check = cls._checked(trt, path, backend, rebuild_if_stale, onnx, verify_sha256)
            runner = cls._load(trt, path, check, backend, onnx)
        except BaseException:
            if owns_cuda:
                backend.close()
            raise
        runner._owns_cuda = owns_cuda
        return runner

    @staticmethod
    def _checked(
        trt: ModuleType,
        path: Path,
        backend: CudaBackend,
        rebuild_if_stale: bool,
        onnx: str | Path | None,
        verify_sha256: bool,
    ) -> EngineCheck:
        """Check the manifest; rebuild (when allowed and possible) instead of refusing."""
        running = probe_platform(trt, backend)
        manifest = read_manifest(path) if path.is_file() else None
        try:
            return check_manifest(
                path, manifest, running, onnx_path=onnx, verify_sha256=verify_sha256
            )
        except EngineMismatchError as err:
            if not (rebuild_if_stale and err.can_rebuild):
                raise
            logger.warning("%s; rebuilding it (rebuild_if_stale).", err)
        from fmabs_edge.converters.tensorrt_build import rebuild_from_manifest

        rebuild_from_manifest(path, manifest, onnx_path=onnx, cuda=backend)
        return check_manifest(
            path, read_manifest(path), running, onnx_path=onnx, verify_sha256=verify_sha256
        )

    @classmethod
    def _load(
        cls,
        trt: ModuleType,
        path: Path,
        check: EngineCheck,
        backend: CudaBackend,
        onnx: str | Path | None,
    ) -> "TrtRunner":
        trt_logger = make_logger(trt)
        runtime = trt.Runtime(trt_logger)
        if check.host_code_allowed:
            # A version-compatible plan embeds its lean runtime, which is host code.
            runtime.engine_host_code_allowed = True
        with backend.current():
            # 10.x and 11.x differ: 11.x dropped the IStreamReader overload; bytes work in both.
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            command = rebuild_command(path, check.manifest, onnx)
            raise EngineMismatchError(
                f"TensorRT could not deserialise {path}: {trt_logger.summary()}. Likely causes: "
                "(1) it was built by another TensorRT version or for another GPU"
                + (" (it has no manifest to tell)" if check.manifest is None else "")
                + "; (2) the file is corrupt or truncated; (3) it is not a TensorRT engine. "
                f"Rebuild it with: {command}",
                command,
                bool(onnx or check.manifest),
            )

        spec = _read_io(trt, engine, path)
        metadata = _metadata_for(path, check.manifest, onnx, spec["map_size"])
        runner = cls(path, metadata, spec["input_hw"], max_batch=spec["max_batch"])
        runner.min_batch = spec["min_batch"]
        runner.manifest = check.manifest
        runner.model_hash = check.manifest.onnx_graph_sha256 if check.manifest else ""
        runner._trt, runner._trt_logger, runner._runtime, runner._engine = (
            trt,
            trt_logger,
            runtime,
            engine,
        )
        runner._cuda = backend
        try:
            runner._allocate(spec)
        except BaseException:
            runner._release()
            raise
        logger.info(
            "Opened %s: TensorRT %s, batch %d..%d, input %s, CUDA via %s",
            path,
            trt.__version__,
            spec["min_batch"],
            spec["max_batch"],
            spec["input_hw"],
            backend.name,
        )
        return runner

    def _allocate(self, spec: dict[str, Any]) -> None:
        """Create the context and stream; allocate buffers once at the profile's largest shape."""
        cuda, engine = self._cuda, self._engine
        with cuda.current():
            # 10.x and 11.x differ: create_execution_context_without_device_memory and
            # device_memory_size are gone in 11.x; the plain call exists in both.
            self._context = engine.create_execution_context()
            if self._context is None:
                raise ModelError(
                    f"{self.path}: TensorRT could not create an execution context "
                    f"({self._trt_logger.summary()}); the GPU may be out of memory."
                )
            self._stream = cuda.create_stream()
            self._set_batch(spec["max_batch"])
            for name in spec["names"]:
                is_input = name == INPUT_NAME
                shape = (
                    spec["max_input_shape"]
                    if is_input
                    else tuple(self._context.get_tensor_shape(name))
                )
                if any(d < 0 for d in shape):
                    raise ModelError(
                        f"{self.path}: TensorRT left output '{name}' with unknown shape {shape}."
                    )
                dtype = spec["dtypes"][name]
                host = cuda.alloc_host(shape, dtype)
                device = cuda.alloc_device(host.nbytes)
                self._slots[name] = _TensorSlot(name, dtype, is_input, host, device)
                if not self._context.set_tensor_address(name, device.ptr):
                    raise ModelError(
                        f"{self.path}: TensorRT refused the device address of tensor '{name}'."
                    )

    # -- inference -----------------------------------------------------------------------------

    def _set_batch(self, batch: int) -> None:
        """Set the input shape for ``batch`` frames; a no-op when it is already set."""
        if batch == self._batch:
            return
        height, width = self.input_hw
        if not self._context.set_input_shape(INPUT_NAME, (batch, height, width, 3)):
            raise UsageError(
                f"{self.path}: TensorRT refused batch {batch} (profile "
                f"{self.min_batch}..{self.max_batch}): {self._trt_logger.summary()}"
            )
        # 10.x and 11.x differ: all_shape_inputs_specified is gone in 11.x; infer_shapes is in both.
        missing = self._context.infer_shapes()
        if missing:
            raise ModelError(
                f"{self.path}: TensorRT cannot infer shapes; unspecified inputs: {list(missing)}."
            )
        self._batch = batch

    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Copy in, execute and copy out one batch ``(n, H, W, 3) uint8``, n <= max_batch."""
        count = images.shape[0]
        if count < self.min_batch:
            raise UsageError(
                f"{self.path}: batch of {count} is below the engine's minimum {self.min_batch}; "
                "rebuild it with --min-batch 1."
            )
        cuda, stream = self._cuda, self._stream
        with cuda.current():
            self._set_batch(count)
            source = self._slots[INPUT_NAME]
            staged = source.host.array[:count]
            staged[...] = images
            cuda.copy_to_device(source.device, staged, stream)
            if not self._context.execute_async_v3(stream.handle):
                raise ModelError(
                    f"{self.path}: TensorRT execution failed: {self._trt_logger.summary()}"
                )
            views = {}
            for slot in self._slots.values():
                if slot.is_input:
                    continue
                shape = tuple(self._context.get_tensor_shape(slot.name))
                view = slot.host.array.reshape(-1)[: int(np.prod(shape))].reshape(shape)
                cuda.copy_to_host(view, slot.device, stream)
                views[slot.name] = view
            cuda.synchronize(stream)
        # The pinned buffers are reused by the next batch: hand out copies.
        return views[MAP_OUTPUT].copy(), views[SCORE_OUTPUT].copy()

    # -- release -------------------------------------------------------------------------------

    def _release(self) -> None:
        """Free TensorRT objects first (context, engine, runtime), then buffers, stream, context.

        TensorRT frees device memory when its objects go, so the context is made current in the
        calling thread for that too (close() may run in another thread than inference).
        """
        cuda = self._cuda
        with cuda.current() if cuda is not None else contextlib.nullcontext():
            self._context = None
            self._engine = None
            self._runtime = None
        if cuda is None:
            return
        for slot in self._slots.values():
            cuda.free(slot.device)
            cuda.free(slot.host)
        self._slots = {}
        if self._stream is not None:
            cuda.free(self._stream)
            self._stream = None
        if self._owns_cuda:
            cuda.close()
        self._cuda = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "tensorrt_version": getattr(self._trt, "__version__", None),
                "cuda_implementation": self._cuda.name if self._cuda else None,
                "min_batch": self.min_batch,
                "built_on": self.manifest.built_on.describe() if self.manifest else None,
            }
        )
        return info


# -- helpers ---------------------------------------------------------------------------------


def _read_io(trt: ModuleType, engine: Any, path: Path) -> dict[str, Any]:
    """Names, dtypes and shapes of the engine's I/O tensors, checked against the contract."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    problems = []
    if inputs != [INPUT_NAME]:
        problems.append(f"inputs must be exactly ['{INPUT_NAME}'], found {inputs}")
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        problems.append(f"outputs {missing} missing (found {outputs})")
    if problems:
        raise ModelError(f"{path} is not an fmabs-edge engine: " + "; ".join(problems) + ".")

    dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
    expected = {INPUT_NAME: np.uint8, MAP_OUTPUT: np.float32, SCORE_OUTPUT: np.float32}
    wrong = {n: str(dtypes[n]) for n, t in expected.items() if dtypes[n] != np.dtype(t)}
    if wrong:
        raise ModelError(
            f"{path}: I/O dtypes {wrong} differ from the contract (images uint8, outputs float32)."
        )

    shape = tuple(engine.get_tensor_shape(INPUT_NAME))
    if len(shape) != 4 or shape[3] != 3 or min(shape[1:3]) <= 0:
        raise ModelError(
            f"{path}: input '{INPUT_NAME}' has shape {shape}; "
            "expected (N, H, W, 3) with fixed H, W."
        )
    min_shape, _, max_shape = (tuple(s) for s in engine.get_tensor_profile_shape(INPUT_NAME, 0))
    if min_shape[0] != 1:
        raise ModelError(
            f"{path}: the engine's profile starts at batch {min_shape[0]}; serving needs batches "
            "of 1 (the last frames of a folder, single camera frames). Rebuild it with "
            "--min-batch 1."
        )
    map_shape = tuple(engine.get_tensor_shape(MAP_OUTPUT))
    return {
        "names": names,
        "dtypes": dtypes,
        "input_hw": (int(shape[1]), int(shape[2])),
        "min_batch": int(min_shape[0]),
        "max_batch": int(max_shape[0]),
        "max_input_shape": tuple(int(d) for d in max_shape),
        "map_size": int(map_shape[-1]) if map_shape and map_shape[-1] > 0 else None,
    }


def _metadata_for(
    path: Path, manifest: EngineManifest | None, onnx: str | Path | None, map_size: int | None
) -> ModelMetadata:
    """The model metadata: the manifest's (holding the operating point), else the ONNX file's."""
    if manifest is not None:
        metadata = manifest.model_metadata()
    else:
        source = Path(onnx) if onnx else path.with_suffix(".onnx")
        if source.is_file():
            from fmabs_edge.artefacts import load_onnx, read_metadata

            logger.warning("%s: no manifest; metadata and threshold taken from %s.", path, source)
            metadata = read_metadata(load_onnx(source), str(source))
        else:
            logger.warning(
                "%s: no manifest and no ONNX file beside it; no metadata, so no threshold (every "
                "decision needs --threshold). Rebuild with 'fmabs-edge build' to get a manifest.",
                path,
            )
            metadata = ModelMetadata()
            if map_size:
                metadata.model.image_size = map_size
    if map_size and metadata.image_size != map_size:
        raise ModelError(
            f"{path}: the engine's anomaly map is {map_size} px but its metadata says "
            f"{metadata.image_size}; the manifest belongs to another model. Rebuild the engine."
        )
    return metadata
