"""results.csv/json schema, units in field names, Pareto front, ratios, plots and report.md."""

from __future__ import annotations

import csv
import json

import pytest

from fmabs_edge.benchmarks import report
from fmabs_edge.benchmarks.fake_backend import FakeClock, FakeRunner
from fmabs_edge.benchmarks.run import run_benchmark
from fmabs_edge.errors import UsageError


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(10.0, 0.90), (5.0, 0.80), (20.0, 0.95), (12.0, 0.85), (5.0, 0.70), (30.0, 0.95)]
    assert report.pareto_front(points) == [1, 0, 2]


def test_every_declared_field_has_a_unit():
    for name in report.RECORD_FIELDS:
        report.field_unit(name)
    assert report.field_unit("latency_ms_p99") == "ms"
    assert report.field_unit("throughput_ips") == "images/s"
    assert report.field_unit("artefact_mb") == "MiB"
    assert report.field_unit("rss_mb_peak") == "MiB"
    assert report.field_unit("achieved_gflop_per_s") == "GFLOP/s"
    with pytest.raises(UsageError, match="unit"):
        report.field_unit("latency_p99")


def _records(ratio_slow: float = 30.0) -> list[dict]:
    base = {"checkpoint_sha256": "m", "warmup_iterations": 1, "timed_iterations": 3}
    rows = []
    for batch in (1, 4):
        rows += [
            base
            | {
                "variant": "fp32",
                "backend": "ort",
                "precision": "fp32",
                "batch_size": batch,
                "infer_ms_p50": 10.0 * batch,
                "latency_ms_p50": 14.0 * batch,
                "image_auroc": 0.99,
                "aupro": 0.9,
            },
            base
            | {
                "variant": "int8",
                "backend": "ort",
                "precision": "int8",
                "batch_size": batch,
                "infer_ms_p50": 5.0 * batch,
                "latency_ms_p50": 9.0 * batch,
                "image_auroc": 0.98,
                "aupro": 0.85,
            },
            base
            | {
                "variant": "eager",
                "backend": "torch",
                "precision": "fp32",
                "batch_size": batch,
                "infer_ms_p50": ratio_slow * batch,
                "latency_ms_p50": 34.0 * batch,
                "image_auroc": 0.99,
                "aupro": 0.9,
            },
        ]
    rows.append(
        {
            "variant": "patchcore",
            "backend": "ort-external",
            "precision": "",
            "batch_size": 1,
            "checkpoint_sha256": "",
            "infer_ms_p50": 12.0,
        }
    )
    return rows


def test_key_ratios_pair_variants_of_one_checkpoint():
    ratios = {(r["label"], r["batch_size"]): r for r in report.key_ratios(_records())}
    torch_ratio = ratios[("ORT FP32 vs PyTorch eager", 1)]
    assert torch_ratio["infer_speedup"] == pytest.approx(3.0)
    assert torch_ratio["latency_speedup"] == pytest.approx(34.0 / 14.0)
    assert torch_ratio["met"] is True
    int8 = ratios[("ORT INT8 vs FP32", 1)]
    assert int8["infer_speedup"] == pytest.approx(2.0) and int8["met"] is True
    external = ratios[("fastest variant vs external reference", 1)]
    assert external["candidate"] == "int8" and external["infer_speedup"] == pytest.approx(
        12.0 / 5.0
    )
    missed = {
        (r["label"], r["batch_size"]): r for r in report.key_ratios(_records(ratio_slow=15.0))
    }
    assert missed[("ORT FP32 vs PyTorch eager", 1)]["met"] is False


def test_report_md_states_ratios_targets_and_plots():
    text = report.render_report(_records(), accuracy_axis="aupro")
    assert "ORT FP32 vs PyTorch eager" in text and "≥ 2.0× met" in text
    assert "ORT INT8 vs FP32" in text
    assert report.LATENCY_PLOT in text and report.THROUGHPUT_PLOT in text
    assert "| variant |" in text


@pytest.fixture
def fake_run(tmp_path, bright_category):
    clock = FakeClock()
    variants = [
        FakeRunner("fp32", [4.0], clock=clock, precision="fp32"),
        FakeRunner("int8", [2.0, 3.0], clock=clock, precision="int8"),
    ]
    return run_benchmark(
        variants,
        bright_category,
        batch_sizes=(1, 2),
        warmup=1,
        iterations=4,
        out_dir=tmp_path / "out",
        accuracy_axis="aupro",
        gemm_seconds=0,
        progress=False,
        clock=clock,
    )


def test_results_csv_and_json_hold_one_flat_record_per_variant_and_batch(fake_run):
    files = fake_run.files
    rows = list(csv.DictReader(files["csv"].open()))
    data = json.loads(files["json"].read_text())
    assert len(rows) == len(data) == 4
    assert [(r["variant"], int(r["batch_size"])) for r in data] == [
        ("fp32", 1),
        ("int8", 1),
        ("fp32", 2),
        ("int8", 2),
    ]
    header = list(rows[0])
    assert header[: len(report.IDENTITY_FIELDS)] == [f for f in report.IDENTITY_FIELDS]
    for name in header:
        report.field_unit(name)  # raises for a field without a unit
    for record in data:
        assert list(record) == header
        assert all(not isinstance(value, (dict, list)) for value in record.values())
        for name in (
            "infer_ms_p50",
            "infer_ms_p99",
            "latency_ms_p50",
            "latency_ms_p99",
            "throughput_ips",
            "rss_mb_peak",
            "machine_cpu_model",
            "machine_cpu_cores_logical",
            "version_numpy",
        ):
            assert record[name] not in (None, "")
    assert data[0]["infer_ms_p50"] == pytest.approx(4.0)
    assert float(rows[0]["infer_ms_p50"]) == pytest.approx(4.0)


def test_accuracy_comes_from_the_same_outputs(fake_run):
    by_name = {(r["variant"], r["batch_size"]): r for r in fake_run.records}
    fp32, int8 = by_name[("fp32", 1)], by_name[("int8", 1)]
    # Bright squares on dark images: the brightness map separates them perfectly.
    assert fp32["image_auroc"] == pytest.approx(1.0)
    assert fp32["pixel_auroc"] > 0.9 and fp32["aupro"] > 0.5
    assert fp32["n_images"] == 8 and fp32["n_skipped"] == 0
    assert fp32["recall_at_threshold"] == pytest.approx(1.0)
    assert fp32["fpr_at_threshold"] == pytest.approx(0.0)
    # The INT8 variant of the same checkpoint is compared with the FP32 one, image by image.
    assert int8["reference_variant"] == "fp32"
    assert int8["decision_agreement"] == pytest.approx(1.0)
    assert int8["score_max_abs_diff"] == pytest.approx(0.0)
    assert fp32["reference_variant"] == ""


def test_plots_and_report_are_written(fake_run):
    files = fake_run.files
    for key in ("latency_plot", "throughput_plot"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = files["report"].read_text()
    assert "fp32" in text and "int8" in text and "AUPRO" in text


def test_unknown_accuracy_axis_is_refused(tmp_path):
    with pytest.raises(UsageError, match="accuracy axis"):
        report.write_results(_records(), tmp_path, accuracy_axis="accuracy")
