"""Real data (../shared/datasets): the test lists against manifest.csv, and one tiny whole-pipeline
run on bottle. Marked ``data``: skipped with the reason where the datasets are absent."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from fmabs_edge.converters.export import export_onnx
from fmabs_edge.data import list_images, list_test_samples, resolve_train_folder
from fmabs_edge.evaluate import evaluate
from fmabs_edge.train import TrainOptions, train

pytestmark = pytest.mark.data

DATASETS = ("mvtec_bottle", "magnetic_tile")


def _dataset(shared_datasets: Path, name: str) -> Path:
    root = shared_datasets / name
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"needs {root} with its manifest.csv, which is absent")
    return root


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", DATASETS)
def test_test_samples_match_the_manifest(shared_datasets: Path, name: str) -> None:
    root = _dataset(shared_datasets, name)
    rows = _manifest(root)
    expected = {r["image"]: r for r in rows if r["split"] == "test"}
    samples = list_test_samples(root)

    listed = {str(s.image.relative_to(root)): s for s in samples}
    assert sorted(listed) == sorted(expected)
    counts = collections.Counter(s.label for s in samples)
    assert counts == collections.Counter(r["label"] for r in expected.values())
    for relative, sample in listed.items():
        row = expected[relative]
        assert sample.image.is_file()
        assert sample.label == row["label"]
        if sample.label == "good":
            assert sample.mask is None
        else:
            assert sample.mask is not None and sample.mask.is_file()
            assert str(sample.mask.relative_to(root)) == row["mask"]

    train_rows = [r for r in rows if r["split"] == "train"]
    train_files = list_images(resolve_train_folder(root))
    listed_train = sorted(str(p.relative_to(root)) for p in train_files)
    assert listed_train == sorted(r["image"] for r in train_rows)


def test_tiny_pipeline_on_bottle(shared_datasets: Path, tmp_path: Path) -> None:
    root = _dataset(shared_datasets, "mvtec_bottle")
    options = TrainOptions(
        epochs=1,
        image_size=64,
        batch_size=8,
        max_train_images=16,
        val_fraction=0.05,
        progress=False,
    )
    result = train(root, tmp_path / "run", options)
    assert len(result.metadata.training["train_files"]) == 16

    onnx_path = tmp_path / "run" / "model.onnx"
    export_onnx(result.checkpoint, onnx_path, check=False)
    metrics = evaluate(onnx_path, root, backend="ort", json_path=tmp_path / "metrics.json")

    n_test = sum(1 for r in _manifest(root) if r["split"] == "test")
    assert metrics["n_images"] == n_test and metrics["n_skipped"] == 0
    assert metrics["backend"] == "ort"
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "precision_at_threshold",
                "recall_at_threshold", "fpr_at_threshold"):
        value = metrics[key]
        assert value is None or 0.0 <= value <= 1.0, (key, value)
    defined = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
    for key in defined + ("recall_at_threshold", "fpr_at_threshold"):
        assert metrics[key] is not None, key
    assert metrics["metadata"]["model"]["image_size"] == 64
    written = json.loads((tmp_path / "metrics.json").read_text())
    required = {
        "image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "precision_at_threshold",
        "recall_at_threshold", "fpr_at_threshold", "n_images", "n_skipped", "metadata",
    }
    assert required <= set(written)
    assert {k: written[k] for k in required} == {k: metrics[k] for k in required}
