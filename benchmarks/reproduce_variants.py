"""Reproduce the variant table of benchmarks/RESULTS.md: latency against accuracy, per dataset.

For bottle and magnetic tile (``../shared/datasets``), one benchmark run each over:

- ``base-fp32`` / ``base-fp16`` / ``base-int8``: the 256-px attention model in FP32, FP16 and INT8
  on ONNX Runtime, and ``base-torch``: the same checkpoint in PyTorch eager (the research path);
- ``base_rec-fp32``: the same weights with the reconstruction branch scoring too
  (weight_reconstruction 0.3, inconsistency 0.7: the export keeps the decoder), statistics and
  threshold re-fitted on the held-out images, nothing retrained;
- ``att256-fp32`` vs ``noatt256-fp32``: attention on and off, trained alike (``--epochs``);
- ``att224-fp32``: the attention model trained and run at 224 px.

``--base DATASET=CHECKPOINT`` reuses an existing 256-px attention checkpoint (for example the
previous issue's 30-epoch model) as ``base``; without it ``base`` is ``att256``. Everything made
lives in ``--work`` and is reused on the next run (a checkpoint that exists is never retrained; an
ONNX file is remade only when its checkpoint changed). Budget on a 2-core CPU: under 60 minutes
with the default epochs, training included; a second run reuses everything and only measures.

    python benchmarks/reproduce_variants.py --datasets ../shared/datasets --work runs/variants \\
        --out benchmarks/results/variants [--base mvtec_bottle=runs/bottle/model.pt]

``--smoke`` runs the same plan on a small synthetic category (1 epoch, 48 vs 32 px) in a minute or
two, to check the script itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from fmabs_edge.benchmarks.report import render_report
from fmabs_edge.benchmarks.run import run_benchmark
from fmabs_edge.benchmarks.sweep import ModelEntry, Sweep, check_sweep

logger = logging.getLogger(__name__)

DATASETS = ("mvtec_bottle", "magnetic_tile")
#: Training settings per dataset (magnetic tile: 300 of its 793 normal images, as the reference).
DATASET_TRAIN: dict[str, dict[str, Any]] = {
    "mvtec_bottle": {},
    "magnetic_tile": {"max_train_images": 300},
}
#: Scoring of the "with reconstruction" variant (the reference's mix leans on reconstruction).
RECONSTRUCTION_SCORING = {"weight_reconstruction": 0.3, "weight_inconsistency": 0.7}
DEFAULT_EPOCHS = 8


def precisions_available() -> tuple[str, ...]:
    """FP16/INT8 need the precision converter (issue #3); FP32 alone otherwise, with a warning."""
    if importlib.util.find_spec("fmabs_edge.converters.precision") is not None:
        return ("fp32", "fp16", "int8")
    logger.warning(
        "fmabs_edge.converters.precision is not installed: FP16/INT8 variants are left out."
    )
    return ("fp32",)


def plan(
    dataset: str,
    work: Path,
    epochs: int,
    base: Path | None,
    size: int = 256,
    small_size: int = 224,
    extra_train: dict[str, Any] | None = None,
    precisions: tuple[str, ...] | None = None,
) -> Sweep:
    """The sweep of one dataset (see the module docstring)."""
    train = {"epochs": epochs, "image_size": size, "progress": False, **(extra_train or {})}
    precisions = precisions if precisions is not None else precisions_available()
    models: list[ModelEntry] = [ModelEntry("att256", train={"attention": True})]
    if base is not None:
        models.insert(
            0, ModelEntry("base", checkpoint=base, precisions=precisions, torch_reference=True)
        )
        rec_source = "base"
    else:
        models[0] = ModelEntry(
            "att256", train={"attention": True}, precisions=precisions, torch_reference=True
        )
        rec_source = "att256"
    models += [
        ModelEntry(f"{rec_source}_rec", source=rec_source, scoring=dict(RECONSTRUCTION_SCORING)),
        ModelEntry("noatt256", train={"attention": False}),
        ModelEntry("att224", train={"attention": True, "image_size": small_size}),
    ]
    # The benchmark scores every variant against FP32 itself: the conversion's own gate would
    # score the same test set twice.
    sweep = Sweep(work_dir=work / dataset, models=models, defaults=train, precision_gate=False)
    check_sweep(sweep, f"plan for {dataset}")
    return sweep


def _smoke_category(work: Path) -> Path:
    from fmabs_edge.demo import make_synthetic_category

    root = work / "synthetic"
    if not (root / "test").is_dir():
        make_synthetic_category(root, n_train=12, n_test_good=4, n_test_defect=6, size=64, seed=0)
    return root


def summary_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """One Markdown table over every dataset and variant at the smallest batch size."""
    header = (
        "| dataset | variant | backend | precision | S | infer p50 ms | end-to-end p50 ms "
        "| image AUROC "
        "| pixel AUROC | AUPRO | F1-max | agree w/ FP32 |"
    )
    lines = [header, "|" + " --- |" * 12]

    def show(value: Any, digits: int = 3) -> str:
        return (
            "–"
            if value is None
            else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))
        )

    for dataset, records in results.items():
        smallest = min(int(r["batch_size"]) for r in records)
        for r in (r for r in records if int(r["batch_size"]) == smallest):
            lines.append(
                f"| {dataset} | {r['variant']} | {r.get('backend', '')} | {r.get('precision', '')} "
                f"| {show(r.get('image_size'))} | {show(r.get('infer_ms_p50'), 1)} "
                f"| {show(r.get('latency_ms_p50'), 1)} | {show(r.get('image_auroc'))} "
                f"| {show(r.get('pixel_auroc'))} | {show(r.get('aupro'))} "
                f"| {show(r.get('f1_max'))} | {show(r.get('decision_agreement'))} |"
            )
    return "\n".join(lines) + "\n"


