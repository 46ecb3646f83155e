"""Sweep files (YAML/TOML), reuse of existing artefacts, re-scoring, and the reproduce plan."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from bench_graphs import make_brightness_onnx

from fmabs_edge.benchmarks import reproduce_variants as rv
from fmabs_edge.benchmarks.sweep import _made_from, check_sweep, load_sweep, prepare_sweep
from fmabs_edge.errors import UsageError

YAML_SWEEP = """
work_dir: work
defaults: {epochs: 2, image_size: 64}
models:
  - name: att
    precisions: [fp32, int8]
    torch_reference: true
  - name: rec
    from: att
    scoring: {weight_reconstruction: 0.5}
  - name: given
    checkpoint: runs/model.pt
variants:
  - {name: ext, path: ext.onnx}
"""

TOML_SWEEP = """
work_dir = "w"
[defaults]
epochs = 3
[[models]]
name = "noatt"
train = { attention = false }
"""


def test_yaml_sweep_is_parsed_with_paths_relative_to_the_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(YAML_SWEEP)
    sweep = load_sweep(path)
    assert sweep.work_dir == (tmp_path / "work").resolve()
    assert sweep.defaults == {"epochs": 2, "image_size": 64}
    att, rec, given = sweep.models
    assert att.precisions == ("fp32", "int8") and att.torch_reference
    assert rec.source == "att" and rec.scoring == {"weight_reconstruction": 0.5}
    assert given.checkpoint == (tmp_path / "runs" / "model.pt").resolve()
    assert sweep.variants == [("ext", (tmp_path / "ext.onnx").resolve())]


def test_toml_sweep_is_parsed(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(TOML_SWEEP)
    sweep = load_sweep(path)
    assert sweep.models[0].train == {"attention": False} and sweep.defaults == {"epochs": 3}


@pytest.mark.parametrize(
    "text, message",
    [
        ("models:\n  - {name: a, precisions: [fp8]}\n", "unknown precisions"),
        ("models:\n  - {name: a, from: b}\n  - {name: b}\n", "listed before"),
        ("models:\n  - {name: a, scoring: {weight_reconstruction: 1}}\n", "needs 'from"),
        ("models:\n  - {name: a}\n  - {name: a}\n", "two models"),
        ("models:\n  - {name: a, epochs: 3}\n", "unknown keys"),
        ("model: []\n", "unknown keys"),
        ("variants:\n  - {name: x}\n", "needs a 'path'"),
        ("- just a list\n", "mapping"),
    ],
)
def test_bad_sweep_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_sweep(path)


def test_missing_or_oddly_named_sweep_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_sweep(tmp_path / "none.yaml")
    odd = tmp_path / "sweep.json"
    odd.write_text("{}")
    with pytest.raises(UsageError, match=".yaml"):
        load_sweep(odd)


def test_an_artefact_is_reused_only_when_made_from_the_same_checkpoint(tmp_path):
    onnx_path = make_brightness_onnx(tmp_path / "m.onnx", checkpoint_sha256="abc")
    assert _made_from(onnx_path, "abc")
    assert not _made_from(onnx_path, "other")
    assert not _made_from(tmp_path / "missing.onnx", "abc")


def test_plain_variants_of_a_sweep_become_specs(tmp_path):
    artefact = make_brightness_onnx(tmp_path / "ext.onnx")
    path = tmp_path / "s.yaml"
    path.write_text("variants:\n  - {name: ext, path: ext.onnx}\n")
    specs = prepare_sweep(load_sweep(path), default_data=tmp_path)
    assert [(s.name, s.path, s.backend) for s in specs] == [("ext", artefact.resolve(), "ort")]


def test_reproduce_plan_covers_the_published_variants(tmp_path):
    sweep = rv.plan(
        "magnetic_tile",
        tmp_path,
        epochs=8,
        base=None,
        extra_train=rv.DATASET_TRAIN["magnetic_tile"],
        precisions=("fp32", "fp16", "int8"),
    )
    names = [m.name for m in sweep.models]
    assert names == ["att256", "att256_rec", "noatt256", "att224"]
    att, rec, noatt, small = sweep.models
    assert att.precisions == ("fp32", "fp16", "int8") and att.torch_reference
    assert rec.source == "att256" and rec.scoring["weight_reconstruction"] > 0
    assert noatt.train == {"attention": False}
    assert small.train["image_size"] == 224
    assert sweep.defaults["epochs"] == 8 and sweep.defaults["image_size"] == 256
    assert sweep.defaults["max_train_images"] == 300

    reused = rv.plan(
        "mvtec_bottle", tmp_path, epochs=8, base=tmp_path / "bottle.pt", precisions=("fp32",)
    )
    assert [m.name for m in reused.models] == ["base", "att256", "base_rec", "noatt256", "att224"]
    assert (
        reused.models[0].checkpoint == tmp_path / "bottle.pt" and reused.models[0].torch_reference
    )


@pytest.mark.slow
def test_rescored_checkpoint_keeps_weights_and_refits_statistics(tiny_checkpoint, tmp_path):
    from fmabs_edge.train import rescore_checkpoint
    from fmabs_edge.checkpoint import read_checkpoint

    target = tmp_path / "rec" / "model.pt"
    target.parent.mkdir()
    updated = rescore_checkpoint(tiny_checkpoint, target, {"weight_reconstruction": 0.5})
    before, after = read_checkpoint(tiny_checkpoint), read_checkpoint(target)
    assert updated.scoring.weight_reconstruction == 0.5
    assert after["metadata"]["scoring"]["weight_reconstruction"] == 0.5
    assert after["metadata"]["training"]["rescored_from"] == str(tiny_checkpoint)
    assert updated.normalisation.n_images > 0
    assert updated.threshold != before["metadata"]["threshold"]
    for key, value in before["state_dict"].items():
        assert (after["state_dict"][key] == value).all(), key


@pytest.mark.slow
def test_reproduce_script_end_to_end_on_a_tiny_model(
    tiny_checkpoint, synthetic_category, tmp_path, monkeypatch, caplog
):
    """The script's plumbing (sweep -> benchmark -> variants.md), the tiny model as base."""

    def tiny_plan(dataset: str, work: Path, *args, **kwargs):
        from fmabs_edge.benchmarks.sweep import ModelEntry, Sweep

        models = [
            ModelEntry("base", checkpoint=tiny_checkpoint),
            ModelEntry("base_rec", source="base", scoring=dict(rv.RECONSTRUCTION_SCORING)),
        ]
        sweep = Sweep(work_dir=work / dataset, models=models, check_export=False)
        check_sweep(sweep)
        return sweep

    monkeypatch.setattr(rv, "plan", tiny_plan)
    monkeypatch.setattr(rv, "_smoke_category", lambda work: synthetic_category)
    out = tmp_path / "out"
    path = rv.reproduce(
        Path("unused"),
        tmp_path / "work",
        out,
        datasets=("smoke",),
        batch_sizes=(1,),
        warmup=0,
        iterations=2,
        smoke=True,
        progress=False,
    )
    text = path.read_text()
    for name in ("base-fp32", "base_rec-fp32"):
        assert f"| smoke | {name} |" in text
    assert (out / "smoke" / "report.md").is_file() and (
        out / "smoke" / "latency_vs_auroc.png"
    ).is_file()

    # Preparing the same plan again makes nothing: the re-scored checkpoint and exports are reused.
    made = sorted(p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.is_file())
    with caplog.at_level(logging.INFO, logger="fmabs_edge"):
        specs = prepare_sweep(
            tiny_plan("smoke", tmp_path / "work"), default_data=synthetic_category
        )
    assert [s.name for s in specs] == ["base-fp32", "base_rec-fp32"]
    assert (
        sorted(p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.is_file()) == made
    )
    assert "Reusing" in " ".join(r.getMessage() for r in caplog.records)
