"""Benchmark output: results.csv, results.json, two plots and a report.md to paste into a review.

Every record is flat (one per variant and batch size) and carries the machine it ran on. Field
names carry their units (:func:`field_unit` knows them all): ``_ms_*`` milliseconds per batch,
``_ips`` images per second, ``_mb`` MiB, ``_gflop_per_s`` GFLOP/s, ``_gflop`` GFLOP; accuracy
fields, shares and ratios are unitless.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from fmabs_edge.artefacts import atomic_output, write_text_atomic
from fmabs_edge.benchmarks.accuracy import ACCURACY_FIELDS
from fmabs_edge.benchmarks.protocol import STAGES, stage_fields
from fmabs_edge.errors import UsageError

logger = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
LATENCY_PLOT = "latency_vs_auroc.png"
THROUGHPUT_PLOT = "throughput_vs_batch.png"
REPORT_MD = "report.md"

#: Accuracy axes the latency plot offers (on bottle image AUROC saturates: use AUPRO there).
ACCURACY_AXES = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
ACCURACY_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO (to 30 % FPR)",
    "f1_max": "image F1-max",
}
#: Targets of issue #5 the report states beside the measured ratios.
TARGET_ORT_VS_TORCH = 2.0
TARGET_INT8_VS_FP32 = 1.5

#: Identity and setup fields, first in every record.
IDENTITY_FIELDS = (
    "variant",
    "dataset",
    "artefact",
    "backend",
    "precision",
    "image_size",
    "backbone",
    "attention",
    "decoder",
    "weight_reconstruction",
    "checkpoint_sha256",
    "threshold",
    "batch_size",
    "warmup_iterations",
    "timed_iterations",
)
TIMING_FIELDS = tuple(name for stage in STAGES for name in stage_fields(stage)) + (
    "throughput_ips",
    "infer_throughput_ips",
    "cv_high",
)
RESOURCE_FIELDS = ("artefact_mb", "rss_mb_peak", "gpu_mem_mb_peak", "gpu_mem_source")
COMPUTE_FIELDS = (
    "gflop_per_image",
    "achieved_gflop_per_s",
    "gemm_peak_gflop_per_s",
    "gemm_peak_fraction",
)
ACCURACY_RECORD_FIELDS = (
    "n_images",
    "n_skipped",
    "nonfinite_scores",
    *ACCURACY_FIELDS,
    "reference_variant",
    "decision_agreement",
    "score_max_abs_diff",
    "score_mean_abs_diff",
)
MACHINE_FIELDS = (
    "machine_cpu_model",
    "machine_cpu_cores_logical",
    "machine_cpu_cores_physical",
    "machine_cpu_cores_usable",
    "machine_memory_mb",
    "machine_gpu",
    "machine_os",
    "version_python",
    "version_fmabs_edge",
    "version_numpy",
    "version_onnx",
    "version_onnxruntime",
    "version_opencv",
    "version_torch",
    "version_tensorrt",
    "jetson_power_mode",
    "jetson_clocks_locked",
)
#: Every field of a record, in CSV column order.
RECORD_FIELDS = (
    IDENTITY_FIELDS
    + TIMING_FIELDS
    + RESOURCE_FIELDS
    + COMPUTE_FIELDS
    + ACCURACY_RECORD_FIELDS
    + MACHINE_FIELDS
)

_UNIT_SUFFIXES = (
    ("_ms_p50", "ms"),
    ("_ms_p90", "ms"),
    ("_ms_p95", "ms"),
    ("_ms_p99", "ms"),
    ("_ms_mean", "ms"),
    ("_ms_min", "ms"),
    ("_ms_max", "ms"),
    ("_ips", "images/s"),
    ("_mb_peak", "MiB"),
    ("_mb", "MiB"),
    ("_gflop_per_s", "GFLOP/s"),
    ("gflop_per_image", "GFLOP"),
)
#: Fields without a physical unit: names, flags, counts, pixels, shares and metrics.
_UNITLESS = {
    "variant",
    "dataset",
    "artefact",
    "backend",
    "precision",
    "backbone",
    "attention",
    "decoder",
    "checkpoint_sha256",
    "gpu_mem_source",
    "reference_variant",
    "cv_high",
    "threshold",
    "weight_reconstruction",
    "machine_cpu_model",
    "machine_gpu",
    "machine_os",
    "jetson_power_mode",
    "jetson_clocks_locked",
}
_COUNT_FIELDS = {
    "batch_size",
    "warmup_iterations",
    "timed_iterations",
    "n_images",
    "n_skipped",
    "nonfinite_scores",
    "machine_cpu_cores_logical",
    "machine_cpu_cores_physical",
    "machine_cpu_cores_usable",
}
_RATIO_FIELDS = (
    set(ACCURACY_RECORD_FIELDS)
    - _COUNT_FIELDS
    - _UNITLESS
    - {"score_max_abs_diff", "score_mean_abs_diff"}
)
_RATIO_FIELDS |= {"gemm_peak_fraction"} | {f"{stage}_cv" for stage in STAGES}


def field_unit(name: str) -> str:
    """The unit of a record field ("" for names, flags and scores; "count", "px", "ratio")."""
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit
    if name == "image_size":
        return "px"
    if name == "machine_memory_mb":
        return "MiB"
    if name in _COUNT_FIELDS:
        return "count"
    if name in _RATIO_FIELDS:
        return "ratio"
    if name in _UNITLESS or name.startswith("version_") or name.startswith("score_"):
        return ""
    raise UsageError(
        f"Benchmark field '{name}' has no known unit; name it with one (e.g. _ms_p50, _mb, _ips)."
    )


# -- files ----------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe value: NaN/inf become None, paths become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def ordered_fields(records: Sequence[dict[str, Any]]) -> list[str]:
    """RECORD_FIELDS first (those present), then any other keys in sorted order."""
    present = {key for record in records for key in record}
    known = [name for name in RECORD_FIELDS if name in present]
    return known + sorted(present - set(RECORD_FIELDS))


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> Path:
    fields = ordered_fields(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(
            {
                key: "" if _clean(record.get(key)) is None else _clean(record.get(key))
                for key in fields
            }
        )
    write_text_atomic(path, buffer.getvalue())
    return path


def write_json(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """A JSON array of flat records (every field of :func:`ordered_fields`, None where absent)."""
    fields = ordered_fields(records)
    rows = [{key: _clean(record.get(key)) for key in fields} for record in records]
    write_text_atomic(path, json.dumps(rows, indent=1, allow_nan=False) + "\n")
    return path


# -- analysis --------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower x and higher y), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for index in order:
        if points[index][1] > best_y:
            front.append(index)
            best_y = points[index][1]
    return front


def _is_int8(record: dict[str, Any]) -> bool:
    return str(record.get("precision", "")).lower().startswith("int8")


def _is_fp32(record: dict[str, Any]) -> bool:
    return str(record.get("precision", "")).lower() in ("fp32", "")


def key_ratios(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed ratios the report states: ORT FP32 vs PyTorch eager, INT8 (and FP16) vs FP32, external.

    Pairs share the checkpoint (``checkpoint_sha256``) and the batch size; ``ratio`` is the
    slower's time over the faster's for ``infer_ms_p50`` (and ``latency_ms_p50`` where both have
    one).
    """
    ratios: list[dict[str, Any]] = []
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(
            (str(record.get("checkpoint_sha256", "")), int(record["batch_size"])), []
        ).append(record)

    for (model, batch), group in sorted(by_key.items(), key=lambda item: item[0][1]):
        if not model:
            continue
        ort_fp32 = next((r for r in group if r.get("backend") == "ort" and _is_fp32(r)), None)
        if ort_fp32 is None:
            continue
        for record in group:
            if record.get("backend") == "torch":
                ratios.append(
                    _ratio(
                        "ORT FP32 vs PyTorch eager", record, ort_fp32, batch, TARGET_ORT_VS_TORCH
                    )
                )
            elif record.get("backend") == "ort" and _is_int8(record):
                ratios.append(
                    _ratio("ORT INT8 vs FP32", ort_fp32, record, batch, TARGET_INT8_VS_FP32)
                )
            elif record.get("backend") == "ort" and str(record.get("precision")).lower() == "fp16":
                ratios.append(_ratio("ORT FP16 vs FP32", ort_fp32, record, batch, None))

    externals = [r for r in records if r.get("backend") == "ort-external"]
    ours = [r for r in records if r.get("backend") != "ort-external" and r.get("infer_ms_p50")]
    for external in externals:
        same_batch = [r for r in ours if r["batch_size"] == external["batch_size"]]
        if same_batch:
            fastest = min(same_batch, key=lambda r: r["infer_ms_p50"])
            ratios.append(
                _ratio(
                    "fastest variant vs external reference",
                    external,
                    fastest,
                    int(external["batch_size"]),
                    None,
                )
            )
    return ratios


