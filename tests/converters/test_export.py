"""The export contract on the tiny model: I/O, opset, one file, metadata, scopes, ORT vs PyTorch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from fmabs_edge.artefacts import graph_sha256, read_metadata
from fmabs_edge.checkpoint import read_checkpoint, update_checkpoint_metadata
from fmabs_edge.converters.export import FEATURES_SCOPE, OPSET, SCORING_SCOPE, export_onnx
from fmabs_edge.data import list_test_samples
from fmabs_edge.metadata import ModelMetadata, ScoringConfig, sha256_file
from fmabs_edge.runtime.preprocess import preprocess_file
from fmabs_edge.runtime.runners import load_runner


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _test_images(category: Path, size: int) -> np.ndarray:
    """Every test image of the category, preprocessed: ``(N, size, size, 3) uint8``."""
    return np.stack([preprocess_file(s.image, size)[0] for s in list_test_samples(category)])


def test_io_contract_and_opset(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    size = ModelMetadata.from_dict(read_checkpoint(tiny_checkpoint)["metadata"]).image_size
    model = onnx.load(str(tiny_onnx))
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    input_dims = _dims(graph_input)
    assert isinstance(input_dims[0], str), f"batch dimension must be dynamic, got {input_dims}"
    assert input_dims[1:] == [size, size, 3]

    outputs = {o.name: o for o in model.graph.output}
    assert list(outputs) == ["anomaly_map", "image_score"]
    for output in outputs.values():
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(outputs["anomaly_map"])[1:] == [1, size, size]
    assert len(_dims(outputs["image_score"])) == 1

    default_domain = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default_domain == [OPSET] == [17]


def test_one_self_contained_file(tiny_onnx: Path) -> None:
    siblings = sorted(p.name for p in tiny_onnx.parent.iterdir())
    assert siblings == [tiny_onnx.name], f"side files next to the ONNX file: {siblings}"
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    initializers = model.graph.initializer
    external = [t.name for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == []
    assert len(model.graph.initializer) > 0


def test_metadata_round_trip(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    stored = ModelMetadata.from_dict(read_checkpoint(tiny_checkpoint)["metadata"])
    exported = read_metadata(onnx.load(str(tiny_onnx)), str(tiny_onnx))
    assert exported.threshold == stored.threshold and np.isfinite(exported.threshold)
    assert exported.threshold_rule == stored.threshold_rule
    assert exported.normalisation == stored.normalisation
    assert exported.image_size == stored.image_size == 64
    assert exported.model == stored.model
    assert exported.scoring == stored.scoring
    assert exported.resize_rule == stored.resize_rule
    assert exported.checkpoint_sha256 == sha256_file(tiny_checkpoint)
    assert exported.conversion["opset"] == OPSET
    assert exported.precision == "fp32"


def test_stable_scopes_and_no_decoder_by_default(tiny_onnx: Path) -> None:
    names = [node.name for node in onnx.load(str(tiny_onnx)).graph.node]
    assert any(n.startswith(SCORING_SCOPE) for n in names)
    assert any(n.startswith(FEATURES_SCOPE + "teacher/") for n in names)
    assert any(n.startswith(FEATURES_SCOPE + "student/") for n in names)
    assert any(n.startswith(FEATURES_SCOPE + "difference/") for n in names)
    assert not [n for n in names if "decoder" in n]
    metadata = read_metadata(onnx.load(str(tiny_onnx)), str(tiny_onnx))
    assert any("decoder" in branch for branch in metadata.conversion["omitted_branches"])


def test_reconstruction_weight_keeps_the_decoder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "with_rec.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    update_checkpoint_metadata(checkpoint, scoring=ScoringConfig(weight_reconstruction=0.5))
    report = export_onnx(checkpoint, tmp_path / "with_rec.onnx", check=False)

    names = [node.name for node in onnx.load(str(tmp_path / "with_rec.onnx")).graph.node]
    assert any("decoder" in n for n in names)
    # The stable scopes hold whichever path through the network the graph takes.
    for scope in (SCORING_SCOPE, FEATURES_SCOPE + "teacher/", FEATURES_SCOPE + "difference/"):
        assert any(n.startswith(scope) for n in names), scope
    assert not any("decoder" in branch for branch in report["omitted_branches"])


def test_onnx_runtime_matches_pytorch(
    tiny_onnx: Path, tiny_checkpoint: Path, synthetic_category: Path
) -> None:
    ort_runner = load_runner(tiny_onnx, "ort")
    torch_runner = load_runner(tiny_checkpoint, "torch")
    with ort_runner, torch_runner:
        images = _test_images(synthetic_category, ort_runner.image_size)
        ort_out = ort_runner.infer(images)
        torch_out = torch_runner.infer(images)
        metadata = ort_runner.metadata

    assert ort_out.image_score.shape == (len(images),)
    assert ort_out.anomaly_map.shape == (len(images), 1, 64, 64)
    np.testing.assert_allclose(ort_out.image_score, torch_out.image_score, rtol=1e-4, atol=0)
    np.testing.assert_allclose(ort_out.anomaly_map, torch_out.anomaly_map, rtol=0, atol=1e-3)
    ort_decisions = [metadata.decide(float(s))[0] for s in ort_out.image_score]
    torch_decisions = [metadata.decide(float(s))[0] for s in torch_out.image_score]
    assert ort_decisions == torch_decisions


def test_score_alone_equals_score_inside_a_mixed_batch(
    tiny_onnx: Path, synthetic_category: Path
) -> None:
    samples = list_test_samples(synthetic_category)
    labels = {s.label for s in samples[:8]} | {s.label for s in samples[-8:]}
    assert len(labels) > 1
    with load_runner(tiny_onnx, "ort") as runner:
        images = _test_images(synthetic_category, runner.image_size)
        # Eight images mixing good and defective ones, each also scored alone.
        mixed = np.concatenate([images[:4], images[-4:]])
        batched = runner.infer(mixed).image_score
        alone = np.array([runner.infer(mixed[i : i + 1]).image_score[0] for i in range(len(mixed))])
    assert len(np.unique(batched)) == len(batched), "distinct images should score differently"
    np.testing.assert_allclose(alone, batched, rtol=0, atol=1e-5)
