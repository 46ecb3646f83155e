"""``fmabs-edge export-triton``: write a Triton Inference Server model repository for a model."""

from __future__ import annotations

import math

import json
import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)


def _finite_or_none(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}.")
    return value


@click.command(name="export-triton")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Model repository folder; the model goes to OUT/NAME/.",
)
@click.option("--name", default=None, help="Triton model name [default: the model file's stem].")
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(path_type=Path),
    default=None,
    help="For an engine: the ONNX file it was built from (I/O and, without a manifest, metadata).",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Largest batch Triton forms [default: the engine profile's max, or 8 for ONNX].",
)
@click.option(
    "--preferred-batch-size",
    "preferred_batch_sizes",
    type=click.IntRange(min=1),
    multiple=True,
    help="Preferred batch size for the dynamic batcher; repeat for several "
    "[default: the profile's opt and max, or max_batch_size].",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="How long the dynamic batcher may wait to fill a batch (microseconds).",
)
@click.option(
    "--instance-kind",
    type=click.Choice(["auto", "gpu", "cpu"]),
    default="auto",
    show_default=True,
    help="Where Triton runs the model (auto: Triton decides; plans always run on the GPU).",
)
@click.option(
    "--instance-count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Model instances per device.",
)
@click.option(
    "--threshold",
    type=float,
    callback=_finite_or_none,
    default=None,
    help="Image threshold written as a parameter (finite) [default: the model's].",
)
@click.option(
    "--pixel-threshold",
    type=float,
    callback=_finite_or_none,
    default=None,
    help="Pixel threshold written as a parameter [default: the image threshold].",
)
@click.option(
    "--min-defect-area",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Minimum defect area in pixels written as a parameter.",
)
@click.option(
    "--triton-tensorrt-version",
    default=None,
    help="TensorRT version inside the target Triton release (e.g. 10.3.0.30); checked against the "
    "engine's.",
)
@click.option("--overwrite/--no-overwrite", default=False, help="Replace an existing OUT/NAME.")
def export_triton_command(model: Path, out: Path, **options) -> None:
    """Write a Triton model repository: TensorRT plan for an engine, ONNX Runtime for an ONNX file."""
    from fmabs_edge.converters.triton import export_triton

    preferred = options.pop("preferred_batch_sizes") or None
    result = export_triton(model, out, preferred_batch_sizes=preferred, **options)
    click.echo(json.dumps(result.to_dict(), indent=2))
