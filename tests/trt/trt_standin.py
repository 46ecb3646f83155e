"""Stand-in ``tensorrt`` modules (test doubles) for the TensorRT 10.3 and 11.x Python surfaces.

:func:`make_tensorrt` returns a module that exposes *only* the names of one version
(:mod:`trt_surfaces`), with enum values numbered as that version numbers them. Every object it
hands out refuses any public attribute outside its version's surface with ``AttributeError``,
so code that touches a name 11.x removed (or that 10.3 does not have yet) fails its test.

What the stand-ins do, so that the build and run paths can execute end to end on a CPU:

- the parser reads the ONNX file with ``onnx`` and reports unknown operators and uint8 tensors
  consumed by anything but a Cast, each with its node name (as TensorRT's parser does);
- the builder records every call and returns a "plan": JSON holding the I/O, the profile,
  the flags, the version and the compute capability it was "built" for, plus the ONNX bytes;
- the runtime refuses plans of another version or compute capability (returning None and
  logging an error, as TensorRT does) unless built version-compatible / AMPERE_PLUS;
- an execution context "executes" by running the embedded ONNX graph with ONNX Runtime on the
  bytes found at the input *address* and writing the results at the output *addresses*.

These stand-ins prove the API surface and the runner's plumbing (names, shapes, addresses,
streams, batch splitting, release order); they do not prove TensorRT's behaviour, numerics or
speed. Only a run on a TensorRT machine (benchmarks/gpu_check.py) does that.
"""

from __future__ import annotations

import base64
import ctypes
import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

import trt_surfaces

PLAN_MARKER = "fmabs-standin-plan"


@dataclass
class StandinState:
    """Knobs and records shared by one stand-in module's objects."""

    version: str
    #: Compute capability of the stand-in "GPU" (what plans are built for and checked against).
    compute_capability: str = "8.7"
    calls: list[tuple] = field(default_factory=list)
    #: Make the next build return None (as TensorRT does on failure), logging this message.
    fail_build_with: str | None = None
    #: Set by tests to make execute_async_v3 return False.
    fail_execute: bool = False


# -- strictness --------------------------------------------------------------------------------


class _Strict:
    """Base of stand-in classes: public attributes outside the version's surface do not exist."""

    _surface: frozenset[str] = frozenset()
    _version: str = ""
    _cls_name: str = ""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in type(self)._surface:
            raise AttributeError(
                f"stand-in TensorRT {type(self)._version}: '{type(self)._cls_name}' has no attribute '{name}'"
            )
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self)._surface:
            raise AttributeError(
                f"stand-in TensorRT {type(self)._version}: cannot set '{type(self)._cls_name}.{name}'"
            )
        object.__setattr__(self, name, value)


class _EnumMember:
    def __init__(self, enum: str, name: str, value: int) -> None:
        self._enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EnumMember) and (other._enum, other.value) == (
            self._enum,
            self.value,
        )

    def __hash__(self) -> int:
        return hash((self._enum, self.value))

    def __repr__(self) -> str:
        return f"<{self._enum}.{self.name}: {self.value}>"


def _make_enum(name: str, members: dict[str, int]) -> type:
    return type(name, (), {key: _EnumMember(name, key, value) for key, value in members.items()})


# -- the implementations (restricted per version by make_tensorrt) --------------------------


class _HostMemory(bytes):
    """IHostMemory: a bytes object (buffer protocol) with ``nbytes``."""

    _surface: frozenset[str] = frozenset()
    _version = ""
    _cls_name = "IHostMemory"

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in type(self)._surface:
            raise AttributeError(
                f"stand-in TensorRT {type(self)._version}: 'IHostMemory' has no attribute '{name}'"
            )
        return bytes.__getattribute__(self, name)

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> Any:
        return None


class _Tensor(_Strict):
    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        self._name, self._shape, self._dtype = name, tuple(shape), dtype

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> Any:
        return self._dtype


class _Network(_Strict):
    def __init__(self, flag_names: set[str]) -> None:
        self._flag_names = flag_names
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []
        self._onnx_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> Any:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> Any:
        return self._outputs[index]

    @property
    def num_layers(self) -> int:
        return 0