def reproduce(
    datasets_root: Path,
    work: Path,
    out: Path,
    epochs: int = DEFAULT_EPOCHS,
    bases: dict[str, Path] | None = None,
    datasets: tuple[str, ...] = DATASETS,
    batch_sizes: tuple[int, ...] = (1, 8),
    warmup: int = 5,
    iterations: int = 30,
    smoke: bool = False,
    progress: bool = True,
) -> Path:
    """Run the plan on each dataset; write ``out/<dataset>/`` reports and ``out/variants.md``."""
    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    sections = []
    for dataset in datasets:
        if smoke:
            data = _smoke_category(work)
            sweep = plan(
                dataset,
                work,
                epochs=1,
                base=None,
                size=48,
                small_size=32,
                extra_train={"batch_size": 4, "val_fraction": 0.25},
            )
        else:
            data = datasets_root / dataset
            sweep = plan(
                dataset,
                work,
                epochs,
                (bases or {}).get(dataset),
                extra_train=DATASET_TRAIN.get(dataset),
            )
        sweep.train_data = data
        logger.info("%s: %d models, work folder %s", dataset, len(sweep.models), sweep.work_dir)
        result = run_benchmark(
            [],
            data,
            sweep=sweep,
            batch_sizes=batch_sizes,
            warmup=warmup,
            iterations=iterations,
            out_dir=out / dataset,
            accuracy_axis="aupro",
            progress=progress,
            title=f"fmabs-edge variants: {dataset}",
        )
        results[dataset] = result.records
        sections.append(
            render_report(result.records, "aupro", title=f"{dataset}").split("\n", 1)[1]
        )
        logger.info("%s done after %.0f s", dataset, time.perf_counter() - started)

    elapsed_min = (time.perf_counter() - started) / 60.0
    text = (
        "# fmabs-edge variants: latency against accuracy\n\n"
        f"Reproduced with `python benchmarks/reproduce_variants.py` in {elapsed_min:.1f} min "
        f"(ablation epochs: {1 if smoke else epochs}).\n\n" + summary_table(results)
    )
    path = out / "variants.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + "\n".join(sections))
    logger.info("Wrote %s (%.1f min)", path, elapsed_min)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", type=Path, default=Path("../shared/datasets"), help="Folder of the datasets."
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("runs/variants"),
        help="Checkpoints and ONNX files (reused).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/variants"),
        help="Reports and variants.md.",
    )
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help="Epochs of each ablation training."
    )
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="DATASET=CHECKPOINT",
        help="Reuse a 256-px attention checkpoint as the base model of DATASET (repeatable).",
    )
    parser.add_argument(
        "--dataset", action="append", choices=DATASETS, default=None, help="Only these datasets."
    )
    parser.add_argument(
        "--iterations", type=int, default=30, help="Timed batches per variant and batch size."
    )
    parser.add_argument(
        "--smoke", action="store_true", help="A tiny synthetic run that checks the script."
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    bases = {}
    for item in args.base:
        name, _, path = item.partition("=")
        if name not in DATASETS or not path:
            parser.error(
                f"--base takes DATASET=CHECKPOINT with DATASET one of {DATASETS}, got '{item}'"
            )
        bases[name] = Path(path)
    datasets = tuple(args.dataset or (("smoke",) if args.smoke else DATASETS))
    iterations = 3 if args.smoke else args.iterations
    batch_sizes = (1, 2) if args.smoke else (1, 8)
    path = reproduce(
        args.datasets,
        args.work,
        args.out,
        args.epochs,
        bases,
        datasets,
        batch_sizes,
        warmup=1 if args.smoke else 5,
        iterations=iterations,
        smoke=args.smoke,
        progress=not args.no_progress,
    )
    print(path.read_text().split("\n\n## ", 1)[0])


if __name__ == "__main__":
    main()
