"""The Python names of TensorRT 10.3 and of TensorRT 11.x, as data, for the stand-in modules.

Taken from /work/shared/TENSORRT.md (NVIDIA's bindings at tags v10.3.0 and v11.1, and the
10.x -> 11.x migration pages), which lists what each version has, what 11.x removed and what was
added after 10.3. Only names that document mentions (or that every TensorRT 10+ binding has, such
as ``IHostMemory.nbytes``) are listed: a name missing here is one the code must not rely on.

Enum values are numbered as each version numbers them where the source gives the number:
``NetworkDefinitionCreationFlag`` (10.3: EXPLICIT_BATCH 0, STRONGLY_TYPED 1; 11.x:
STRONGLY_TYPED 0, PREFER_JIT_PYTHON_PLUGINS 1, PREFER_AOT_PYTHON_PLUGINS 2) and ``BuilderFlag``
(10.x header; 11.x with VERSION_COMPATIBLE 12 as TENSORRT.md states, the other 11.x values as a
public Rust mirror of a post-10.x header, trtx-sys, numbers them: UNCONFIRMED against the 11.1
bindings, and only TF32 and VERSION_COMPATIBLE matter to the code). Values of the enums the code never compares numerically are
the stand-in's own. The point: any code that hard-codes an integer fails on one of the two.
"""

from __future__ import annotations

# -- enums: name -> value ---------------------------------------------------------------------

_BUILDER_FLAGS_10_3 = {
    "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
    "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9,
    "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12,
    "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16,
    "BF16": 17, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19, "WEIGHTLESS": 19,
    "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22,
}  # fmt: skip
_BUILDER_FLAGS_11 = {
    "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
    "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 12,
    "EXCLUDE_LEAN_RUNTIME": 13, "ERROR_ON_TIMING_CACHE_MISS": 15, "DISABLE_COMPILATION_CACHE": 17,
    "STRIP_PLAN": 18, "REFIT_IDENTICAL": 19, "WEIGHT_STREAMING": 20, "REFIT_INDIVIDUAL": 22,
    "STRICT_NANS": 23, "MONITOR_MEMORY": 24, "EDITABLE_TIMING_CACHE": 26,
    "DISTRIBUTIVE_INDEPENDENCE": 27,
}  # fmt: skip
_DATA_TYPES_10_3 = {
    "FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7,
    "INT64": 8, "INT4": 9,
}  # fmt: skip
_MEMORY_POOLS = {
    "WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3,
    "TACTIC_DRAM": 4, "TACTIC_SHARED_MEMORY": 5,
}  # fmt: skip
_ERROR_CODES = {
    "SUCCESS": 0, "INTERNAL_ERROR": 1, "MEM_ALLOC_FAILED": 2, "MODEL_DESERIALIZE_FAILED": 3,
    "INVALID_VALUE": 4, "INVALID_GRAPH": 5, "INVALID_NODE": 6, "UNSUPPORTED_GRAPH": 7,
    "UNSUPPORTED_NODE": 8,
}  # fmt: skip
_SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}

ENUMS = {
    "10.3": {
        "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
        "BuilderFlag": _BUILDER_FLAGS_10_3,
        "MemoryPoolType": _MEMORY_POOLS,
        "HardwareCompatibilityLevel": {"NONE": 0, "AMPERE_PLUS": 1},
        "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
        "DataType": _DATA_TYPES_10_3,
        "ErrorCode": _ERROR_CODES,
        "OnnxParserFlag": {"NATIVE_INSTANCENORM": 0},
        "DeviceType": {"GPU": 0, "DLA": 1},
        "TacticSource": {
            "CUBLAS": 0,
            "CUBLAS_LT": 1,
            "CUDNN": 2,
            "EDGE_MASK_CONVOLUTIONS": 3,
            "JIT_CONVOLUTIONS": 4,
        },
        "QuantizationFlag": {"CALIBRATE_BEFORE_FUSION": 0},
        "Severity": _SEVERITY,
    },
    "11.1": {
        "NetworkDefinitionCreationFlag": {
            "STRONGLY_TYPED": 0,
            "PREFER_JIT_PYTHON_PLUGINS": 1,
            "PREFER_AOT_PYTHON_PLUGINS": 2,
        },
        "BuilderFlag": _BUILDER_FLAGS_11,
        "MemoryPoolType": _MEMORY_POOLS,
        "HardwareCompatibilityLevel": {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2},
        "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
        "DataType": {**_DATA_TYPES_10_3, "FP4": 10},
        "ErrorCode": _ERROR_CODES,
        "OnnxParserFlag": {
            "NATIVE_INSTANCENORM": 0,
            "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA": 1,
            "REPORT_CAPABILITY_DLA": 2,
            "ENABLE_PLUGIN_OVERRIDE": 3,
            "ADJUST_FOR_DLA": 4,
        },
        "DeviceType": {"GPU": 0, "DLA": 1},
        "TacticSource": {"EDGE_MASK_CONVOLUTIONS": 3, "JIT_CONVOLUTIONS": 4},
        "ExecutionContextAllocationStrategy": {
            "STATIC": 0,
            "ON_PROFILE_CHANGE": 1,
            "USER_MANAGED": 2,
        },
        "Severity": _SEVERITY,
    },
}

