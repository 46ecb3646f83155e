"""ONNX Runtime runner: the embedded CPU default and the reference every other backend matches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fmabs_edge.artefacts import (
    INPUT_NAME,
    OUTPUT_NAMES,
    check_contract,
    graph_sha256,
    input_hw,
    load_onnx,
    read_metadata,
)
from fmabs_edge.errors import ModelError
from fmabs_edge.runtime.runners import Runner

logger = logging.getLogger(__name__)


class OrtRunner(Runner):
    """Runs an fmabs-edge ONNX file with ONNX Runtime.

    ``intra_op_threads``: threads per inference (None: ONNX Runtime's default, one per core).
    ``spin_threads``: let idle worker threads spin; lowest latency for a single session, but two
    sessions in one process slow each other down, so the benchmark turns it off.
    ``providers``: ONNX Runtime execution providers (default: CPU).
    """

    backend = "ort"

    def __init__(self, path: Path, session, metadata, hw: tuple[int, int]) -> None:
        super().__init__(path, metadata, hw, max_batch=None)
        self._session = session

    @classmethod
    def open(
        cls,
        path: str | Path,
        intra_op_threads: int | None = None,
        spin_threads: bool = True,
        providers: list[str] | None = None,
    ) -> "OrtRunner":
        import onnxruntime as ort

        path = Path(path)
        model = load_onnx(path)
        metadata = read_metadata(model, str(path))
        check_contract(model, str(path), metadata.image_size)
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spin_threads else "0"
        )
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load this graph ({err}).") from err
        runner = cls(path, session, metadata, input_hw(model))
        runner.model_hash = graph_sha256(model)
        return runner

    def _infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, image_score = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return anomaly_map, image_score

    def _release(self) -> None:
        self._session = None
