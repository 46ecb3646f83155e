"""``run_benchmark``: latency and accuracy of several model variants, measured in one run.

Each variant is an artefact (ONNX file, checkpoint or engine), optionally named ``NAME=PATH``, or
comes from a sweep file (:mod:`fmabs_edge.benchmarks.sweep`) that trains and exports what is
missing. Checkpoints always run on the ``torch`` backend (the PyTorch eager reference), engines
on ``trt``, ONNX files on the chosen backend (``ort`` by default, with idle-thread spinning off so
that sessions in one process do not slow each other).

One run:

1. lists the test images (an MVTec-style category gives labels and masks; a plain folder gives
   timing only) and drops unreadable ones, naming them;
2. measures the CPU's float32 GEMM peak and counts each graph's operations;
3. scores the whole test set once per variant through the timed pipeline and computes image
   AUROC, pixel AUROC, AUPRO, F1-max, the decisions at the stored threshold, and agreement with
   the FP32 ORT variant of the same checkpoint;
4. times every variant with :func:`fmabs_edge.benchmarks.protocol.measure`;
5. writes results.csv/json, the plots and report.md (:mod:`fmabs_edge.benchmarks.report`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np

from fmabs_edge.benchmarks import accuracy as acc
from fmabs_edge.benchmarks import report
from fmabs_edge.benchmarks.protocol import (
    DEFAULT_CV_LIMIT,
    Clock,
    TimedVariant,
    artefact_mb,
    measure,
    map_size,
    reset_warnings,
)
from fmabs_edge.benchmarks.reference import (
    ExternalOnnx,
    MacCount,
    count_macs,
    measure_gemm_peak,
    profile_ort,
)
from fmabs_edge.benchmarks.system import MemorySampler, machine_info
from fmabs_edge.data import TestSample, list_images, list_test_samples
from fmabs_edge.errors import CorruptImageError, ModelError, UsageError
from fmabs_edge.metadata import sha256_file
from fmabs_edge.runtime.preprocess import load_image
from fmabs_edge.runtime.runners import BACKENDS, Runner, infer_backend, load_runner

if TYPE_CHECKING:
    from fmabs_edge.benchmarks.sweep import Sweep

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 4, 8)
DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 50
DEFAULT_BLOCK_ITERATIONS = 10
DEFAULT_GEMM_SECONDS = 2.0


@dataclass
class VariantSpec:
    """An artefact to benchmark: ``path`` opened with ``backend`` and reported as ``name``."""

    path: Path
    backend: str
    name: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.name:
            self.name = self.path.stem


@dataclass
class BenchmarkResult:
    """The records (one per variant and batch size) and the files written."""

    records: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


VariantLike = Union[str, Path, VariantSpec, Runner, TimedVariant]


def variant_backend(path: Path, backend: str | None) -> str:
    """Checkpoints run on torch and engines on trt; ONNX files on ``backend`` (default ort)."""
    kind = infer_backend(path)
    if kind == "ort":
        chosen = backend or "ort"
        if chosen == "torch":
            raise UsageError(
                f"{path} is an ONNX file; the torch backend runs checkpoints (.pt). "
                "Give the checkpoint for the PyTorch reference, or --backend ort|trt."
            )
        if chosen not in BACKENDS:
            raise UsageError(f"Unknown backend '{chosen}'; choose one of {sorted(BACKENDS)}.")
        return chosen
    return kind


def parse_variant(text: str | Path, backend: str | None = None) -> VariantSpec:
    """``PATH`` or ``NAME=PATH`` -> VariantSpec with the backend rule of :func:`variant_backend`."""
    text = str(text)
    name, _, path_text = (
        text.rpartition("=") if "=" in text and not Path(text).exists() else ("", "", text)
    )
    path = Path(path_text)
    if not path.exists():
        raise UsageError(
            f"Variant artefact not found: {path}. Give an ONNX file, checkpoint or engine."
        )
    return VariantSpec(path=path, backend=variant_backend(path, backend), name=name)


def unique_names(specs: Sequence[VariantSpec]) -> None:
    """Make default names unique: ``model`` twice becomes ``run_a/model`` and ``run_b/model``."""
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    for spec in specs:
        if counts[spec.name] > 1:
            spec.name = f"{spec.path.parent.name}/{spec.path.stem}-{spec.backend}"
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"Two variants share a name ({names}); name them NAME=PATH.")


def _open_spec(spec: VariantSpec) -> TimedVariant:
    options: dict[str, Any] = {"spin_threads": False} if spec.backend == "ort" else {}
    runner = load_runner(spec.path, spec.backend, **options)
    return TimedVariant(
        name=spec.name,
        runner=runner,
        sync=getattr(runner, "synchronize", None),
        info=_variant_info(runner, spec),
    )


def _variant_info(runner: Any, spec: VariantSpec | None) -> dict[str, Any]:
    """Identity fields of a record, from the runner's metadata."""
    metadata = runner.metadata
    path = spec.path if spec is not None else Path(getattr(runner, "path", ""))
    backend = spec.backend if spec is not None else getattr(runner, "backend", "")
    if backend == "torch" and path.is_file():
        model_id = sha256_file(
            path
        )  # an export records the sha256 of the checkpoint file it came from
    else:
        model_id = metadata.checkpoint_sha256
    return {
        "artefact": str(path),
        "backend": backend,
        "precision": metadata.precision,
        "image_size": metadata.image_size,
        "backbone": metadata.model.backbone,
        "attention": metadata.model.attention,
        "decoder": metadata.model.decoder,
        "weight_reconstruction": metadata.scoring.weight_reconstruction,
        "checkpoint_sha256": model_id,
        "threshold": metadata.threshold,
        "artefact_mb": artefact_mb(path),
    }


