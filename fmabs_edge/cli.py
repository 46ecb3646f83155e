"""The ``fmabs-edge`` command: a thin shell over the library.

Each command parses its flags (named as the library's parameters), calls one library function and
prints the result. Every :class:`~fmabs_edge.errors.FmabsError` becomes one clean line on stderr
and exit code 2. Logging is configured here alone (``-v``/``-q``). Heavy libraries (torch,
TensorRT) are imported inside the commands that need them, so ``--help`` is fast everywhere.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click

from fmabs_edge import __version__
from fmabs_edge.errors import FmabsError

logger = logging.getLogger(__name__)


class _Group(click.Group):
    """A click group that turns package errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FmabsError as err:
            click.secho(f"error: {err}", err=True, fg="red")
            sys.exit(2)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, markup=False, rich_tracebacks=False)
    root = logging.getLogger("fmabs_edge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fmabs-edge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """Visual anomaly detection with FMABS: train, export, quantise, build, run, evaluate, benchmark."""
    _configure_logging(verbose, quiet)


def _positive(ctx: click.Context, param: click.Parameter, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be a positive number, got {value}.")
    return value


def _inference_options(command):
    """``--backend``, ``--batch-size`` and ``--threshold``: the flags every scoring command shares."""
    options = [
        click.option(
            "--backend",
            type=click.Choice(["ort", "torch", "trt"]),
            default=None,
            help="Backend [default: from the model file's suffix: .onnx ort, .pt torch, .engine trt].",
        ),
        click.option(
            "--batch-size",
            type=int,
            default=8,
            show_default=True,
            callback=_positive,
            help="Images per inference call.",
        ),
        click.option(
            "--threshold",
            type=float,
            default=None,
            callback=_finite,
            help="Override the stored decision threshold (a finite number).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _finite(ctx: click.Context, param: click.Parameter, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}.")
    return value


def _rate(ctx: click.Context, param: click.Parameter, value):
    """A false-reject rate such as ``0.5%`` or ``0.005``, checked to lie in [0, 1)."""
    if value is None:
        return None
    from fmabs_edge.errors import UsageError
    from fmabs_edge.threshold import parse_rate

    try:
        return parse_rate(value)
    except UsageError as err:
        raise click.BadParameter(str(err)) from err


def _echo_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------------------------
# train / threshold / export


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder for model.pt.",
)
@click.option(
    "--epochs", type=int, default=None, callback=_positive, help="Training epochs [default: 30]."
)
@click.option(
    "--batch-size", type=int, default=None, callback=_positive, help="Images per step [default: 8]."
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    callback=_positive,
    help="Model input S (multiple of 16) [default: 256].",
)
@click.option(
    "--backbone",
    type=click.Choice(["efficientnet_lite0", "resnet18"]),
    default=None,
    help="Teacher/student architecture [default: efficientnet_lite0].",
)
@click.option(
    "--teacher-weights",
    type=click.Path(path_type=Path),
    default=None,
    help="State dict for the teacher (required for resnet18; nothing is downloaded).",
)
@click.option(
    "--attention/--no-attention",
    default=None,
    help="FIGA attention, or decode from the last student stage [default: attention].",
)
@click.option(
    "--decoder",
    type=click.Choice(["upconv", "deconv"]),
    default=None,
    help="Decoder kind [default: upconv].",
)
@click.option(
    "--learning-rate",
    type=float,
    default=None,
    callback=_positive,
    help="Adam learning rate [default: 1e-3].",
)
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option(
    "--val-fraction",
    type=float,
    default=None,
    help="Share of normal images held out for statistics and threshold [default: 0.1].",
)
@click.option(
    "--max-false-reject",
    type=str,
    default=None,
    callback=_rate,
    help="Threshold rule: allowed false-reject rate on held-out good images, e.g. 0.5% or 0.005 "
    "[default: 0.5%].",
)
@click.option(
    "--max-train-images",
    type=int,
    default=None,
    callback=_positive,
    help="Train on at most this many images (after the hold-out) [default: all].",
)
@click.option(
    "--resume/--no-resume", default=False, help="Continue from RUN_DIR/last.pt if present."
)
def train(data: Path, out_dir: Path, **options) -> None:
    """Train an FMABS model on a folder of normal images (or an MVTec category's train/good)."""
    from fmabs_edge.train import TrainOptions, train as train_model

    options = {k: v for k, v in options.items() if v is not None}
    result = train_model(data, out_dir, TrainOptions(**options))
    click.echo(f"checkpoint: {result.checkpoint}")
    click.echo(f"threshold: {result.metadata.threshold:.6g} ({result.metadata.threshold_rule})")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--good",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of good images to fit on.",
)
@click.option(
    "--max-false-reject",
    type=str,
    required=True,
    callback=_rate,
    help="Allowed false-reject rate, e.g. 0.5% or 0.005.",
)
@click.option(
    "--backend",
    type=click.Choice(["ort", "torch", "trt"]),
    default=None,
    help="Backend that scores the images [default: from the file suffix].",
)
@click.option(
    "--batch-size",
    type=int,
    default=8,
    show_default=True,
    callback=_positive,
    help="Images per inference call.",
)
def threshold(
    model: Path, good: Path, max_false_reject: str, backend: str | None, batch_size: int
) -> None:
    """Re-fit the decision threshold on good images; rewrites only the metadata (no rebuild needed)."""
    from fmabs_edge.threshold import parse_rate, refit_threshold

    result = refit_threshold(
        model, good, parse_rate(max_false_reject), backend=backend, batch_size=batch_size
    )
    _echo_json(result)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--out", "out_path", required=True, type=click.Path(path_type=Path), help="ONNX file to write."
)
@click.option(
    "--check/--no-check",
    default=True,
    help="Compare ONNX Runtime with PyTorch after export [default: on].",
)
@click.option(
    "--input-size",
    default=None,
    help="Camera frame size WxH (e.g. 1920x1080), resized to S×S inside the graph; gate the variant with "
    "converters.input_resize.gate_input_resize [default: none, S×S frames].",
)
def export(checkpoint: Path, out_path: Path, check: bool, input_size: str | None) -> None:
    """Export a checkpoint to one self-contained ONNX file (preprocessing and scoring inside)."""
    from fmabs_edge.converters.export import export_onnx
    from fmabs_edge.converters.input_resize import add_input_resize, parse_input_size

    camera_size = parse_input_size(input_size) if input_size is not None else None
    report = export_onnx(checkpoint, out_path, check=check)
    if camera_size is not None:
        report["input_resize"] = add_input_resize(out_path, out_path, *camera_size)
    _echo_json(report)


