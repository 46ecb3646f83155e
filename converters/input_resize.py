"""Optional in-graph resize: camera-size uint8 frames in, the model's S×S inside the graph.

``fmabs-edge export --input-size 1920x1080`` prepends to an exported fmabs-edge ONNX file::

    images (N, H, W, 3) uint8 -> Cast float32 -> Transpose NCHW -> Resize bilinear to S×S
        -> Round -> Clip [0, 255] -> Transpose NHWC -> (the original graph's input path)

so a 1920×1080 frame goes to the GPU untouched and the downscale runs there. The network input
stays uint8 and its first consumer is a Cast, the only way TensorRT accepts a uint8 input. Round
and clip give the original path the integer-valued pixels it was exported for.

A plain bilinear downscale is *not* the CPU preprocessing the model was trained with (OpenCV
INTER_AREA when shrinking), so the variant must pass :func:`gate_input_resize`: its evaluation
metrics against the CPU-resized original on labelled data, not only pixel parity. The metadata
records the resize (``conversion["input_resize"]``) and the gate's result.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fmabs_edge.artefacts import (
    INPUT_NAME,
    check_contract,
    graph_sha256,
    input_hw,
    load_onnx,
    read_metadata,
    write_bytes_atomic,
    write_metadata,
)
from fmabs_edge.errors import GateError, ModelError, UsageError

logger = logging.getLogger(__name__)

SCOPE = "fmabs.resize/"
CONVERSION_KEY = "input_resize"
METHOD = "in-graph bilinear (ONNX Resize linear, half_pixel), round, clip to [0, 255]"
#: Largest allowed metric drop of the resized variant against the CPU-resized original.
DEFAULT_MAX_DROP = 0.01
GATED_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> ``(1920, 1080)`` as ``(width, height)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise UsageError(
            f"--input-size '{text}': write WIDTHxHEIGHT of the camera frames, e.g. 1920x1080."
        )
    return int(match.group(1)), int(match.group(2))


def add_input_resize(
    onnx_path: str | Path, out_path: str | Path, width: int, height: int
) -> dict[str, Any]:
    """Write ``out_path``: ``onnx_path`` with an in-graph resize from ``height × width`` frames.

    ``out_path`` may equal ``onnx_path`` (rewritten atomically). Returns a report with the
    shapes and the parity of the variant against the original on OpenCV-bilinear-resized frames
    (a sanity check of the surgery; the accuracy decision is :func:`gate_input_resize`).
    """
    import onnx_graphsurgeon as gs

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = load_onnx(onnx_path)
    metadata = read_metadata(model, str(onnx_path))
    size = metadata.image_size
    check_contract(model, str(onnx_path), size)
    if input_hw(model) != (size, size):
        raise ModelError(
            f"{onnx_path} already takes {input_hw(model)} frames; "
            "add the resize to the plain export."
        )
    if width < 1 or height < 1:
        raise UsageError(f"Input size {width}x{height} must be positive.")

    # Surgery: the old input becomes an inner float tensor fed by the resize chain.
    graph = gs.import_onnx(model)
    old_input = next(t for t in graph.inputs if t.name == INPUT_NAME)
    batch_dim = old_input.shape[0]
    old_input.name = SCOPE + "model_frames"
    old_input.dtype = np.float32
    frames = gs.Variable(INPUT_NAME, dtype=np.uint8, shape=[batch_dim, height, width, 3])
    _resize_chain(gs, graph, frames, old_input, size)
    graph.inputs = [frames if t is old_input else t for t in graph.inputs]
    graph.cleanup().toposort()
    resized = gs.export_onnx(graph)
    del resized.opset_import[:]
    resized.opset_import.extend(model.opset_import)
    resized.ir_version = model.ir_version

    # Metadata and checks.
    metadata.conversion[CONVERSION_KEY] = {
        "input_hw": [height, width],
        "model_size": size,
        "method": METHOD,
        "source_graph_sha256": graph_sha256(model),
        "gate": {"status": "not run"},
    }
    write_metadata(resized, metadata)
    try:
        onnx.checker.check_model(resized)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"The resized graph from {onnx_path} is invalid: {err}") from err
    check_contract(resized, str(out_path), size)
    parity = _parity(model, resized, size, (height, width))
    write_bytes_atomic(out_path, resized.SerializeToString())
    logger.info("Wrote %s: %dx%d frames resized to %d in the graph", out_path, width, height, size)
    return {"onnx": str(out_path), "input_hw": [height, width], "model_size": size, **parity}


def _resize_chain(gs: Any, graph: Any, frames: Any, output: Any, size: int) -> None:
    """Append Cast -> NCHW -> Resize -> Round -> Clip -> NHWC from ``frames`` into ``output``."""

    def constant(name: str, value: np.ndarray) -> Any:
        return gs.Constant(SCOPE + name, value)

    def node(
        op: str,
        name: str,
        inputs: list,
        attrs: dict | None = None,
        out: Any = None,
        dtype=np.float32,
    ) -> Any:
        result = out if out is not None else gs.Variable(SCOPE + name + "_out", dtype=dtype)
        graph.nodes.append(gs.Node(op, SCOPE + name, attrs or {}, inputs, [result]))
        return result

    as_float = node("Cast", "cast", [frames], {"to": onnx.TensorProto.FLOAT})
    nchw = node("Transpose", "to_nchw", [as_float], {"perm": [0, 3, 1, 2]})
    shape = node("Shape", "shape", [nchw], dtype=np.int64)
    leading = node(
        "Slice",
        "batch_channels",
        [
            shape,
            constant("start", np.array([0], np.int64)),
            constant("stop", np.array([2], np.int64)),
        ],
        dtype=np.int64,
    )
    sizes = node(
        "Concat",
        "sizes",
        [leading, constant("spatial", np.array([size, size], np.int64))],
        {"axis": 0},
        dtype=np.int64,
    )
    resized = node(
        "Resize",
        "bilinear",
        [nchw, gs.Variable.empty(), gs.Variable.empty(), sizes],
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
    )
    rounded = node("Round", "round", [resized])
    clipped = node(
        "Clip",
        "clip",
        [
            rounded,
            constant("low", np.array(0.0, np.float32)),
            constant("high", np.array(255.0, np.float32)),
        ],
    )
    node("Transpose", "to_nhwc", [clipped], {"perm": [0, 2, 3, 1]}, out=output)


def _parity(
    original: onnx.ModelProto, resized: onnx.ModelProto, size: int, hw: tuple[int, int]
) -> dict[str, Any]:
    """Scores of the variant on camera-size frames vs the original on OpenCV-bilinear frames."""
    import cv2
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    height, width = hw
    base = rng.integers(
        0, 256, size=(2, max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8
    )
    frames = np.stack(
        [cv2.resize(b, (width, height), interpolation=cv2.INTER_LINEAR) for b in base]
    )
    shrunk = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames])
    options = ort.SessionOptions()
    options.log_severity_level = 3

    def run(model: onnx.ModelProto, batch: np.ndarray) -> dict[str, np.ndarray]:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = [output.name for output in model.graph.output]
        return dict(zip(names, session.run(names, {INPUT_NAME: batch})))

    got, want = run(resized, frames), run(original, shrunk)
    if got["anomaly_map"].shape != (2, 1, size, size) or not np.isfinite(got["image_score"]).all():
        raise ModelError(
            f"The resized graph gives maps {got['anomaly_map'].shape} and scores "
            f"{got['image_score']}; expected (2, 1, {size}, {size}) and finite scores."
        )
    return {
        "parity_max_score_diff": float(np.max(np.abs(got["image_score"] - want["image_score"]))),
        "parity_max_map_diff": float(np.max(np.abs(got["anomaly_map"] - want["anomaly_map"]))),
    }


def gate_input_resize(
    resized_onnx: str | Path,
    reference_onnx: str | Path,
    data: str | Path,
    max_drop: float = DEFAULT_MAX_DROP,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Gate an in-graph-resize variant on evaluation metrics against the CPU-resized original.

    Both are evaluated with ONNX Runtime on the labelled category folder ``data``: the variant
    gets frames resized (by the one preprocessing) to its camera size, the reference gets them
    at S×S. Image AUROC, pixel AUROC and AUPRO may drop by at most ``max_drop`` each. The
    result is written into the variant's metadata (graph untouched); a failure raises GateError
    and the variant stays on disk marked as failing.
    """
    from fmabs_edge.evaluate import evaluate_runner
    from fmabs_edge.runtime.ort_runner import OrtRunner

    resized_onnx = Path(resized_onnx)
    with OrtRunner.open(resized_onnx) as runner:
        if CONVERSION_KEY not in runner.metadata.conversion:
            raise UsageError(
                f"{resized_onnx} has no in-graph resize; make one with 'fmabs-edge export "
                "--input-size'."
            )
        variant = evaluate_runner(runner, data, batch_size=batch_size)
    with OrtRunner.open(reference_onnx) as runner:
        reference = evaluate_runner(runner, data, batch_size=batch_size)

    drops = {}
    for key in GATED_METRICS:
        if variant.get(key) is not None and reference.get(key) is not None:
            drops[key] = float(reference[key]) - float(variant[key])
    passed = bool(drops) and all(drop <= max_drop for drop in drops.values())
    result = {
        "status": "passed" if passed else "failed",
        "max_drop": max_drop,
        "drops": drops,
        "variant": {k: variant.get(k) for k in GATED_METRICS},
        "reference": {k: reference.get(k) for k in GATED_METRICS},
        "data": str(data),
        "n_images": variant.get("n_images"),
    }

    model = load_onnx(resized_onnx)
    metadata = read_metadata(model, str(resized_onnx))
    metadata.conversion[CONVERSION_KEY]["gate"] = result
    write_metadata(model, metadata)
    write_bytes_atomic(resized_onnx, model.SerializeToString())
    if not passed:
        raise GateError(
            f"{resized_onnx}: the in-graph resize loses accuracy against the CPU-resized model "
            f"(drops {', '.join(f'{k} {v:+.4f}' for k, v in drops.items())}; allowed {max_drop}). "
            "Keep the resize on the CPU (export without --input-size), or retrain at this resize."
        )
    logger.info("In-graph resize of %s passed its gate: %s", resized_onnx, drops)
    return result