class _ParserError(_Strict):
    def __init__(self, code: Any, desc: str, node: int, node_name: str, node_operator: str) -> None:
        self._code, self._desc, self._node = code, desc, node
        self._node_name, self._node_operator = node_name, node_operator

    def code(self) -> Any:
        return self._code

    def desc(self) -> str:
        return self._desc

    def file(self) -> str:
        return "standin_parser.py"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return "parse"

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._node_operator

    def local_function_stack(self) -> list[str]:
        return []


_ONNX_TO_DTYPE = {
    onnx.TensorProto.FLOAT: "FLOAT",
    onnx.TensorProto.FLOAT16: "HALF",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
}


class _Parser(_Strict):
    def __init__(self, network: Any, logger: Any) -> None:
        self._network, self._logger, self._errors = network, logger, []

    def parse_from_file(self, path: str) -> bool:
        self._module._state.calls.append(("parse_from_file", path))
        with open(path, "rb") as handle:
            return self.parse(handle.read())

    def parse(self, model: bytes, path: str | None = None) -> bool:
        proto = onnx.load_from_string(bytes(model))
        mod = self._module
        codes = mod.ErrorCode
        graph = proto.graph
        initialisers = {i.name for i in graph.initializer}
        uint8_tensors = {
            i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        } - initialisers
        for index, node in enumerate(graph.node):
            if not onnx.defs.has(node.op_type, node.domain):
                self._errors.append(
                    _wrap(
                        mod,
                        "ParserError",
                        codes.UNSUPPORTED_NODE,
                        f"No importer registered for op: {node.op_type}",
                        index,
                        node.name,
                        node.op_type,
                    )
                )
            uses_uint8 = any(name in uint8_tensors for name in node.input)
            casts_to_float = node.op_type == "Cast" and any(
                a.name == "to" and a.i in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                for a in node.attribute
            )
            if uses_uint8 and not casts_to_float:
                self._errors.append(
                    _wrap(
                        mod,
                        "ParserError",
                        codes.INVALID_NODE,
                        "UINT8 input may only be consumed by a Cast",
                        index,
                        node.name,
                        node.op_type,
                    )
                )
        if self._errors:
            return False
        network = self._network
        for value in graph.input:
            if value.name in initialisers:
                continue
            network._inputs.append(
                _wrap(mod, "ITensor", value.name, _shape(value), _dtype(mod, value))
            )
        for value in graph.output:
            network._outputs.append(
                _wrap(mod, "ITensor", value.name, _shape(value), _dtype(mod, value))
            )
        network._onnx_bytes = bytes(model)
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Any:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []


def _shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def _dtype(mod: types.ModuleType, value: onnx.ValueInfoProto) -> Any:
    return getattr(mod.DataType, _ONNX_TO_DTYPE[value.type.tensor_type.elem_type])


class _Profile(_Strict):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(
        self, name: str, min: tuple, opt: tuple, max: tuple
    ) -> None:  # noqa: A002 - TRT's names
        self._shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, name: str) -> list[tuple[int, ...]]:
        return list(self._shapes[name])


class _TimingCache(_Strict):
    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def serialize(self) -> Any:
        return _wrap_bytes(self._module, self._data + b"|timed")


