"""Reference points measured in the benchmark's own process.

- :func:`measure_gemm_peak`: the CPU's own limit, a float32 matrix product (numpy's BLAS) timed
  for a few seconds; ``gemm_peak_gflop_per_s`` is the best repetition.
- :func:`count_macs`: multiply-accumulates per image of an ONNX graph, from Conv, ConvTranspose,
  MatMul and Gemm nodes and the shapes ONNX shape inference finds at batch 1. One MAC is two
  FLOPs; the achieved GFLOP/s of a variant is ``flops_per_image * batch / infer time``.
- :class:`ExternalOnnx`: any ONNX file (for example anomalib's PatchCore export) timed in the
  inference stage alone, on an input of its own name, shape and dtype; no accuracy.
- :func:`profile_ort`: ONNX Runtime's profiler over a few runs, summarised per operator type, to
  say where the inference time goes.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fmabs_edge.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

#: Operators whose multiply-accumulates are counted; everything else is taken as negligible.
COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def measure_gemm_peak(seconds: float = 2.0, size: int = 1024, seed: int = 0) -> dict[str, float]:
    """GFLOP/s of ``(size, size) @ (size, size)`` float32 products, best of ``seconds`` of repeats.

    numpy's BLAS uses every core it is allowed, as ONNX Runtime does by default.
    """
    if seconds <= 0 or size < 16:
        raise UsageError(f"GEMM peak needs seconds > 0 and size >= 16, got {seconds} and {size}.")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool and caches
    best_s, runs = math.inf, 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or runs < 3:
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best_s = min(best_s, time.perf_counter() - start)
        runs += 1
    gflop = 2.0 * size**3 / 1e9
    logger.info(
        "GEMM peak: %.1f GFLOP/s (%d×%d float32, best of %d)", gflop / best_s, size, size, runs
    )
    return {
        "gemm_peak_gflop_per_s": gflop / best_s,
        "gemm_size": float(size),
        "gemm_runs": float(runs),
    }


@dataclass
class MacCount:
    """Multiply-accumulates of one image through a graph."""

    macs_per_image: int
    #: MACs per counted operator type.
    by_op: dict[str, int] = field(default_factory=dict)
    #: Counted-type nodes whose shapes shape inference could not resolve (not in the total).
    unresolved_nodes: list[str] = field(default_factory=list)

    @property
    def gflop_per_image(self) -> float:
        return 2.0 * self.macs_per_image / 1e9


def _dims(value_type: onnx.TypeProto) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") else None for d in value_type.tensor_type.shape.dim
    ]


def _fix_input_dims(
    model: onnx.ModelProto, batch_size: int, input_shape: tuple[int, ...] | None
) -> None:
    """Give every graph input concrete dims: a dynamic first dim is the batch; others need
    ``input_shape``."""
    initializers = {init.name for init in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for index, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if input_shape is not None and index < len(input_shape):
                value = int(input_shape[index])
            elif index == 0:
                value = batch_size
            else:
                raise ModelError(
                    f"Input '{graph_input.name}' has a dynamic dimension {index}; give its shape "
                    "(input_shape=...) to count operations."
                )
            dim.ClearField("dim_param")
            dim.dim_value = value


def count_macs(
    model: str | Path | onnx.ModelProto,
    batch_size: int = 1,
    input_shape: tuple[int, ...] | None = None,
) -> MacCount:
    """Count the MACs per image of Conv/ConvTranspose/MatMul/Gemm nodes (main graph only).

    Conv: ``|out| * C_in/groups * kH * kW``; ConvTranspose: ``|in| * C_out/groups * kH * kW``;
    MatMul: ``|out| * K``; Gemm: ``M * N * K``. Quantised graphs in Q/DQ form keep these nodes, so
    INT8 variants count the same work as FP32.
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"ONNX file not found: {path}.")
        model = onnx.load(str(path))
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: dims are rewritten
    _fix_input_dims(model, batch_size, input_shape)
    counted = _count_fixed(model, batch_size)
    if counted.unresolved_nodes:
        # Shapes computed through Transpose/Reshape of constants defeat ONNX's data propagation;
        # ONNX Runtime's basic optimisation folds those constants (Conv work is left as it is).
        folded = _fold_constants(model)
        if folded is not None:
            counted = _count_fixed(folded, batch_size)
    if counted.unresolved_nodes:
        logger.warning(
            "%d nodes with unknown shapes left out of the operation count: %s",
            len(counted.unresolved_nodes),
            counted.unresolved_nodes[:5],
        )
    return counted


