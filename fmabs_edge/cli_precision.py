"""``fmabs-edge quantize``: an FP32 ONNX file -> its FP16 or INT8 variant, gated against FP32.

A separate command (not a flag of ``export``) because it needs no PyTorch: it runs on the ONNX
file that ``export`` wrote, so a variant can be made again (another calibration set, target or
gate) on a machine that has only the deploy install. The gate's table is printed; a variant that
misses the gate is still written, marked ``failed`` in its metadata, and the command exits 2.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from fmabs_edge.errors import GateError

logger = logging.getLogger(__name__)


def _fraction(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"must be within 0..1, got {value}.")
    return value


def _at_least_one(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}.")
    return value


@click.command(name="quantize")
@click.argument("onnx_in", type=click.Path(path_type=Path))
@click.option(
    "--precision",
    type=click.Choice(["fp16", "int8"]),
    required=True,
    help="FP16 casts with FP32 islands, or INT8 Q/DQ calibrated on normal images.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Variant ONNX file to write.",
)
@click.option(
    "--target",
    type=click.Choice(["trt", "cpu"]),
    default="trt",
    show_default=True,
    help="INT8: 'trt' keeps other layers FP16 (strongly typed TensorRT); 'cpu' keeps them FP32.",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of normal images to calibrate on [default: the model's training images].",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="INT8 range rule; minmax never clips what normal images reach.",
)
@click.option(
    "--batch-size",
    type=int,
    default=8,
    show_default=True,
    callback=_at_least_one,
    help="Images per calibration and gate batch.",
)
@click.option(
    "--max-calib-images",
    type=int,
    default=300,
    show_default=True,
    callback=_at_least_one,
    help="At most this many calibration images, evenly spaced over the sorted list.",
)
@click.option(
    "--calib-cache",
    "cache_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Calibration cache folder [default: ~/.cache/fmabs-edge/calibration].",
)
@click.option(
    "--cache/--no-cache",
    "use_cache",
    default=True,
    help="Reuse calibration ranges on an exact key match.",
)
@click.option(
    "--signal",
    type=click.Choice(["float", "quantize"]),
    default="float",
    show_default=True,
    help="INT8: keep the anomaly-signal tensors (|T - S|, standardisation, attention) float.",
)
@click.option(
    "--reduce-range/--no-reduce-range",
    default=None,
    help="INT8: 7-bit weights [default: on for --target cpu (no VNNI saturation), off for trt].",
)
@click.option(
    "--gate-data",
    multiple=True,
    type=click.Path(path_type=Path),
    help="MVTec-style category folder to gate on (repeatable) [default: the training category].",
)
@click.option(
    "--gate/--no-gate", default=True, help="Score the variant against FP32 and record the verdict."
)
@click.option(
    "--max-metric-delta",
    type=float,
    default=0.01,
    show_default=True,
    callback=_fraction,
    help="Largest allowed |delta| of image AUROC, pixel AUROC and AUPRO to FP32.",
)
@click.option(
    "--min-decision-agreement",
    type=float,
    default=0.98,
    show_default=True,
    callback=_fraction,
    help="Smallest allowed share of test images decided as FP32 decides them.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the full report as JSON here.",
)
def quantize_command(
    onnx_in: Path,
    precision: str,
    out: Path,
    target: str,
    calib: Path | None,
    calibration_method: str,
    batch_size: int,
    max_calib_images: int,
    cache_dir: Path | None,
    use_cache: bool,
    signal: str,
    reduce_range: bool | None,
    gate_data: tuple[Path, ...],
    gate: bool,
    max_metric_delta: float,
    min_decision_agreement: float,
    json_path: Path | None,
) -> None:
    """Make the FP16 or INT8 variant of an exported FP32 ONNX file and gate it against FP32."""
    from fmabs_edge.artefacts import write_text_atomic
    from fmabs_edge.converters.gate import GateCriteria, format_gate_table
    from fmabs_edge.converters.precision import convert_precision

    report = convert_precision(
        onnx_in,
        out,
        precision,
        target=target,
        calib=calib,
        calibration_method=calibration_method,
        batch_size=batch_size,
        max_calib_images=max_calib_images,
        cache_dir=cache_dir,
        use_cache=use_cache,
        signal_in_float=signal == "float",
        reduce_range=reduce_range,
        gate=gate,
        gate_data=list(gate_data) or None,
        criteria=GateCriteria(max_metric_delta, min_decision_agreement),
        raise_on_gate_failure=False,
    )
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report.to_dict(), indent=2, default=str))
    label = precision if precision == "fp16" else f"int8-{target}"
    click.echo(f"wrote {out} ({label}; {report.qdq_nodes} Q/DQ nodes)")
    if report.gate is None:
        click.echo("gate: not run (--no-gate)")
        return
    click.echo(format_gate_table(report.gate, label))
    if not report.gate.passed:
        raise GateError(
            f"{out} misses the accuracy gate; it is written and marked 'failed' in its metadata."
        )
