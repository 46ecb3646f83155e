"""PyTorch checkpoint -> one self-contained ONNX file, with preprocessing and scoring inside.

Stages: load the deployable model in eval mode; export with the TorchScript exporter at opset 17
(pinned; the batch is traced at 2 so it stays dynamic); rename nodes into stable scopes; store the
metadata; check the graph (ONNX checker, the I/O contract, ONNX Runtime against PyTorch at batch
sizes 1, 3 and 8, and each image alone against the same image inside a batch); write atomically.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fmabs_edge.artefacts import (
    INPUT_NAME,
    MAP_OUTPUT,
    OUTPUT_NAMES,
    SCORE_OUTPUT,
    check_contract,
    graph_sha256,
    write_bytes_atomic,
    write_metadata,
)
from fmabs_edge.errors import ModelError
from fmabs_edge.metadata import ModelMetadata, sha256_file

logger = logging.getLogger(__name__)

OPSET = 17
#: Stable node-name scopes set at export; later passes (FP16 islands, Q/DQ exclusions) use these.
SCORING_SCOPE = "fmabs.scoring/"
FEATURES_SCOPE = "fmabs.features/"
#: Exporter module paths -> stable scope. The TorchScript exporter names nodes by the path of the
#: modules *called*: "/net/teacher/..." when FmabsNet.forward runs (reconstruction scores), but
#: "/teacher/..." when DeployModel calls net.stage_features directly (the default scoring).
_SCOPE_RENAMES = (
    ("/scoring/", SCORING_SCOPE),
    ("/net/teacher/", FEATURES_SCOPE + "teacher/"),
    ("/net/student/", FEATURES_SCOPE + "student/"),
    ("/net/difference/", FEATURES_SCOPE + "difference/"),
    ("/teacher/", FEATURES_SCOPE + "teacher/"),
    ("/student/", FEATURES_SCOPE + "student/"),
    ("/difference/", FEATURES_SCOPE + "difference/"),
)
#: Tolerances of the self-check: ONNX Runtime vs PyTorch, and alone vs inside a batch.
SCORE_RTOL = 1e-4
SCORE_ATOL = 1e-5
MAP_ATOL = 1e-3
BATCH_CONSISTENCY_ATOL = 1e-5
CHECK_BATCH_SIZES = (1, 3, 8)


def _rename_scopes(model: onnx.ModelProto) -> dict[str, int]:
    """Rename exporter module paths to the stable scopes; returns node counts per scope."""
    counts = {scope: 0 for _, scope in _SCOPE_RENAMES}
    for node in model.graph.node:
        for prefix, scope in _SCOPE_RENAMES:
            if node.name.startswith(prefix):
                node.name = scope + node.name[len(prefix) :]
                counts[scope] += 1
                break
    return counts


def _set_output_shapes(model: onnx.ModelProto, image_size: int) -> None:
    """Declare the contract's output shapes; the exporter loses static sizes through padding ops."""
    shapes = {MAP_OUTPUT: ["N", 1, image_size, image_size], SCORE_OUTPUT: ["N"]}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