class _Config(_Strict):
    def __init__(self) -> None:
        mod = self._module
        self._flags = {"TF32"}  # TensorRT enables TF32 by default
        self._pools: dict[str, int] = {}
        self._level = 3
        self._hardware_level = mod.HardwareCompatibilityLevel.NONE
        self._profiles: list[Any] = []
        self._cache: Any = None

    def _check_flag(self, flag: Any) -> str:
        enum = self._module.BuilderFlag
        if not isinstance(flag, _EnumMember) or getattr(enum, flag.name, None) != flag:
            raise TypeError(
                f"stand-in TensorRT {self._version}: set_flag takes a BuilderFlag member, got {flag!r}"
            )
        return flag.name

    def set_flag(self, flag: Any) -> None:
        name = self._check_flag(flag)
        self._module._state.calls.append(("set_flag", name))
        self._flags.add(name)

    def clear_flag(self, flag: Any) -> None:
        name = self._check_flag(flag)
        self._module._state.calls.append(("clear_flag", name))
        self._flags.discard(name)

    def get_flag(self, flag: Any) -> bool:
        return self._check_flag(flag) in self._flags

    @property
    def flags(self) -> int:
        enum = self._module.BuilderFlag
        return sum(1 << int(getattr(enum, name)) for name in self._flags)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        if getattr(self._module.MemoryPoolType, getattr(pool, "name", ""), None) != pool:
            raise TypeError(f"set_memory_pool_limit takes a MemoryPoolType member, got {pool!r}")
        self._module._state.calls.append(("set_memory_pool_limit", pool.name, int(size)))
        self._pools[pool.name] = int(size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool.name, 1 << 40)

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value <= 5:
            raise ValueError(f"builder_optimization_level must be an int in 0..5, got {value!r}")
        self._module._state.calls.append(("builder_optimization_level", value))
        self._level = value

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._hardware_level

    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, value: Any) -> None:
        levels = self._module.HardwareCompatibilityLevel
        if getattr(levels, getattr(value, "name", ""), None) != value:
            raise TypeError(
                f"hardware_compatibility_level takes a HardwareCompatibilityLevel member, got {value!r}"
            )
        self._module._state.calls.append(("hardware_compatibility_level", value.name))
        self._hardware_level = value

    def create_timing_cache(self, data: bytes) -> Any:
        return _wrap(self._module, "ITimingCache", bytes(data))

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        self._module._state.calls.append(("set_timing_cache", cache._data[:16], ignore_mismatch))
        if cache._data.startswith(b"OTHER-DEVICE") and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._cache

    def add_optimization_profile(self, profile: Any) -> int:
        for low, opt, high in profile._shapes.values():
            if (
                len(low) != len(high)
                or not all(a <= b <= c for a, b, c in zip(low, opt, high))
                or min(low) < 1
            ):
                return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1


class _Builder(_Strict):
    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> Any:
        mod = self._module
        if not isinstance(flags, int) or isinstance(flags, bool):
            raise TypeError(f"create_network takes an int bit mask, got {flags!r}")
        members = trt_surfaces.ENUMS[self._version]["NetworkDefinitionCreationFlag"]
        names = {name for name, value in members.items() if flags & (1 << value)}
        unknown = flags & ~sum(1 << v for v in members.values())
        if unknown:
            raise ValueError(
                f"stand-in TensorRT {self._version}: unknown network creation flag bits {unknown:#x}"
            )
        mod._state.calls.append(("create_network", flags, sorted(names)))
        return _wrap(mod, "INetworkDefinition", names)

    def create_builder_config(self) -> Any:
        return _wrap(self._module, "IBuilderConfig")

    def create_optimization_profile(self) -> Any:
        return _wrap(self._module, "IOptimizationProfile")

    @property
    def num_DLA_cores(self) -> int:
        return 0

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        mod, state = self._module, self._module._state
        state.calls.append(("build_serialized_network",))
        # 10.x: strong typing is opt-in through the flag; 11.x: always on.
        strongly_typed = self._version.startswith("11") or "STRONGLY_TYPED" in network._flag_names
        weak = {"FP16", "INT8", "BF16", "FP8", "INT4"} & config._flags
        problem = state.fail_build_with
        if not strongly_typed:
            problem = "stand-in: fmabs-edge builds strongly typed networks only"
        elif weak:
            problem = f"stand-in: precision flags {sorted(weak)} are not allowed with strong typing"
        elif not config._profiles and any(-1 in t.shape for t in network._inputs):
            problem = (
                "Network has dynamic or shape inputs, but no optimization profile has been defined."
            )
        if problem:
            self._logger.log(mod.ILogger.Severity.ERROR, problem)
            return None
        profile = config._profiles[0]
        plan = {
            "marker": PLAN_MARKER,
            "version": mod.__version__,
            "compute_capability": state.compute_capability,
            "version_compatible": "VERSION_COMPATIBLE" in config._flags,
            "hardware_level": config._hardware_level.name,
            "flags": sorted(config._flags),
            "io": [[t.name, "INPUT", t.dtype.name, list(t.shape)] for t in network._inputs]
            + [[t.name, "OUTPUT", t.dtype.name, list(t.shape)] for t in network._outputs],
            "profile": {
                name: [list(s) for s in shapes] for name, shapes in profile._shapes.items()
            },
            "onnx": base64.b64encode(network._onnx_bytes).decode(),
        }
        return _wrap_bytes(mod, json.dumps(plan).encode())


