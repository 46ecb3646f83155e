"""``fmabs-edge build``: an fmabs-edge ONNX file -> a TensorRT engine and its manifest.

A thin shell over :func:`fmabs_edge.converters.tensorrt_build.build_engine`: flags are that
function's parameters, unset flags pass None through (the library resolves defaults), and every
package error becomes one line and exit code 2 (also when TensorRT is not installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _at_least_one(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}.")
    return value


@click.command(name="build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "engine_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Engine file to write (MODEL.engine); its manifest goes to MODEL.engine.json.",
)
@click.option(
    "--min-batch",
    type=int,
    default=None,
    callback=_at_least_one,
    help="Smallest batch of the optimisation profile [default: 1; run/eval/benchmark need 1].",
)
@click.option(
    "--opt-batch",
    type=int,
    default=None,
    callback=_at_least_one,
    help="Batch TensorRT tunes kernels for [default: 8, clamped into min..max].",
)
@click.option(
    "--max-batch",
    type=int,
    default=None,
    callback=_at_least_one,
    help="Largest batch of the profile; larger batches are split at run time [default: 8].",
)
@click.option(
    "--workspace-mb",
    type=int,
    default=None,
    callback=_at_least_one,
    help="Workspace memory limit for the builder in MiB [default: TensorRT's, the device memory].",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Timing cache file: loaded if it exists, saved after the build (faster rebuilds).",
)
@click.option(
    "--builder-optimization-level",
    type=click.IntRange(0, 5),
    default=None,
    help="TensorRT builder optimisation level 0-5; higher searches longer "
    "[default: TensorRT's, 3].",
)
@click.option(
    "--hardware-compatibility/--no-hardware-compatibility",
    default=False,
    help="Build an AMPERE_PLUS engine that runs on any Ampere or newer GPU (may be slower) "
    "[default: off, this GPU's compute capability only].",
)
@click.option(
    "--version-compatible/--no-version-compatible",
    default=False,
    help="Build a version-compatible engine that also runs on newer TensorRT (10.x -> 11.x) "
    "[default: off, this TensorRT version only].",
)
@click.option(
    "--clear-tf32/--allow-tf32",
    "clear_tf32",
    default=None,
    help="Forbid TF32 math in FP32 layers [default: forbidden for FP32 graphs (parity with ONNX "
    "Runtime), TensorRT's default for FP16/INT8 graphs].",
)
@click.option(
    "--rebuild-if-stale/--always-build",
    default=False,
    help="Keep an existing engine built by this TensorRT on this GPU from this graph with these "
    "options; build only otherwise [default: always build].",
)
@click.option(
    "--cuda",
    type=click.Choice(["pycuda", "cuda-python"]),
    default=None,
    help="CUDA binding used to query the GPU [default: pycuda, else cuda-python].",
)
def build_command(model: Path, engine_path: Path, cuda: str | None, **options) -> None:
    """Build a strongly typed TensorRT engine from an fmabs-edge ONNX file.

    Precision comes from the ONNX file itself (FP32, FP16 casts or INT8 Q/DQ from the precision
    step); there are no precision flags. Needs TensorRT >= 10.3 (Jetson: JetPack >= 6.1) and
    pycuda or cuda-python: pip install 'fmabs-edge[trt]' (Jetson: see the README's TensorRT
    section).
    """
    from fmabs_edge.converters.tensorrt_build import build_engine

    manifest = build_engine(model, engine_path, cuda=cuda, **options)
    profile = manifest.profile
    summary = {
        "engine": str(engine_path),
        "manifest": str(engine_path) + ".json",
        "tensorrt": manifest.built_on.tensorrt_version,
        "gpu": f"{manifest.built_on.gpu_name} (compute {manifest.built_on.compute_capability})",
        "precision": manifest.precision,
        "profile": f"{profile.min_batch}/{profile.opt_batch}/{profile.max_batch}",
        "input_hw": list(profile.input_hw),
        "engine_mb": round(manifest.engine_nbytes / 1e6, 2),
        "built_at": manifest.built_at,
    }
    click.echo(json.dumps(summary, indent=2))
