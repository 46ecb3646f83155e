"""The fmabs-edge command in-process (click's CliRunner) and through the installed entry point."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import click
import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fmabs_edge.artefacts import graph_sha256, read_metadata
from fmabs_edge.checkpoint import load_checkpoint
from fmabs_edge.cli import main
from fmabs_edge.demo import make_synthetic_category
from fmabs_edge.score_folder import RESULTS_COLUMNS

ENTRY_POINT = Path(sys.executable).parent / "fmabs-edge"
EVAL_KEYS = {
    "image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "precision_at_threshold",
    "recall_at_threshold", "fpr_at_threshold", "n_images", "n_skipped", "metadata",
}


def _invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def _all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found.extend(_all_commands(command, prefix + name + " "))
    return found


def _read_results(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULTS_COLUMNS
        return list(reader)


def test_every_command_has_help_text() -> None:
    commands = _all_commands(main)
    assert {"train", "threshold", "export", "run", "eval", "demo"} <= {name for name, _ in commands}
    lacking = [name for name, command in commands if not (command.help or "").strip()]
    assert lacking == [], f"commands without help text: {lacking}"
    for name, _ in commands:
        result = _invoke(*name.split(), "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_results_csv_documents_the_issue_columns() -> None:
    for column in ("file", "image_score", "decision", "threshold", "model_hash", "width", "height"):
        assert column in RESULTS_COLUMNS


def test_train_in_process(tmp_path: Path) -> None:
    data = make_synthetic_category(
        tmp_path / "data", n_train=8, n_test_good=0, n_test_defect=0, size=64
    )
    broken = data / "train" / "good" / "broken.png"
    broken.write_bytes(b"")  # reported and skipped, never trained on
    run_dir = tmp_path / "run"
    args = [
        "train", data, "--out", run_dir, "--epochs", "1", "--image-size", "64",
        "--batch-size", "8", "--val-fraction", "0.25", "--seed", "3", "--no-attention",
    ]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {run_dir / 'model.pt'}" in result.output

    net, metadata = load_checkpoint(run_dir / "model.pt")
    assert metadata.image_size == 64 and metadata.model.attention is False
    assert metadata.training["epochs"] == 1 and metadata.training["seed"] == 3
    used = metadata.training["heldout_files"] + metadata.training["train_files"]
    assert len(used) == 8 and str(broken) not in used
    assert len(metadata.training["skipped"]) == 1 and str(broken) in metadata.training["skipped"][0]
    assert np.isfinite(metadata.threshold) and "max-false-reject" in metadata.threshold_rule
    assert metadata.normalisation.n_images == len(metadata.training["heldout_files"])
    assert all(scale > 0 for scale in metadata.normalisation.inconsistency_scale)
    assert (run_dir / "last.pt").is_file()


def test_export_in_process(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported.onnx"
    result = _invoke("export", tiny_checkpoint, "--out", out, "--no-check")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert graph_sha256(model) in result.output
    assert read_metadata(model, str(out)).image_size == 64


def test_run_in_process_with_maps(
    tiny_onnx: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    test_root = synthetic_category / "test"
    files = sorted(p for p in test_root.rglob("*.png"))
    out = tmp_path / "out"
    result = _invoke("run", tiny_onnx, test_root, "--out", out, "--save-maps", "--batch-size", "4")
    assert result.exit_code == 0, result.output

    rows = _read_results(out / "results.csv")
    assert sorted(r["file"] for r in rows) == [str(p) for p in files]
    model_hash = graph_sha256(onnx.load(str(tiny_onnx)))
    threshold = read_metadata(onnx.load(str(tiny_onnx)), "tiny").threshold
    for row in rows:
        assert row["model_hash"] == model_hash
        assert (int(row["width"]), int(row["height"])) == (64, 64)
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-5)
        expected = "reject" if float(row["image_score"]) > float(row["threshold"]) else "pass"
        assert row["decision"] == expected
    n_rejected = sum(r["decision"] == "reject" for r in rows)
    assert f"scored {len(files)}, skipped 0, rejected {n_rejected}" in result.output

    maps = sorted((out / "maps").glob("*.png"))
    assert len(maps) == len(files)
    overlay = cv2.imread(str(maps[0]))
    assert overlay is not None and overlay.shape == (64, 64, 3)


def test_run_threshold_override_and_torch_backend(
    tiny_onnx: Path, tiny_checkpoint: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    good = synthetic_category / "test" / "good"
    result = _invoke("run", tiny_onnx, good, "--out", tmp_path / "ort", "--threshold", "-1e9")
    assert result.exit_code == 0, result.output
    ort_rows = _read_results(tmp_path / "ort" / "results.csv")
    assert all(r["decision"] == "reject" for r in ort_rows)

    result = _invoke(
        "run", tiny_checkpoint, good, "--out", tmp_path / "torch", "--backend", "torch"
    )
    assert result.exit_code == 0, result.output
    torch_rows = _read_results(tmp_path / "torch" / "results.csv")
    ort_scores = np.array([float(r["image_score"]) for r in ort_rows])
    torch_scores = np.array([float(r["image_score"]) for r in torch_rows])
    np.testing.assert_allclose(ort_scores, torch_scores, rtol=1e-4)


def test_eval_in_process_json(tiny_onnx: Path, synthetic_category: Path, tmp_path: Path) -> None:
    json_path = tmp_path / "metrics.json"
    result = _invoke("eval", tiny_onnx, synthetic_category, "--json", json_path)
    assert result.exit_code == 0, result.output
    metrics = json.loads(json_path.read_text())
    assert EVAL_KEYS <= set(metrics)
    assert metrics["n_images"] == 15 and metrics["n_skipped"] == 0
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "precision_at_threshold",
                "recall_at_threshold", "fpr_at_threshold"):
        value = metrics[key]
        assert value is None or 0.0 <= value <= 1.0, (key, value)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert metrics[key] is not None, key
    assert metrics["metadata"]["threshold"] == metrics["threshold"]
    assert metrics["metadata"]["model"]["image_size"] == 64
    assert "image_auroc" in result.output


def test_entry_point_help_and_errors(tiny_onnx: Path, tmp_path: Path) -> None:
    assert ENTRY_POINT.is_file(), f"the installed script is missing: {ENTRY_POINT}"
    shown = subprocess.run([str(ENTRY_POINT), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    for name in ("train", "export", "run", "eval", "threshold", "demo"):
        assert name in shown.stdout

    missing = tmp_path / "absent"
    failed = subprocess.run(
        [str(ENTRY_POINT), "run", str(tiny_onnx), str(missing), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert "error:" in failed.stderr and str(missing) in "".join(failed.stderr.split())


def test_entry_point_run(tiny_onnx: Path, synthetic_category: Path, tmp_path: Path) -> None:
    good = synthetic_category / "test" / "good"
    out = tmp_path / "out"
    done = subprocess.run(
        [str(ENTRY_POINT), "-q", "run", str(tiny_onnx), str(good), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "scored 6, skipped 0" in done.stdout
    assert len(_read_results(out / "results.csv")) == 6


DEPLOY_ONLY = """
import sys
from click.testing import CliRunner
from fmabs_edge.cli import main
model, data, out = sys.argv[1:4]
for args in (["run", model, data + "/test/good", "--out", out], ["eval", model, data]):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
print(sorted(m for m in ("torch", "timm") if m in sys.modules))
"""


def test_deploy_path_imports_neither_torch_nor_timm(
    tiny_onnx: Path, synthetic_category: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", DEPLOY_ONLY, str(tiny_onnx), str(synthetic_category), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