def _as_timed(item: VariantLike, backend: str | None) -> tuple[TimedVariant, bool]:
    """A TimedVariant and whether this run opened it (and so closes it)."""
    if isinstance(item, TimedVariant):
        return item, False
    if isinstance(item, Runner):
        name = getattr(item, "name", None) or item.path.stem
        return (
            TimedVariant(
                name, item, getattr(item, "synchronize", None), info=_variant_info(item, None)
            ),
            False,
        )
    spec = item if isinstance(item, VariantSpec) else parse_variant(item, backend)
    return _open_spec(spec), True


def _external_variant(
    path: Path, input_shape: tuple[int, ...] | None
) -> tuple[TimedVariant, ExternalOnnx]:
    external = ExternalOnnx(path, input_shape=input_shape)
    info = {
        "artefact": str(path),
        "backend": external.backend,
        "precision": "",
        "artefact_mb": artefact_mb(path),
    }
    return (
        TimedVariant(
            f"{path.stem} (external)", external, make_input=external.example_input, info=info
        ),
        external,
    )


# -- data ------------------------------------------------------------------------------------------


@dataclass
class _TestSet:
    frames: list[Path]
    samples: list[TestSample] | None
    n_skipped: int


def _subsample(items: list, max_images: int | None) -> list:
    """Evenly spaced items (keeps the mix of classes in a sorted test set)."""
    if max_images is None or len(items) <= max_images:
        return items
    index = np.linspace(0, len(items) - 1, max_images).round().astype(int)
    return [items[i] for i in sorted(set(index.tolist()))]


def load_test_set(data: str | Path, max_images: int | None = None) -> _TestSet:
    """Labelled samples of an MVTec-style category (or a plain folder's images), readable ones."""
    data = Path(data)
    if max_images is not None and max_images < 1:
        raise UsageError(f"max_images must be at least 1, got {max_images}.")
    samples: list[TestSample] | None
    if (data / "test").is_dir():
        samples = _subsample(list_test_samples(data), max_images)
        files = [s.image for s in samples]
    else:
        samples = None
        files = _subsample(list_images(data), max_images)
    readable, skipped = [], []
    for path in files:
        try:
            load_image(path)
            readable.append(path)
        except CorruptImageError as err:
            logger.warning("Skipped: %s", err)
            skipped.append(path)
    if not readable:
        raise UsageError(f"No readable images in {data}; every file was skipped.")
    if samples is not None:
        kept = set(readable)
        samples = [s for s in samples if s.image in kept]
    return _TestSet(readable, samples, len(skipped))


# -- the run ---------------------------------------------------------------------------------------


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )


def _macs_for(variant: TimedVariant, external: dict[str, ExternalOnnx]) -> MacCount | None:
    """Count an ONNX variant's graph (checkpoints and engines borrow an FP32 sibling's count)."""
    if variant.name in external:
        return external[variant.name].macs()
    path = Path(variant.info.get("artefact", ""))
    if path.suffix.lower() == ".onnx" and path.is_file():
        try:
            return count_macs(path)
        except ModelError as err:
            logger.warning("No operation count for %s: %s", variant.name, err)
            return None
    return None


