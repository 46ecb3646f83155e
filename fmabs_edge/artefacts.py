"""Reading, checking and writing model artefacts (ONNX files and atomic writes).

The ONNX contract every fmabs-edge graph satisfies:

- input ``images``: ``(N, S, S, 3) uint8`` RGB, N dynamic (or, with an in-graph resize, the camera
  size ``(N, H, W, 3)``);
- outputs ``anomaly_map``: ``(N, 1, S, S) float32`` and ``image_score``: ``(N,) float32``;
- ``metadata_props[fmabs_edge.metadata]``: the :class:`~fmabs_edge.metadata.ModelMetadata` JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import onnx

from fmabs_edge.errors import ModelError, UsageError
from fmabs_edge.metadata import ONNX_METADATA_KEY, ModelMetadata

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
MAP_OUTPUT = "anomaly_map"
SCORE_OUTPUT = "image_score"
OUTPUT_NAMES = (MAP_OUTPUT, SCORE_OUTPUT)


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A failure leaves any existing file at ``path`` untouched and removes the temporary file.
    """
    path = Path(path)
    ensure_output_path(path)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        try:
            os.replace(temp, path)
        except OSError as err:
            raise UsageError(
                f"Cannot write {path}: {err.strerror}. Choose another output path."
            ) from err
    finally:
        if temp.exists():
            temp.unlink()


def ensure_output_path(path: str | Path, is_dir: bool = False) -> None:
    """Make the folder for an output (``path`` itself when ``is_dir``) or raise a clear error.

    Call it before long work, so that a bad ``--out`` fails before anything is computed.
    """
    path = Path(path)
    folder = path if is_dir else path.parent
    if (is_dir and path.exists() and not path.is_dir()) or (not is_dir and path.is_dir()):
        kind = "a file" if is_dir else "a folder"
        raise UsageError(f"Output path {path} is {kind}; choose another output path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"Cannot create the output folder {folder}: {err.strerror}. Choose another output path."
        ) from err


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as temp:
        temp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file with its weights; a clear error if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}.")
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and others
        raise ModelError(
            f"{path}: not a readable ONNX file ({err}). Re-export it with 'fmabs-edge export'."
        ) from err


def read_metadata(model: onnx.ModelProto, source: str) -> ModelMetadata:
    """The fmabs-edge metadata stored in an ONNX model's ``metadata_props``."""
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelMetadata.from_json(prop.value, source)
    raise ModelError(
        f"{source}: no '{ONNX_METADATA_KEY}' entry in metadata_props; this ONNX file was not exported by "
        "fmabs-edge. Export one with 'fmabs-edge export CHECKPOINT'."
    )


def write_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store (replace) the metadata JSON in ``model.metadata_props``."""
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = metadata.to_json()


def graph_sha256(model: onnx.ModelProto) -> str:
    """Hash of the graph alone (nodes, weights, I/O), excluding metadata and the operating point."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [
        d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
        for d in shape.dim
    ]


def check_contract(model: onnx.ModelProto, source: str, image_size: int | None = None) -> None:
    """Raise ModelError unless the graph has fmabs-edge's input/output names, dtypes and ranks."""
    elem = onnx.TensorProto
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    problems = []
    if INPUT_NAME not in inputs:
        problems.append(f"input '{INPUT_NAME}' missing (found {sorted(inputs)})")
    else:
        info = inputs[INPUT_NAME]
        dims = _dims(info)
        if info.type.tensor_type.elem_type != elem.UINT8:
            problems.append(f"input '{INPUT_NAME}' must be uint8")
        if len(dims) != 4 or dims[3] != 3:
            problems.append(f"input '{INPUT_NAME}' must be (N, H, W, 3), found {dims}")
    for name, rank in ((MAP_OUTPUT, 4), (SCORE_OUTPUT, 1)):
        if name not in outputs:
            problems.append(f"output '{name}' missing (found {sorted(outputs)})")
            continue
        info = outputs[name]
        dims = _dims(info)
        if info.type.tensor_type.elem_type != elem.FLOAT:
            problems.append(f"output '{name}' must be float32")
        if len(dims) != rank:
            problems.append(f"output '{name}' must have rank {rank}, found {dims}")
        elif (
            name == MAP_OUTPUT
            and image_size is not None
            and dims[1:] != [1, image_size, image_size]
        ):
            problems.append(
                f"output '{name}' must be (N, 1, {image_size}, {image_size}), found {dims}"
            )
    if problems:
        raise ModelError(
            f"{source} does not follow the fmabs-edge ONNX contract: " + "; ".join(problems) + ". "
            "Export the model with 'fmabs-edge export'."
        )


def input_hw(model: onnx.ModelProto) -> tuple[int, int]:
    """The fixed (height, width) of the ``images`` input."""
    for info in model.graph.input:
        if info.name == INPUT_NAME:
            dims = _dims(info)
            return int(dims[1]), int(dims[2])
    raise ModelError(f"graph has no input '{INPUT_NAME}'")