# -- module-level names -----------------------------------------------------------------------

_MODULE_COMMON = {
    "__version__", "Logger", "ILogger", "Builder", "Runtime", "OnnxParser", "nptype", "volume",
    "get_nv_onnx_parser_version", "float32", "float16", "int8", "int32", "int64", "bool", "uint8",
    "ICudaEngine", "IExecutionContext", "IBuilderConfig", "INetworkDefinition", "IOptimizationProfile",
    "ITimingCache", "IHostMemory", "ITensor", "ParserError",
}  # fmt: skip
MODULE = {
    "10.3": _MODULE_COMMON
    | {"IInt8EntropyCalibrator2", "IAlgorithmSelector", "IStreamReader"}
    | {name for name in ENUMS["10.3"] if name != "Severity"},
    "11.1": _MODULE_COMMON
    | {"IStreamReaderV2"}
    | {name for name in ENUMS["11.1"] if name != "Severity"},
}

# -- class members ----------------------------------------------------------------------------

_COMMON_MEMBERS = {
    "Builder": {
        "create_network", "create_builder_config", "create_optimization_profile",
        "build_serialized_network", "num_DLA_cores",
    },
    "INetworkDefinition": {"num_inputs", "get_input", "num_outputs", "get_output", "num_layers"},
    "ITensor": {"name", "shape", "dtype"},
    "OnnxParser": {
        "parse", "parse_from_file", "num_errors", "get_error", "clear_errors", "supports_model_v2",
        "num_subgraphs", "is_subgraph_supported", "get_subgraph_nodes",
    },
    "ParserError": {
        "code", "desc", "file", "line", "func", "node", "node_name", "node_operator",
        "local_function_stack",
    },
    "IBuilderConfig": {
        "set_memory_pool_limit", "get_memory_pool_limit", "builder_optimization_level",
        "hardware_compatibility_level", "set_flag", "clear_flag", "get_flag", "flags",
        "create_timing_cache", "set_timing_cache", "get_timing_cache", "add_optimization_profile",
        "default_device_type", "DLA_core", "can_run_on_DLA",
    },
    "IOptimizationProfile": {"set_shape", "get_shape"},
    "ITimingCache": {"serialize"},
    "IHostMemory": {"nbytes", "dtype"},
    "Runtime": {"deserialize_cuda_engine", "engine_host_code_allowed", "load_runtime"},
    "ICudaEngine": {
        "num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
        "get_tensor_location", "get_tensor_format", "is_shape_inference_io", "get_tensor_profile_shape",
        "num_optimization_profiles", "name", "hardware_compatibility_level", "num_layers",
        "create_execution_context", "serialize",
    },
    "IExecutionContext": {
        "set_input_shape", "get_tensor_shape", "set_tensor_address", "get_tensor_address",
        "execute_async_v3", "set_optimization_profile_async", "all_binding_shapes_specified",
        "infer_shapes",
    },
    "Logger": {"log", "Severity", "VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"},
    "ILogger": {"log", "Severity"},
}  # fmt: skip
_ONLY_10_3 = {
    "Builder": {"platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"},
    "ITensor": {"dynamic_range", "set_dynamic_range"},
    "OnnxParser": {"supports_model", "parse_with_weight_descriptors"},
    "IBuilderConfig": {
        "int8_calibrator", "set_calibration_profile", "get_calibration_profile", "set_quantization_flag",
        "clear_quantization_flag", "get_quantization_flag", "quantization_flags", "algorithm_selector",
    },
    "ICudaEngine": {
        "device_memory_size", "get_device_memory_size_for_profile",
        "create_execution_context_without_device_memory", "has_implicit_batch_dimension",
        "weight_streaming_budget", "minimum_weight_streaming_budget",
    },
    "IExecutionContext": {"all_shape_inputs_specified"},
}  # fmt: skip
_ONLY_11 = {
    "OnnxParser": {"load_model_proto", "load_initializer", "parse_model_proto"},
    "ITimingCache": {"query", "update", "queryKeys"},
    "ICudaEngine": {"device_memory_size_v2", "get_device_memory_size_for_profile_v2", "create_runtime_config"},
}  # fmt: skip

MEMBERS = {
    "10.3": {cls: names | _ONLY_10_3.get(cls, set()) for cls, names in _COMMON_MEMBERS.items()},
    "11.1": {cls: names | _ONLY_11.get(cls, set()) for cls, names in _COMMON_MEMBERS.items()},
}

#: ``trt.__version__`` of each stand-in.
VERSIONS = {"10.3": "10.3.0.30", "11.1": "11.1.0.106"}


def attribute_names(version: str, owner: str) -> set[str]:
    """Every name ``trt.<owner>.<name>`` may use in ``version`` (enum members or class members)."""
    if owner in ENUMS[version]:
        return set(ENUMS[version][owner])
    if owner == "ILogger":
        return MEMBERS[version]["ILogger"] | {"Severity"}
    return set(MEMBERS[version].get(owner, set()))