def _count_fixed(model: onnx.ModelProto, batch_size: int) -> MacCount:
    """Count on a graph whose inputs have concrete dims."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # onnx raises InferenceError and others
        raise ModelError(f"ONNX shape inference failed, cannot count operations: {err}") from err

    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[info.name] = _dims(info.type)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)

    total, by_op, unresolved = 0, {}, []
    for node in graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        macs = _node_macs(node, shapes)
        if macs is None:
            unresolved.append(node.name or node.output[0])
            continue
        total += macs
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return MacCount(total // batch_size, {k: v // batch_size for k, v in by_op.items()}, unresolved)


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The graph after ONNX Runtime's basic (constant-folding) optimisation; None if that fails."""
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "folded.onnx"
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(target)
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            return onnx.load(str(target))
    except Exception as err:  # onnxruntime raises its own types; counting is best effort
        logger.debug("Constant folding for the operation count failed: %s", err)
        return None


def _known(shape: list[int | None] | None) -> bool:
    return shape is not None and len(shape) > 0 and all(d is not None and d > 0 for d in shape)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> int | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    first = shapes.get(node.input[0])
    second = shapes.get(node.input[1]) if len(node.input) > 1 else None
    out = shapes.get(node.output[0])
    if node.op_type == "Conv":
        if not (_known(second) and _known(out)):
            return None
        return math.prod(out) * math.prod(second[1:])
    if node.op_type == "ConvTranspose":
        if not (_known(first) and _known(second)):
            return None
        return math.prod(first) * math.prod(second[1:])
    if node.op_type == "MatMul":
        if not (_known(first) and _known(out)):
            return None
        return math.prod(out) * first[-1]
    if node.op_type == "Gemm":
        if not (_known(first) and _known(out)):
            return None
        depth = first[0] if attrs.get("transA", 0) else first[1]
        return math.prod(out) * depth
    return None


class ExternalOnnx:
    """An ONNX file outside the fmabs-edge contract, timed on random input of its own layout.

    ``input_shape`` overrides the file's input shape (its dims other than the batch must be fixed
    otherwise). A fixed batch dimension limits the batch sizes it is timed at.
    """

    backend = "ort-external"

    def __init__(
        self,
        path: str | Path,
        input_shape: tuple[int, ...] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"Reference ONNX file not found: {self.path}.")
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(
                f"{self.path}: ONNX Runtime cannot load this reference graph ({err})."
            ) from err
        first = self._session.get_inputs()[0]
        self.input_name = first.name
        self.input_dims: list[int | None] = [
            d if isinstance(d, int) and d > 0 else None for d in first.shape
        ]
        if input_shape is not None:
            self.input_dims = [int(d) for d in input_shape]
        if any(d is None for d in self.input_dims[1:]):
            raise UsageError(
                f"{self.path}: input '{self.input_name}' has dynamic dims {first.shape}; "
                "give its shape, e.g. 1,3,256,256."
            )
        self.input_dtype = _ORT_DTYPES.get(first.type)
        if self.input_dtype is None:
            raise UsageError(f"{self.path}: input type {first.type} is not supported for timing.")
        self._inputs: dict[int, np.ndarray] = {}

    def example_input(self, batch_size: int) -> np.ndarray:
        """Random input at ``batch_size`` (cached); UsageError if the file fixes another batch."""
        fixed = self.input_dims[0]
        if fixed is not None and fixed != batch_size:
            raise UsageError(f"{self.path.name} has a fixed batch of {fixed}")
        if batch_size not in self._inputs:
            shape = (batch_size, *self.input_dims[1:])
            rng = np.random.default_rng(batch_size)
            if np.issubdtype(self.input_dtype, np.integer):
                self._inputs[batch_size] = rng.integers(0, 255, size=shape).astype(self.input_dtype)
            else:
                self._inputs[batch_size] = rng.random(size=shape).astype(self.input_dtype)
        return self._inputs[batch_size]

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self.input_name: batch})

    def macs(self) -> MacCount | None:
        """Operation count at batch 1 (None with a warning when it cannot be found)."""
        shape = (1, *self.input_dims[1:])
        try:
            return count_macs(self.path, 1, shape)
        except ModelError as err:
            logger.warning("No operation count for %s: %s", self.path, err)
            return None

    def close(self) -> None:
        self._session = None


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def profile_ort(
    path: str | Path, batch: np.ndarray, runs: int = 20, input_name: str = "images"
) -> list[dict[str, Any]]:
    """Run ONNX Runtime's profiler and sum the node time per operator type, largest first.

    Returns ``[{"op_type", "total_ms_per_run", "share"}]``; ``share`` is of all node time.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort_profile")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {input_name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        args = event.get("args", {})
        if (
            event.get("cat") != "Node"
            or "op_name" not in args
            or not event.get("name", "").endswith("_kernel_time")
        ):
            continue
        totals[args["op_name"]] = (
            totals.get(args["op_name"], 0.0) + float(event.get("dur", 0)) / 1000.0
        )
    overall = sum(totals.values()) or 1.0
    rows = [
        {"op_type": op, "total_ms_per_run": ms / runs, "share": ms / overall}
        for op, ms in sorted(totals.items(), key=lambda item: -item[1])
    ]
    return rows
