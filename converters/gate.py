"""The accuracy gate: a precision variant is scored with ONNX Runtime on the same images as FP32.

For each test set (an MVTec-style category folder) the report gives, for FP32 and the variant:
image AUROC, pixel AUROC and AUPRO, the variant's deltas to FP32, the share of images whose
decision at the stored threshold agrees with FP32 (and the flipped files), the maximum and mean
absolute difference of image scores, and every image with a non-finite score or map. On the
held-out normal images of the training split (when their files are present) it gives the
false-reject rate of both.

The variant passes when every metric delta is within ``max_metric_delta`` (absolute), the
decision agreement over the test images of all sets is at least ``min_decision_agreement`` and no
score or map is non-finite. On bottle-like sets image AUROC is near 1.0 and says little; pixel
AUROC, AUPRO and the flipped decisions carry the gate there, and the held-out false-reject rate is
reported beside it. It is not part of the verdict: the stored threshold is one of the held-out
scores itself (the highest allowed one), so that image flips under any perturbation upwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmabs_edge.artefacts import check_contract, graph_sha256, input_hw, load_onnx, read_metadata
from fmabs_edge.data import list_test_samples
from fmabs_edge.errors import ModelError, UsageError
from fmabs_edge.evaluate import Predictions, predict_samples
from fmabs_edge.metrics import aupro, image_auroc, pixel_auroc
from fmabs_edge.runtime.ort_runner import OrtRunner
from fmabs_edge.score_folder import score_files

logger = logging.getLogger(__name__)

METRICS = ("image_auroc", "pixel_auroc", "aupro")
#: How many flipped or non-finite files a report names (the counts are always complete).
MAX_NAMED_FILES = 20


@dataclass
class GateCriteria:
    """Pass limits: absolute metric deltas and the decision agreement with FP32 (0..1)."""

    max_metric_delta: float = 0.01
    min_decision_agreement: float = 0.98

    def validate(self) -> None:
        if not 0.0 <= self.max_metric_delta <= 1.0:
            raise UsageError(
                f"max_metric_delta={self.max_metric_delta}: must be within 0..1 (e.g. 0.01)."
            )
        if not 0.0 <= self.min_decision_agreement <= 1.0:
            raise UsageError(
                f"min_decision_agreement={self.min_decision_agreement}: must be within 0..1 (e.g. 0.98)."
            )


@dataclass
class ReferenceScores:
    """FP32 outputs on the gate images, computed once and compared with every variant."""

    datasets: dict[str, Predictions]
    heldout_files: list[Path]
    heldout_scores: np.ndarray
    threshold: float


@dataclass
class GateReport:
    """The gate's verdict and numbers; ``to_dict`` is what the variant's metadata stores."""

    passed: bool
    criteria: GateCriteria
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    heldout: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    decision_agreement: float | None = None
    #: How the variant was run (ONNX Runtime settings).
    runtime: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "passed" if self.passed else "failed",
            "passed": self.passed,
            "criteria": {
                "max_metric_delta": self.criteria.max_metric_delta,
                "min_decision_agreement": self.criteria.min_decision_agreement,
            },
            "decision_agreement": self.decision_agreement,
            "runtime": self.runtime,
            "datasets": self.datasets,
            "heldout": self.heldout,
            "failures": self.failures,
        }


#: Session setting that keeps every Q/DQ pair as written (no fusion into integer kernels).
DISABLE_QDQ_FUSION = ("session.disable_quant_qdq", "1")


class ReferenceOrtRunner(OrtRunner):
    """ONNX Runtime with Q/DQ fusion off: every Q/DQ pair is computed as written.

    With fusion on, ONNX Runtime's CPU provider turns Q/DQ pairs into integer kernels whose
    INT8 x INT8 products saturate in 16-bit sums on CPUs without VNNI (AVX2's VPMADDUBSW), and
    it does the same to FP16 Q/DQ graphs. TensorRT accumulates INT8 products in INT32, so the file
    meant for TensorRT is gated on the written arithmetic (dequantise, compute in float, quantise);
    the other graph optimisations stay on (2.3x faster than none, scores within 3e-3 of them).
    """

    @classmethod
    def open(cls, path: str | Path, **_: Any) -> "ReferenceOrtRunner":
        import onnxruntime as ort

        path = Path(path)
        model = load_onnx(path)
        metadata = read_metadata(model, str(path))
        check_contract(model, str(path), metadata.image_size)
        options = ort.SessionOptions()
        options.add_session_config_entry(*DISABLE_QDQ_FUSION)
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load this graph ({err}).") from err
        runner = cls(path, session, metadata, input_hw(model))
        runner.model_hash = graph_sha256(model)
        return runner


def _rejected(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The stored decision rule: reject above the threshold or when the score is not finite."""
    scores = np.asarray(scores, dtype=np.float64)
    return ~np.isfinite(scores) | (scores > threshold)


def _metrics(predictions: Predictions) -> dict[str, float | None]:
    return {
        "image_auroc": image_auroc(predictions.labels, predictions.scores),
        "pixel_auroc": pixel_auroc(predictions.masks, predictions.maps),
        "aupro": aupro(predictions.masks, predictions.maps),
    }


def _heldout(metadata_training: dict[str, Any]) -> list[Path]:
    files = [Path(p) for p in metadata_training.get("heldout_files", [])]
    present = [p for p in files if p.is_file()]
    if len(present) < len(files):
        logger.warning(
            "%d of %d held-out images are missing here; the false-reject rate uses the rest",
            len(files) - len(present),
            len(files),
        )
    return present


def score_reference(
    runner: OrtRunner, datasets: list[Path], batch_size: int = 8
) -> ReferenceScores:
    """Score the FP32 model on the gate images (test sets and held-out normal images)."""
    scored = {}
    for data in datasets:
        scored[str(data)] = predict_samples(runner, list_test_samples(data), batch_size)
    heldout = _heldout(runner.metadata.training)
    result = score_files(runner, heldout, batch_size=batch_size) if heldout else None
    return ReferenceScores(
        datasets=scored,
        heldout_files=list(result.files) if result else [],
        heldout_scores=np.array(result.scores if result else [], dtype=np.float64),
        threshold=float(runner.metadata.threshold),
    )


def _compare_set(
    name: str,
    reference: Predictions,
    variant: Predictions,
    threshold: float,
    criteria: GateCriteria,
) -> tuple[dict[str, Any], list[str], int, int]:
    """Numbers for one test set; returns (record, failures, agreeing decisions, images)."""
    by_file = {s.image: i for i, s in enumerate(variant.samples)}
    common = [i for i, s in enumerate(reference.samples) if s.image in by_file]
    ref_scores = reference.scores[common]
    var_index = [by_file[reference.samples[i].image] for i in common]
    var_scores = variant.scores[var_index]
    files = [str(reference.samples[i].image) for i in common]

    finite_maps = np.isfinite(variant.maps.reshape(len(variant.samples), -1)).all(axis=1)[var_index]
    nonfinite = [
        f for f, s, ok in zip(files, var_scores, finite_maps) if not np.isfinite(s) or not ok
    ]
    agree = _rejected(ref_scores, threshold) == _rejected(var_scores, threshold)
    flipped = [f for f, same in zip(files, agree) if not same]
    finite = np.isfinite(var_scores)
    differences = np.abs(var_scores[finite] - ref_scores[finite])
    record: dict[str, Any] = {
        "n_images": len(common),
        "decision_agreement": float(agree.mean()) if len(agree) else None,
        "n_flipped": len(flipped),
        "flipped": flipped[:MAX_NAMED_FILES],
        "score_abs_diff_max": float(differences.max()) if differences.size else None,
        "score_abs_diff_mean": float(differences.mean()) if differences.size else None,
        "n_nonfinite": len(nonfinite),
        "nonfinite": nonfinite[:MAX_NAMED_FILES],
    }
    failures = []
    if nonfinite:
        failures.append(
            f"{name}: {len(nonfinite)} images with non-finite scores or maps ({', '.join(nonfinite[:3])})"
        )
    reference_metrics = _metrics(reference)
    variant_metrics = _metrics(variant) if not nonfinite else dict.fromkeys(METRICS)
    for metric in METRICS:
        before, after = reference_metrics[metric], variant_metrics[metric]
        delta = None if before is None or after is None else after - before
        record[f"fp32_{metric}"] = before
        record[metric] = after
        record[f"delta_{metric}"] = delta
        if delta is not None and abs(delta) > criteria.max_metric_delta:
            failures.append(
                f"{name}: {metric} {after:.4f} vs FP32 {before:.4f} (|delta| {abs(delta):.4f} > "
                f"{criteria.max_metric_delta})"
            )
    return record, failures, int(agree.sum()), len(agree)


def gate_variant(
    variant_path: str | Path,
    reference: ReferenceScores,
    criteria: GateCriteria | None = None,
    batch_size: int = 8,
    optimised: bool = True,
) -> GateReport:
    """Score the variant at ``variant_path`` on the reference's images and judge it.

    ``optimised``: run it as ONNX Runtime deploys it (True) or with the Q/DQ arithmetic as
    written (False, :class:`ReferenceOrtRunner`; for files meant for TensorRT).
    """
    criteria = criteria or GateCriteria()
    criteria.validate()
    report = GateReport(passed=True, criteria=criteria)
    agreeing, total = 0, 0
    opener = OrtRunner.open if optimised else ReferenceOrtRunner.open
    report.runtime = "onnxruntime CPU, " + ("as deployed" if optimised else "Q/DQ fusion off")
    with opener(variant_path) as runner:
        for name, ref_predictions in reference.datasets.items():
            predictions = predict_samples(runner, ref_predictions.samples, batch_size)
            record, failures, same, count = _compare_set(
                name, ref_predictions, predictions, reference.threshold, criteria
            )
            report.datasets[name] = record
            report.failures.extend(failures)
            agreeing, total = agreeing + same, total + count
        if reference.heldout_files:
            scored = score_files(runner, reference.heldout_files, batch_size=batch_size)
            variant_scores = np.array(scored.scores, dtype=np.float64)
            ref_rejected = _rejected(reference.heldout_scores, reference.threshold)
            var_rejected = _rejected(variant_scores, reference.threshold)
            same = int((ref_rejected == var_rejected).sum())
            report.heldout = {
                "n_images": len(ref_rejected),
                "fp32_false_reject_rate": float(ref_rejected.mean()),
                "false_reject_rate": float(var_rejected.mean()),
                "decision_agreement": same / len(ref_rejected),
                "score_abs_diff_max": float(
                    np.max(np.abs(variant_scores - reference.heldout_scores))
                ),
            }
    report.decision_agreement = agreeing / total if total else None
    if (
        report.decision_agreement is not None
        and report.decision_agreement < criteria.min_decision_agreement
    ):
        report.failures.append(
            f"decision agreement with FP32 {report.decision_agreement:.4f} < {criteria.min_decision_agreement} "
            f"({total - agreeing} of {total} decisions flipped)"
        )
    report.passed = not report.failures
    for failure in report.failures:
        logger.warning("Gate: %s", failure)
    return report


def format_gate_table(report: GateReport | dict[str, Any], variant: str = "variant") -> str:
    """A Markdown table of one gate report (one row per test set, plus the held-out row)."""
    data = report.to_dict() if isinstance(report, GateReport) else report

    def show(value: Any, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.4f}" if signed else f"{value:.4f}"

    lines = [
        "| variant | set | image AUROC (Δ) | pixel AUROC (Δ) | AUPRO (Δ) | agreement | flipped | "
        "max/mean abs Δscore | non-finite |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in data.get("datasets", {}).items():
        cells = [f"{show(row[m])} ({show(row[f'delta_{m}'], True)})" for m in METRICS]
        lines.append(
            f"| {variant} | {Path(name).name} | {' | '.join(cells)} | {show(row['decision_agreement'])} | "
            f"{row['n_flipped']}/{row['n_images']} | {show(row['score_abs_diff_max'])} / "
            f"{show(row['score_abs_diff_mean'])} | {row['n_nonfinite']} |"
        )
    held = data.get("heldout") or {}
    if held:
        lines.append(
            f"| {variant} | held-out good | FRR {show(held['false_reject_rate'])} "
            f"(FP32 {show(held['fp32_false_reject_rate'])}) | | | {show(held['decision_agreement'])} | | "
            f"{show(held['score_abs_diff_max'])} / | |"
        )
    verdict = "PASSED" if data.get("passed") else "FAILED: " + "; ".join(data.get("failures", []))
    return "\n".join(lines) + f"\n\ngate: {verdict}"