class _Engine(_Strict):
    def __init__(self, plan: dict) -> None:
        self._plan = plan
        self._io = {name: (mode, dtype, tuple(shape)) for name, mode, dtype, shape in plan["io"]}
        self._names = [entry[0] for entry in plan["io"]]

    def __del__(self) -> None:
        self._module._state.calls.append(("del", "ICudaEngine"))

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> Any:
        return getattr(self._module.TensorIOMode, self._io[name][0])

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(self._module.DataType, self._io[name][1])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or name not in self._plan["profile"]:
            raise RuntimeError(f"no profile shape for {name!r} in profile {profile_index}")
        return [tuple(s) for s in self._plan["profile"][name]]

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def create_execution_context(self) -> Any:
        return _wrap(self._module, "IExecutionContext", self)


class _Context(_Strict):
    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._session: Any = None

    def __del__(self) -> None:
        self._module._state.calls.append(("del", "IExecutionContext"))

    def _inputs(self) -> list[str]:
        return [n for n in self._engine._names if self._engine._io[n][0] == "INPUT"]

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self._engine.get_tensor_profile_shape(name, 0)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or not all(a <= b <= c for a, b, c in zip(low, shape, high)):
            return False
        self._module._state.calls.append(("set_input_shape", name, shape))
        self._shapes[name] = shape
        return True

    def infer_shapes(self) -> list[str]:
        return [n for n in self._inputs() if n not in self._shapes]

    @property
    def all_binding_shapes_specified(self) -> bool:
        return not self.infer_shapes()

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._shapes:
            return self._shapes[name]
        shape = self._engine._io[name][2]
        batch = next(iter(self._shapes.values()))[0] if self._shapes else -1
        return tuple(batch if d == -1 else d for d in shape)

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self._engine._io or not isinstance(address, int):
            return False
        self._addresses[name] = address
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        state = self._module._state
        if not isinstance(stream_handle, int):
            raise TypeError(
                f"execute_async_v3 takes the stream's integer handle, got {stream_handle!r}"
            )
        state.calls.append(("execute_async_v3", stream_handle, dict(self._shapes)))
        if (
            state.fail_execute
            or self.infer_shapes()
            or set(self._addresses) != set(self._engine._names)
        ):
            return False
        import onnxruntime as ort

        if self._session is None:
            onnx_bytes = base64.b64decode(self._engine._plan["onnx"])
            self._session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        feeds = {
            name: _read(self._addresses[name], self._shapes[name], self._dtype(name))
            for name in self._inputs()
        }
        outputs = [n for n in self._engine._names if n not in feeds]
        for name, value in zip(outputs, self._session.run(outputs, feeds)):
            _write(self._addresses[name], np.ascontiguousarray(value, dtype=self._dtype(name)))
        return True

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(
            self._module.nptype(getattr(self._module.DataType, self._engine._io[name][1]))
        )