def _check_images(image_size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Deterministic check images: smooth textures with a bright blob, ``(count, S, S, 3) uint8``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    images = []
    for i in range(count):
        base = 120 + 60 * np.sin(2 * np.pi * (xx * (2 + i) + yy * rng.uniform(0.5, 3)))
        image = np.repeat(base[:, :, None], 3, axis=2) + rng.normal(
            0, 8, (image_size, image_size, 3)
        )
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (0.02 + 0.01 * i) ** 2 * 4
        image[blob] = rng.uniform(0, 255, 3)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def verify_against_torch(onnx_bytes: bytes, deploy, image_size: int) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch; raises ModelError beyond the stated tolerances."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    images = _check_images(image_size)
    report: dict[str, Any] = {
        "score_rtol": SCORE_RTOL,
        "score_atol": SCORE_ATOL,
        "map_atol": MAP_ATOL,
    }
    worst_score, worst_map = 0.0, 0.0
    alone = None
    for batch in CHECK_BATCH_SIZES:
        chunk = images[:batch]
        ort_map, ort_score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: chunk})
        with torch.no_grad():
            torch_map, torch_score = (t.numpy() for t in deploy(torch.from_numpy(chunk)))
        if not np.allclose(ort_score, torch_score, rtol=SCORE_RTOL, atol=SCORE_ATOL):
            raise ModelError(
                f"Export check failed at batch {batch}: ONNX Runtime scores {ort_score} differ from PyTorch "
                f"{torch_score} beyond rtol={SCORE_RTOL}. Report this with the checkpoint."
            )
        worst_score = max(
            worst_score,
            float(np.max(np.abs(ort_score - torch_score) / np.maximum(np.abs(torch_score), 1e-12))),
        )
        worst_map = max(worst_map, float(np.max(np.abs(ort_map - torch_map))))
        if worst_map > MAP_ATOL:
            raise ModelError(
                f"Export check failed at batch {batch}: anomaly maps differ by {worst_map} > {MAP_ATOL}."
            )
        if batch == 1:
            alone = [
                session.run([SCORE_OUTPUT], {INPUT_NAME: images[i : i + 1]})[0][0]
                for i in range(len(images))
            ]
        if batch == CHECK_BATCH_SIZES[-1]:
            batched_gap = float(np.max(np.abs(np.array(alone) - ort_score)))
            if batched_gap > BATCH_CONSISTENCY_ATOL:
                raise ModelError(
                    f"Export check failed: an image's score alone and inside a batch of {batch} differ by "
                    f"{batched_gap} > {BATCH_CONSISTENCY_ATOL}; the graph mixes images of a batch."
                )
            report["batch_consistency_max_abs"] = batched_gap
    report["max_score_rel_diff"] = worst_score
    report["max_map_abs_diff"] = worst_map
    report["batch_sizes"] = list(CHECK_BATCH_SIZES)
    return report


def export_onnx(checkpoint: str | Path, out_path: str | Path, check: bool = True) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out_path`` (one file, weights inside) and return a report."""
    import torch

    from fmabs_edge.checkpoint import load_deploy_model

    checkpoint, out_path = Path(checkpoint), Path(out_path)
    deploy, metadata = load_deploy_model(checkpoint)
    size = metadata.image_size
    omitted = deploy.omitted_branches
    for branch in omitted:
        logger.info("Left out of the graph: %s", branch)

    # Export (TorchScript exporter, pinned opset; traced at batch 2 so N stays dynamic).
    example = torch.from_numpy(_check_images(size, count=2))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deploy,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "N"}, MAP_OUTPUT: {0: "N"}, SCORE_OUTPUT: {0: "N"}},
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())

    # Stable scopes and metadata.
    scope_counts = _rename_scopes(model)
    _set_output_shapes(model, size)
    if scope_counts[SCORING_SCOPE] == 0:
        raise ModelError(
            "Export produced no scoring nodes under the stable scope; the exporter's naming changed."
        )
    exported = ModelMetadata.from_dict(metadata.to_dict())
    exported.checkpoint_sha256 = sha256_file(checkpoint)
    exported.precision = "fp32"
    exported.conversion = {
        "exporter": f"torch.onnx (TorchScript) {torch.__version__}",
        "opset": OPSET,
        "omitted_branches": omitted,
        "scopes": scope_counts,
    }
    write_metadata(model, exported)

    # Checks, before anything is written.
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"Exported graph fails the ONNX checker: {err}") from err
    check_contract(model, str(out_path), size)
    data = model.SerializeToString()
    report: dict[str, Any] = {
        "onnx": str(out_path),
        "checkpoint": str(checkpoint),
        "opset": OPSET,
        "graph_sha256": graph_sha256(model),
        "omitted_branches": omitted,
        "size_mb": round(len(data) / 1e6, 2),
    }
    if check:
        report["check"] = verify_against_torch(data, deploy, size)
    write_bytes_atomic(out_path, data)
    logger.info("Wrote %s (%.1f MB)", out_path, len(data) / 1e6)
    return report