def _borrow_macs(variants: Sequence[TimedVariant], counts: dict[str, MacCount | None]) -> None:
    for variant in variants:
        if counts.get(variant.name) is not None:
            continue
        model = variant.info.get("checkpoint_sha256")
        size = variant.info.get("image_size")
        for other in variants:
            same = (
                other.info.get("checkpoint_sha256") == model
                and other.info.get("image_size") == size
            )
            if (
                model
                and same
                and counts.get(other.name) is not None
                and report._is_fp32(other.info)
            ):
                counts[variant.name] = counts[other.name]
                break


def _fp32_reference(variant: TimedVariant, variants: Sequence[TimedVariant]) -> TimedVariant | None:
    """The FP32 ORT variant of the same checkpoint (else another FP32 variant of it)."""
    model = variant.info.get("checkpoint_sha256")
    if not model:
        return None
    candidates = [
        v
        for v in variants
        if v.info.get("checkpoint_sha256") == model
        and report._is_fp32(v.info)
        and not v.inference_only
    ]
    candidates.sort(key=lambda v: v.info.get("backend") != "ort")
    reference = candidates[0] if candidates else None
    return None if reference is None or reference is variant else reference


def run_benchmark(
    variants: Sequence[VariantLike],
    data: str | Path,
    backend: str | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    out_dir: str | Path = "benchmark",
    reference: str | Path | None = None,
    reference_shape: tuple[int, ...] | None = None,
    accuracy_axis: str = "image_auroc",
    sweep: "str | Path | Sweep | None" = None,
    block_iterations: int = DEFAULT_BLOCK_ITERATIONS,
    max_images: int | None = None,
    cv_limit: float = DEFAULT_CV_LIMIT,
    gemm_seconds: float = DEFAULT_GEMM_SECONDS,
    profile: bool = False,
    accuracy: bool = True,
    progress: bool = True,
    title: str | None = None,
    clock: Clock = time.perf_counter,
) -> BenchmarkResult:
    """Benchmark ``variants`` (plus a sweep file's) on ``data``; write the report into ``out_dir``.

    ``variants``: artefact paths (``NAME=PATH`` names one), VariantSpecs, open runners or
    TimedVariants (runners passed in are not closed). ``backend``: for ONNX files (ort, or trt to
    build/run engines). ``reference``: an external ONNX file timed in the inference stage alone
    (``reference_shape`` if its input dims are dynamic). ``sweep``: a sweep file (or a parsed Sweep)
    whose missing artefacts are made first. ``accuracy_axis``: image_auroc, pixel_auroc,
    aupro or f1_max for the plot. ``gemm_seconds`` 0 skips the GEMM peak. ``profile``: ORT profiler
    summary per ONNX variant at batch 1 in the report. ``clock``: seconds (tests pass a fake one).
    """
    if accuracy_axis not in report.ACCURACY_AXES:
        raise UsageError(
            f"accuracy_axis '{accuracy_axis}' is not one of {', '.join(report.ACCURACY_AXES)}."
        )
    items: list[VariantLike] = list(variants)
    if sweep is not None:
        from fmabs_edge.benchmarks.sweep import Sweep, load_sweep, prepare_sweep

        plan = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
        items += prepare_sweep(plan, default_data=Path(data), backend=backend)
    if not items and reference is None:
        raise UsageError("Nothing to benchmark: give artefacts, --sweep FILE or --reference FILE.")
    items = [
        parse_variant(item, backend) if isinstance(item, (str, Path)) else item for item in items
    ]
    unique_names([item for item in items if isinstance(item, VariantSpec)])
    reset_warnings()
    test_set = load_test_set(data, max_images)
    machine = machine_info()
    gemm = measure_gemm_peak(gemm_seconds) if gemm_seconds > 0 else {}

    opened: list[Any] = []
    externals: dict[str, ExternalOnnx] = {}
    timed: list[TimedVariant] = []
    try:
        with _progress(progress) as bar:
            # Open every variant (checkpoints import torch here, engines TensorRT).
            task = bar.add_task("opening variants", total=len(items) + (reference is not None))
            for item in items:
                variant, owned = _as_timed(item, backend)
                timed.append(variant)
                if owned:
                    opened.append(variant.runner)
                bar.advance(task)
            if reference is not None:
                variant, external = _external_variant(Path(reference), reference_shape)
                timed.append(variant)
                externals[variant.name] = external
                opened.append(external)
                bar.advance(task)

            counts = {v.name: _macs_for(v, externals) for v in timed}
            _borrow_macs(timed, counts)

            # Accuracy: the whole test set once through the same pipeline, per variant.
            results: dict[str, dict[str, Any]] = {
                v.name: {"n_skipped": test_set.n_skipped} for v in timed
            }
            if accuracy:
                _score_variants(timed, test_set, max(batch_sizes), clock, bar, results)

            # Timing: the protocol, every variant and batch size.
            records = measure(
                timed,
                test_set.frames,
                batch_sizes,
                warmup,
                iterations,
                block_iterations,
                cv_limit,
                clock,
                MemorySampler(),
                bar,
            )
        profiles = _profiles(timed) if profile else None
    finally:
        for runner in opened:
            runner.close()

    dataset = Path(data).name
    for record in records:
        record["dataset"] = dataset
        record.update(results.get(record["variant"], {}))
        _add_compute(record, counts.get(record["variant"]), gemm)
        record.update(machine)
    notes = [
        f"Test set: {len(test_set.frames)} images of {Path(data)}"
        + (f" ({test_set.n_skipped} unreadable skipped)." if test_set.n_skipped else ".")
    ]
    files = report.write_results(
        records,
        out_dir,
        accuracy_axis=accuracy_axis,
        title=title or f"fmabs-edge benchmark: {dataset}",
        profiles=profiles,
        notes=notes,
    )
    return BenchmarkResult(records, files)


