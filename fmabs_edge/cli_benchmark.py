"""``fmabs-edge benchmark``: latency against accuracy for several variants, in one report."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from fmabs_edge.errors import UsageError

logger = logging.getLogger(__name__)


def _batch_sizes(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as err:
        raise click.BadParameter(
            f"expected positive integers separated by commas (e.g. 1,4,8), got '{value}'."
        ) from err
    if not sizes or any(size < 1 for size in sizes):
        raise click.BadParameter(
            f"expected positive integers separated by commas (e.g. 1,4,8), got '{value}'."
        )
    return sizes


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError as err:
        raise click.BadParameter(
            f"expected integers separated by commas (e.g. 1,3,256,256), got '{value}'."
        ) from err


def _non_negative(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be 0 or more, got {value}.")
    return value


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}.")
    return value


@click.command(name="benchmark")
@click.argument("variants", nargs=-1, type=str)
@click.option(
    "--sweep",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML/TOML sweep file: models to train/export where missing "
    "(see fmabs_edge.benchmarks.sweep).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="MVTec-style category folder (timing and accuracy) or a plain image folder (timing only).",
)
@click.option(
    "--backend",
    type=click.Choice(["ort", "trt", "torch"]),
    default=None,
    help="Backend for ONNX variants [default: ort]; checkpoints always run on torch, "
    "engines on trt.",
)
@click.option(
    "--batch-sizes",
    type=str,
    default=None,
    callback=_batch_sizes,
    help="Comma-separated batch sizes to time [default: 1,4,8].",
)
@click.option(
    "--warmup",
    type=int,
    default=None,
    callback=_non_negative,
    help="Warm-up batches per variant and batch size, discarded [default: 10].",
)
@click.option(
    "--iterations",
    type=int,
    default=None,
    callback=_positive,
    help="Timed batches per variant and batch size [default: 50].",
)
@click.option(
    "--block-iterations",
    type=int,
    default=None,
    callback=_positive,
    help="Batches per variant before the next variant's turn [default: 10].",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for results.csv/json, the plots and report.md.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    default=None,
    help="External ONNX file (e.g. an anomalib PatchCore export) timed in the inference "
    "stage alone.",
)
@click.option(
    "--reference-shape",
    type=str,
    default=None,
    callback=_shape,
    help="Input shape of --reference when its dims are dynamic, e.g. 1,3,256,256.",
)
@click.option(
    "--accuracy-axis",
    type=click.Choice(["image_auroc", "pixel_auroc", "aupro", "f1_max"]),
    default=None,
    help="Accuracy axis of latency_vs_auroc.png [default: image_auroc; aupro where "
    "AUROC saturates].",
)
@click.option(
    "--max-images",
    type=int,
    default=None,
    callback=_positive,
    help="Use at most this many test images, evenly spread over the classes [default: all].",
)
@click.option(
    "--cv-limit",
    type=float,
    default=None,
    help="Warn when a stage's coefficient of variation exceeds this [default: 0.1].",
)
@click.option(
    "--gemm-seconds",
    type=float,
    default=None,
    help="Seconds spent measuring the CPU's float32 GEMM peak; 0 skips it [default: 2].",
)
@click.option(
    "--profile/--no-profile",
    default=None,
    help="Add ONNX Runtime's per-operator profile of each ONNX variant to the report "
    "[default: off].",
)
@click.option(
    "--accuracy/--no-accuracy", default=None, help="Score the test set for accuracy [default: on]."
)
@click.option("--progress/--no-progress", default=None, help="Show progress bars [default: on].")
def benchmark(variants: tuple[str, ...], **options) -> None:
    """Time model VARIANTS (ONNX files, checkpoints, engines; NAME=PATH names one) and score them.

    Writes OUT/results.csv, results.json, latency_vs_auroc.png, throughput_vs_batch.png and
    report.md.
    """
    from fmabs_edge.benchmarks.run import run_benchmark

    if not variants and options["sweep"] is None and options["reference"] is None:
        raise UsageError("Nothing to benchmark: give VARIANTS, --sweep FILE or --reference FILE.")
    chosen = {key: value for key, value in options.items() if value is not None}
    result = run_benchmark(list(variants), **chosen)
    for name, path in result.files.items():
        click.echo(f"{name}: {path}")