def _ratio(
    label: str, slow: dict[str, Any], fast: dict[str, Any], batch: int, target: float | None
) -> dict[str, Any]:
    """``slow`` time over ``fast`` time: how many times faster ``fast`` is."""
    infer = _safe_div(slow.get("infer_ms_p50"), fast.get("infer_ms_p50"))
    latency = _safe_div(slow.get("latency_ms_p50"), fast.get("latency_ms_p50"))
    return {
        "label": label,
        "batch_size": batch,
        "baseline": slow["variant"],
        "candidate": fast["variant"],
        "baseline_infer_ms_p50": slow.get("infer_ms_p50"),
        "candidate_infer_ms_p50": fast.get("infer_ms_p50"),
        "infer_speedup": infer,
        "latency_speedup": latency,
        "target_speedup": target,
        "met": None if target is None or infer is None else infer >= target,
    }


def _safe_div(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


# -- plots -----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: Path) -> Path:
    with atomic_output(path, suffix=".png") as temp:
        figure.savefig(temp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_latency_vs_accuracy(
    records: Sequence[dict[str, Any]],
    path: Path,
    accuracy_axis: str = "image_auroc",
    latency_field: str = "latency_ms_p50",
    batch_size: int | None = None,
    title: str = "",
) -> Path:
    """One point per variant at ``batch_size`` (default: the smallest), the Pareto front drawn.

    A whisker runs from p50 to p99. Variants without accuracy (external references) appear as a
    dotted vertical line at their inference p50.
    """
    if accuracy_axis not in ACCURACY_AXES:
        raise UsageError(
            f"accuracy axis '{accuracy_axis}' is not one of {', '.join(ACCURACY_AXES)}."
        )
    plt = _pyplot()
    batch = batch_size if batch_size is not None else min(int(r["batch_size"]) for r in records)
    rows = [r for r in records if int(r["batch_size"]) == batch]
    high_field = latency_field.replace("_p50", "_p99")
    scored = [
        r for r in rows if r.get(accuracy_axis) is not None and r.get(latency_field) is not None
    ]
    unscored = [
        r for r in rows if r.get(accuracy_axis) is None and r.get("infer_ms_p50") is not None
    ]

    figure, axes = plt.subplots(figsize=(7.5, 5.0))
    points = [(float(r[latency_field]), float(r[accuracy_axis])) for r in scored]
    for record, (x, y) in zip(scored, points):
        high = record.get(high_field)
        if high is not None:
            axes.plot([x, float(high)], [y, y], color="0.6", linewidth=1, zorder=1)
        axes.scatter([x], [y], s=36, zorder=3)
        axes.annotate(
            record["variant"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    front = pareto_front(points)
    if len(front) > 1:
        xs = [points[i][0] for i in front]
        ys = [points[i][1] for i in front]
        axes.step(
            xs, ys, where="post", color="tab:red", linewidth=1.2, label="Pareto front", zorder=2
        )
    elif front:
        axes.scatter(
            [points[front[0]][0]],
            [points[front[0]][1]],
            s=120,
            facecolors="none",
            edgecolors="tab:red",
            label="Pareto front",
            zorder=4,
        )
    for record in unscored:
        x = float(record["infer_ms_p50"])
        axes.axvline(x, color="0.4", linestyle=":", linewidth=1)
        axes.annotate(
            f"{record['variant']} (inference only)",
            (x, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            va="bottom",
            ha="right",
        )
    xs_all = [x for x, _ in points] + [float(r["infer_ms_p50"]) for r in unscored]
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        axes.set_xscale("log")  # eager references can be 100× slower than the rest
    stage = "end-to-end" if latency_field.startswith("latency") else latency_field.split("_")[0]
    axes.set_xlabel(f"{stage} latency p50 per batch of {batch} [ms] (whisker to p99)")
    axes.set_ylabel(f"{ACCURACY_LABELS[accuracy_axis]} [unitless, 0..1]")
    axes.set_title(title or f"Latency vs {ACCURACY_LABELS[accuracy_axis]} (batch {batch})")
    axes.grid(True, alpha=0.3)
    if front:
        axes.legend(loc="lower right", fontsize=8)
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


def plot_throughput(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Images per second against batch size per variant: end to end (solid), inference (dashed)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 5.0))
    variants = list(dict.fromkeys(r["variant"] for r in records))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(variants):
        rows = sorted(
            (r for r in records if r["variant"] == name), key=lambda r: int(r["batch_size"])
        )
        colour = colours[index % len(colours)]
        batches = [int(r["batch_size"]) for r in rows]
        end_to_end = [r.get("throughput_ips") for r in rows]
        if any(v is not None for v in end_to_end):
            axes.plot(
                batches,
                [v if v is not None else math.nan for v in end_to_end],
                marker="o",
                color=colour,
                label=f"{name} end-to-end",
            )
        infer = [r.get("infer_throughput_ips") for r in rows]
        axes.plot(
            batches,
            [v if v is not None else math.nan for v in infer],
            marker="x",
            linestyle="--",
            color=colour,
            label=f"{name} inference",
        )
    axes.set_xscale("log", base=2)
    all_batches = sorted({int(r["batch_size"]) for r in records})
    axes.set_xticks(all_batches, [str(b) for b in all_batches])
    axes.set_xlabel("batch size [images]")
    axes.set_ylabel("throughput [images/s]")
    axes.set_title(title or "Throughput vs batch size")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


# -- report.md -------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _machine_line(record: dict[str, Any]) -> str:
    parts = [
        f"{record.get('machine_cpu_model', '?')} "
        f"({record.get('machine_cpu_cores_usable', '?')} usable cores)",
        f"GPU: {record.get('machine_gpu') or 'none'}",
        f"onnxruntime {record.get('version_onnxruntime') or '–'}",
        f"torch {record.get('version_torch') or '–'}",
        f"TensorRT {record.get('version_tensorrt') or '–'}",
        f"numpy {record.get('version_numpy') or '–'}",
        f"Python {record.get('version_python') or '–'}",
    ]
    if record.get("jetson_power_mode"):
        parts.append(
            f"Jetson power mode {record['jetson_power_mode']}, clocks locked: "
            f"{_fmt(record.get('jetson_clocks_locked'))}"
        )
    return "; ".join(parts)


def render_report(
    records: Sequence[dict[str, Any]],
    accuracy_axis: str = "image_auroc",
    title: str = "fmabs-edge benchmark",
    profiles: dict[str, list[dict[str, Any]]] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Short Markdown: machine, protocol, the main table, ratios, compute, profile, notes."""
    first = records[0]
    batches = sorted({int(r["batch_size"]) for r in records})
    smallest = batches[0]
    lines = [f"# {title}", "", f"**Machine:** {_machine_line(first)}", ""]
    lines += [
        f"**Protocol:** {first.get('warmup_iterations')} warm-up batches discarded, then "
        f"{first.get('timed_iterations')} timed batches per variant and batch size, alternating "
        "over the variants in blocks; ONNX Runtime idle threads do not spin; the clock is read "
        "after the outputs are on the host. Times are per batch, in ms: *infer* is the runner "
        "alone, *end-to-end* adds decoding, the resize to the model input and mapping each "
        "anomaly map back to its image with the decision. Pixel metrics at each model's S×S.",
        "",
        f"## Latency and accuracy at batch {smallest}",
        "",
    ]
    header = [
        "variant",
        "backend",
        "precision",
        "S",
        "infer p50 / p99 ms",
        "end-to-end p50 / p99 ms",
        "images/s",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "F1-max",
        "agree w/ FP32",
        "size MiB",
    ]
    rows = []
    for r in (r for r in records if int(r["batch_size"]) == smallest):
        rows.append(
            [
                str(r["variant"]),
                str(r.get("backend", "")),
                str(r.get("precision", "")),
                _fmt(r.get("image_size")),
                f"{_fmt(r.get('infer_ms_p50'), 1)} / {_fmt(r.get('infer_ms_p99'), 1)}",
                f"{_fmt(r.get('latency_ms_p50'), 1)} / {_fmt(r.get('latency_ms_p99'), 1)}",
                _fmt(r.get("throughput_ips"), 1),
                _fmt(r.get("image_auroc")),
                _fmt(r.get("pixel_auroc")),
                _fmt(r.get("aupro")),
                _fmt(r.get("f1_max")),
                _fmt(r.get("decision_agreement")),
                _fmt(r.get("artefact_mb"), 1),
            ]
        )
    lines += _table(header, rows) + [""]

    if len(batches) > 1:
        lines += ["## Throughput (end-to-end images/s; inference alone in brackets)", ""]
        variants = list(dict.fromkeys(r["variant"] for r in records))
        cells = {(r["variant"], int(r["batch_size"])): r for r in records}
        rows = []
        for name in variants:
            row = [name]
            for batch in batches:
                r = cells.get((name, batch))
                if r is None:
                    row.append("–")
                    continue
                end_to_end, infer = r.get("throughput_ips"), r.get("infer_throughput_ips")
                row.append(f"{_fmt(end_to_end, 1)} ({_fmt(infer, 1)})")
            rows.append(row)
        lines += _table(["variant"] + [f"batch {b}" for b in batches], rows) + [""]

    ratios = key_ratios(records)
    if ratios:
        lines += ["## Speed ratios (p50, same run)", ""]
        rows = []
        for ratio in ratios:
            target = (
                ""
                if ratio["target_speedup"] is None
                else (f"≥ {ratio['target_speedup']:.1f}× {'met' if ratio['met'] else 'missed'}")
            )
            rows.append(
                [
                    ratio["label"],
                    str(ratio["batch_size"]),
                    f"{ratio['candidate']} vs {ratio['baseline']}",
                    f"{_fmt(ratio['infer_speedup'], 2)}×",
                    f"{_fmt(ratio['latency_speedup'], 2)}×",
                    target,
                ]
            )
        lines += _table(
            ["comparison", "batch", "variants", "inference", "end-to-end", "target"], rows
        ) + [""]

    compute = [r for r in records if r.get("gflop_per_image") is not None]
    if compute:
        peak = next(
            (r.get("gemm_peak_gflop_per_s") for r in compute if r.get("gemm_peak_gflop_per_s")),
            None,
        )
        lines += [
            f"## Compute (float32 GEMM peak measured in this run: {_fmt(peak, 1)} GFLOP/s)",
            "",
        ]
        rows = [
            [
                str(r["variant"]),
                str(r["batch_size"]),
                _fmt(r.get("gflop_per_image"), 3),
                _fmt(r.get("achieved_gflop_per_s"), 1),
                _fmt(r.get("gemm_peak_fraction"), 2),
            ]
            for r in compute
        ]
        lines += _table(
            ["variant", "batch", "GFLOP/image", "achieved GFLOP/s (infer p50)", "share of peak"],
            rows,
        )
        lines += [""]

    for name, rows_profile in (profiles or {}).items():
        lines += [f"## Where {name}'s inference time goes (ONNX Runtime profiler, batch 1)", ""]
        rows = [
            [p["op_type"], _fmt(p["total_ms_per_run"], 2), f"{100 * p['share']:.0f} %"]
            for p in rows_profile[:8]
        ]
        lines += _table(["operator", "ms per run", "share"], rows) + [""]

    noisy = sorted(
        {f"{r['variant']} (batch {r['batch_size']})" for r in records if r.get("cv_high")}
    )
    extra = list(notes)
    if noisy:
        extra.append(
            "High run-to-run variation (CV > limit), treat their percentiles with care: "
            + ", ".join(noisy)
        )
    skipped = max((r.get("n_skipped") or 0) for r in records)
    if skipped:
        extra.append(f"{skipped} unreadable test images were skipped (named in the log).")
    if extra:
        lines += ["## Notes", ""] + [f"- {note}" for note in extra] + [""]
    lines += [
        f"![latency vs {ACCURACY_LABELS.get(accuracy_axis, accuracy_axis)}]({LATENCY_PLOT})",
        f"![throughput vs batch size]({THROUGHPUT_PLOT})",
        "",
    ]
    return "\n".join(lines)


def write_results(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    accuracy_axis: str = "image_auroc",
    latency_field: str = "latency_ms_p50",
    title: str = "fmabs-edge benchmark",
    profiles: dict[str, list[dict[str, Any]]] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write results.csv, results.json, both plots and report.md into ``out_dir``; returns paths."""
    if not records:
        raise UsageError("No benchmark records to write; every variant was skipped.")
    if accuracy_axis not in ACCURACY_AXES:
        raise UsageError(
            f"accuracy axis '{accuracy_axis}' is not one of {', '.join(ACCURACY_AXES)}."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not any(r.get(latency_field) is not None for r in records):
        latency_field = "infer_ms_p50"  # inference-only records (e.g. frames given as arrays)
    files = {
        "csv": write_csv(records, out / RESULTS_CSV),
        "json": write_json(records, out / RESULTS_JSON),
        "latency_plot": plot_latency_vs_accuracy(
            records, out / LATENCY_PLOT, accuracy_axis, latency_field
        ),
        "throughput_plot": plot_throughput(records, out / THROUGHPUT_PLOT),
    }
    files["report"] = out / REPORT_MD
    write_text_atomic(
        files["report"], render_report(records, accuracy_axis, title, profiles, notes)
    )
    logger.info("Benchmark report written to %s", files["report"])
    return files