def _score_variants(
    timed: Sequence[TimedVariant],
    test_set: _TestSet,
    batch_size: int,
    clock: Clock,
    bar: Any,
    results: dict[str, dict[str, Any]],
) -> None:
    """Accuracy fields per variant (needs labels) and agreement with each one's FP32 reference."""
    if test_set.samples is None:
        logger.info(
            "%s is not an MVTec-style category: timing only, no accuracy.",
            test_set.frames[0].parent,
        )
        return
    labels = np.array([s.is_anomalous for s in test_set.samples])
    has_masks = any(s.mask is not None for s in test_set.samples)
    masks_by_size: dict[int, np.ndarray] = {}
    outputs: dict[str, acc.VariantOutputs] = {}
    task = bar.add_task("scoring the test set", total=len(timed))
    for variant in timed:
        if variant.inference_only:
            bar.advance(task)
            continue
        outputs[variant.name] = acc.collect_outputs(variant, test_set.frames, batch_size, clock)
        size = map_size(variant.runner)
        if has_masks and size not in masks_by_size:
            masks_by_size[size] = acc.load_masks(test_set.samples, size)
        masks = masks_by_size.get(size)
        results[variant.name].update(acc.accuracy_metrics(labels, masks, outputs[variant.name]))
        bar.advance(task)
    for variant in timed:
        if variant.name not in outputs:
            continue
        ref = _fp32_reference(variant, timed)
        fields: dict[str, Any] = {"reference_variant": ref.name if ref is not None else ""}
        if ref is not None and ref.name in outputs:
            fields.update(acc.agreement(outputs[variant.name], outputs[ref.name]))
        results[variant.name].update(fields)


def _add_compute(record: dict[str, Any], count: MacCount | None, gemm: dict[str, float]) -> None:
    peak = gemm.get("gemm_peak_gflop_per_s")
    record["gemm_peak_gflop_per_s"] = peak
    record["gflop_per_image"] = count.gflop_per_image if count is not None else None
    achieved = None
    if count is not None and record.get("infer_ms_p50"):
        achieved = count.gflop_per_image * record["batch_size"] / (record["infer_ms_p50"] / 1000.0)
    record["achieved_gflop_per_s"] = achieved
    record["gemm_peak_fraction"] = achieved / peak if achieved is not None and peak else None


def _profiles(timed: Sequence[TimedVariant]) -> dict[str, list[dict[str, Any]]]:
    """ORT profiler summary at batch 1 for every ONNX variant run on ORT."""
    profiles = {}
    for variant in timed:
        path = Path(variant.info.get("artefact", ""))
        if variant.info.get("backend") != "ort" or path.suffix.lower() != ".onnx":
            continue
        if variant.inference_only:
            continue
        height, width = variant.runner.input_hw
        batch = np.zeros((1, height, width, 3), dtype=np.uint8)
        profiles[variant.name] = profile_ort(path, batch)
    return profiles