# --------------------------------------------------------------------------------------------
# run / eval / demo


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for results.csv (and maps).",
)
@_inference_options
@click.option(
    "--save-maps/--no-save-maps", default=False, help="Write a heatmap overlay PNG per image."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Streaming: per-camera YAML/TOML (ROI, ignore mask, aspect, operating point).",
)
@click.option(
    "--jsonl",
    type=click.Path(path_type=Path),
    default=None,
    help="Streaming: event file [default: OUT/events.jsonl].",
)
@click.option(
    "--save-video", is_flag=True, help="Streaming: an overlay video per source in OUT/videos/."
)
@click.option(
    "--save-rejects",
    is_flag=True,
    help="Streaming: rejected frames with their maps in OUT/rejects/.",
)
@click.option(
    "--display",
    is_flag=True,
    help="Streaming: show overlays in a window (needs an OpenCV with a GUI).",
)
@click.option(
    "--max-frames",
    type=click.IntRange(min=1),
    default=None,
    help="Streaming: stop each source after this many frames.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Streaming: decoded frames waiting per source (a live source drops its oldest when full).",
)
def run(
    model: Path,
    inputs: tuple[str, ...],
    out_dir: Path,
    backend: str | None,
    batch_size: int,
    threshold: float | None,
    save_maps: bool,
    **stream,
) -> None:
    """Score image files or folders (OUT/results.csv), or stream any mix of videos, folders,
    cameras (0, /dev/video0), URLs (rtsp://...) and GStreamer pipelines (OUT/events.jsonl)."""
    from fmabs_edge.runtime.runners import load_runner
    from fmabs_edge.runtime.sources import is_stream_spec
    from fmabs_edge.score_folder import score_paths

    if any(map(is_stream_spec, inputs)) or any(v for k, v in stream.items() if k != "queue_size"):
        from fmabs_edge.runtime.stream import StreamOptions, stream_inputs

        source = click.get_current_context().get_parameter_source("batch_size")
        options = StreamOptions(
            batch_size=None if source == click.core.ParameterSource.DEFAULT else batch_size,
            threshold=threshold,
            out_dir=out_dir,
            jsonl=stream["jsonl"],
            save_video=stream["save_video"],
            save_rejects=stream["save_rejects"],
            display=stream["display"],
            max_frames=stream["max_frames"],
            queue_size=stream["queue_size"],
        )
        with load_runner(model, backend) as runner:
            click.echo(
                stream_inputs(runner, inputs, options, config_path=stream["config_path"]).format()
            )
        return
    with load_runner(model, backend) as runner:
        summary = score_paths(
            runner,
            [Path(i) for i in inputs],
            out_dir,
            batch_size=batch_size,
            threshold=threshold,
            save_maps=save_maps,
        )
    click.echo(
        f"scored {summary.n_scored}, skipped {summary.n_skipped}, rejected {summary.n_rejected} -> {summary.results_csv}"
    )


@main.command(name="eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the metrics JSON here.",
)
@_inference_options
def evaluate_command(
    model: Path,
    data: Path,
    json_path: Path | None,
    backend: str | None,
    batch_size: int,
    threshold: float | None,
) -> None:
    """Evaluate a model on an MVTec-style category folder (image/pixel AUROC, AUPRO, F1-max)."""
    from fmabs_edge.evaluate import evaluate, format_metrics

    metrics = evaluate(
        model,
        data,
        backend=backend,
        batch_size=batch_size,
        threshold=threshold,
        json_path=json_path,
    )
    click.echo(format_metrics(metrics))


@main.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the data, model and results.",
)
@click.option(
    "--epochs", type=int, default=None, callback=_positive, help="Training epochs [default: 8]."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the synthetic data and the training.",
)
def demo(out_dir: Path, epochs: int | None, seed: int) -> None:
    """Make a synthetic defect set, train briefly, export, run with ONNX Runtime and evaluate."""
    from fmabs_edge.demo import run_demo
    from fmabs_edge.evaluate import format_metrics

    metrics = run_demo(out_dir, epochs=epochs, seed=seed)
    click.echo(format_metrics(metrics))


# Commands of the later stages register below, one import and one add_command each.
from fmabs_edge.cli_benchmark import benchmark  # noqa: E402

main.add_command(benchmark)
from fmabs_edge.cli_triton import export_triton_command  # noqa: E402

main.add_command(export_triton_command)
from fmabs_edge.cli_trt import build_command  # noqa: E402

main.add_command(build_command)
from fmabs_edge.cli_precision import quantize_command  # noqa: E402

main.add_command(quantize_command)