def _read(address: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (ctypes.c_ubyte * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _write(address: int, array: np.ndarray) -> None:
    ctypes.memmove(address, array.ctypes.data, array.nbytes)


class _Runtime(_Strict):
    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._host_code = False

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        self._module._state.calls.append(("engine_host_code_allowed", bool(value)))
        self._host_code = bool(value)

    def deserialize_cuda_engine(self, data: Any) -> Any:
        mod = self._module
        error = mod.ILogger.Severity.ERROR
        try:
            plan = json.loads(bytes(data).decode())
            if plan.get("marker") != PLAN_MARKER:
                raise ValueError("not a plan")
        except (ValueError, UnicodeDecodeError):
            self._logger.log(
                error, "Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed."
            )
            return None
        mod._state.calls.append(("deserialize_cuda_engine", len(bytes(data))))
        built, running = plan["version"], mod.__version__
        if built != running:
            b_major, r_major = int(built.split(".")[0]), int(running.split(".")[0])
            allowed = (
                plan["version_compatible"]
                and self._host_code
                and (b_major, r_major) in ((10, 10), (10, 11), (11, 11))
            )
            if not allowed:
                self._logger.log(
                    error,
                    "The engine plan file is not compatible with this version of TensorRT, expecting library "
                    f"version {running} got {built}, please rebuild.",
                )
                return None
        cc = mod._state.compute_capability
        if plan["compute_capability"] != cc and plan["hardware_level"] != "AMPERE_PLUS":
            self._logger.log(
                error,
                "The engine plan file is generated on an incompatible device, expecting compute "
                f"{cc} got compute {plan['compute_capability']}, please rebuild.",
            )
            return None
        return _wrap(mod, "ICudaEngine", plan)

    def load_runtime(self, path: str) -> Any:
        raise RuntimeError("stand-in: no lean runtime libraries")


class _ILogger:
    """Base class user loggers derive from (not strict: subclasses add their own members)."""

    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:
        raise NotImplementedError


class _Logger(_ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: Any, msg: str) -> None:
        pass


_IMPLEMENTATIONS = {
    "Builder": _Builder,
    "INetworkDefinition": _Network,
    "ITensor": _Tensor,
    "OnnxParser": _Parser,
    "ParserError": _ParserError,
    "IBuilderConfig": _Config,
    "IOptimizationProfile": _Profile,
    "ITimingCache": _TimingCache,
    "Runtime": _Runtime,
    "ICudaEngine": _Engine,
    "IExecutionContext": _Context,
}


def _wrap(mod: types.ModuleType, cls_name: str, *args: Any) -> Any:
    return getattr(mod, cls_name)(*args)


def _wrap_bytes(mod: types.ModuleType, data: bytes) -> Any:
    return mod.IHostMemory(data)


def _nptype(mod: types.ModuleType) -> Any:
    table = {
        "FLOAT": np.float32,
        "HALF": np.float16,
        "INT8": np.int8,
        "INT32": np.int32,
        "INT64": np.int64,
        "BOOL": np.bool_,
        "UINT8": np.uint8,
    }

    def nptype(dtype: Any) -> type:
        if (
            getattr(mod.DataType, getattr(dtype, "name", ""), None) != dtype
            or dtype.name not in table
        ):
            raise TypeError(
                f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {dtype!r}"
            )
        return table[dtype.name]

    return nptype


def make_tensorrt(version: str) -> types.ModuleType:
    """A fresh stand-in ``tensorrt`` module for ``version`` (``"10.3"`` or ``"11.1"``)."""
    mod = types.ModuleType(
        "tensorrt", f"Stand-in TensorRT {version} (test double; proves the API surface only)"
    )
    mod._state = StandinState(version)
    members = trt_surfaces.MEMBERS[version]
    enums = {name: _make_enum(name, values) for name, values in trt_surfaces.ENUMS[version].items()}
    severity = enums.pop("Severity")
    allowed_module = trt_surfaces.MODULE[version]
    values: dict[str, Any] = {"__version__": trt_surfaces.VERSIONS[version]}
    values.update(enums)
    for cls_name, implementation in _IMPLEMENTATIONS.items():
        values[cls_name] = type(
            cls_name,
            (implementation,),
            {
                "_surface": frozenset(members[cls_name]),
                "_version": version,
                "_cls_name": cls_name,
                "_module": mod,
            },
        )
    values["IHostMemory"] = type(
        "IHostMemory",
        (_HostMemory,),
        {"_surface": frozenset(members["IHostMemory"]), "_version": version},
    )
    values["ILogger"] = type("ILogger", (_ILogger,), {"Severity": severity})
    logger_cls = type("Logger", (_Logger, values["ILogger"]), {})
    for name in ("VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"):
        setattr(logger_cls, name, getattr(severity, name))
    values["Logger"] = logger_cls
    values["nptype"] = _nptype(mod)
    values["volume"] = lambda shape: int(np.prod(tuple(shape)))
    values["get_nv_onnx_parser_version"] = (
        lambda: int(trt_surfaces.VERSIONS[version].split(".")[0]) * 1000
    )
    data_type = enums["DataType"]
    for alias, member in (
        ("float32", "FLOAT"),
        ("float16", "HALF"),
        ("int8", "INT8"),
        ("int32", "INT32"),
        ("int64", "INT64"),
        ("bool", "BOOL"),
        ("uint8", "UINT8"),
    ):
        values[alias] = getattr(data_type, member)
    for name in allowed_module:
        if name not in values:
            values[name] = type(name, (), {"__doc__": f"stand-in {version}: present, not modelled"})
    extra = set(values) - allowed_module
    if extra:
        raise AssertionError(
            f"stand-in {version} would expose names outside its surface: {sorted(extra)}"
        )
    for name, value in values.items():
        setattr(mod, name, value)
    return mod
