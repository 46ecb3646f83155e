"""Sweep files: the model variants of a benchmark, made where they are missing and reused otherwise.

A sweep file is YAML (``.yaml``/``.yml``) or TOML (``.toml``); relative paths are relative to it::

    work_dir: sweep_work          # checkpoints and ONNX files (default: <file stem>_work)
    train_data: null              # normal images to train on (default: the benchmark's --data)
    calib: null                   # INT8 calibration folder (default: the converter's own default)
    check_export: true            # each export compares ONNX Runtime with PyTorch (slower, safer)
    precision_gate: true          # FP16/INT8 conversions score themselves (a miss warns)
    defaults:                     # TrainOptions fields for every trained model
      epochs: 10
    models:
      - name: attention
        train: {attention: true}
        precisions: [fp32, fp16, int8]
        torch_reference: true     # also time the checkpoint itself (PyTorch eager)
      - name: no_attention
        train: {attention: false}
      - name: reconstruction      # the same weights, another scoring: statistics and threshold
        from: attention           # are re-fitted on the held-out normal images, nothing retrains
        scoring: {weight_reconstruction: 0.5}
      - name: given
        checkpoint: runs/bottle/model.pt   # use this checkpoint, never train
    variants:                     # plain artefacts, as on the command line
      - {name: patchcore, path: patchcore.onnx}

Per model, ``work_dir/<name>/model.pt`` is trained (``fmabs_edge.train.train``) unless it exists,
and ``work_dir/<name>/model_<precision>.onnx`` is exported (``export_onnx``) or converted
(``convert_precision``; INT8 for ONNX Runtime keeps FP32 between its Q/DQ layers, ``int8-cpu``,
and for ``--backend trt`` FP16, ``int8-trt``) unless a file exists whose metadata names this very
checkpoint (sha256); a stale file is remade. The variants are named ``<model>-<precision>`` and
``<model>-torch``.
"""

from __future__ import annotations

import logging

try:  # Python 3.11+; tomli is the same parser for 3.10 (JetPack 6's Python)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fmabs_edge.artefacts import load_onnx, read_metadata
from fmabs_edge.errors import FmabsError, UsageError
from fmabs_edge.metadata import ModelMetadata, sha256_file

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
_MODEL_KEYS = {"name", "train", "precisions", "torch_reference", "checkpoint", "from", "scoring"}
_SWEEP_KEYS = {
    "work_dir",
    "train_data",
    "calib",
    "defaults",
    "models",
    "variants",
    "check_export",
    "precision_gate",
}


@dataclass
class ModelEntry:
    """One model of a sweep: trained with ``train`` options, or taken from ``checkpoint``, or
    re-scored from another entry (``source``) with ``scoring`` fields."""

    name: str
    train: dict[str, Any] = field(default_factory=dict)
    precisions: tuple[str, ...] = ("fp32",)
    torch_reference: bool = False
    checkpoint: Path | None = None
    source: str | None = None
    scoring: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """A parsed sweep: where to work, what to train on, which models and extra artefacts."""

    work_dir: Path
    models: list[ModelEntry] = field(default_factory=list)
    train_data: Path | None = None
    calib: Path | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    #: (name, path) of artefacts benchmarked as they are.
    variants: list[tuple[str, Path]] = field(default_factory=list)
    #: Let each export compare ONNX Runtime with PyTorch (export_onnx's check).
    check_export: bool = True
    #: Score FP16/INT8 files against FP32 while converting (convert_precision's gate).
    precision_gate: bool = True


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"Sweep file not found: {path}.")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise UsageError(f"Sweep file {path} must end in .yaml, .yml or .toml.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"Sweep file {path} cannot be parsed: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"Sweep file {path} must hold a mapping with 'models' and/or 'variants'.")
    return data


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; relative paths resolve against its folder."""
    path = Path(path)
    data = _read_mapping(path)
    unknown = set(data) - _SWEEP_KEYS
    if unknown:
        raise UsageError(
            f"Sweep file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(_SWEEP_KEYS)}."
        )
    base = path.parent

    def resolve(value: Any) -> Path | None:
        return None if value is None else (base / str(value)).resolve()

    models = [_parse_model(entry, path, resolve) for entry in data.get("models") or []]
    variants = []
    for entry in data.get("variants") or []:
        if not isinstance(entry, dict) or "path" not in entry:
            raise UsageError(
                f"Sweep file {path}: each of 'variants' needs a 'path' (and may have a 'name')."
            )
        artefact = resolve(entry["path"])
        variants.append((str(entry.get("name") or artefact.stem), artefact))
    sweep = Sweep(
        work_dir=resolve(data.get("work_dir", f"{path.stem}_work")),
        models=models,
        train_data=resolve(data.get("train_data")),
        calib=resolve(data.get("calib")),
        defaults=dict(data.get("defaults") or {}),
        variants=variants,
        check_export=bool(data.get("check_export", True)),
        precision_gate=bool(data.get("precision_gate", True)),
    )
    check_sweep(sweep, str(path))
    return sweep


def _parse_model(entry: Any, path: Path, resolve) -> ModelEntry:
    if not isinstance(entry, dict) or "name" not in entry:
        raise UsageError(f"Sweep file {path}: every model needs a 'name'.")
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise UsageError(
            f"Sweep file {path}, model '{entry['name']}': unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(_MODEL_KEYS)}."
        )
    precisions = entry.get("precisions", ["fp32"])
    if isinstance(precisions, str):
        precisions = [precisions]
    return ModelEntry(
        name=str(entry["name"]),
        train=dict(entry.get("train") or {}),
        precisions=tuple(str(p).lower() for p in precisions),
        torch_reference=bool(entry.get("torch_reference", False)),
        checkpoint=resolve(entry.get("checkpoint")),
        source=entry.get("from"),
        scoring=dict(entry.get("scoring") or {}),
    )


def check_sweep(sweep: Sweep, source: str = "sweep") -> None:
    """Unique names, ``from`` naming an earlier model, ``scoring`` needs ``from``."""
    seen: set[str] = set()
    for model in sweep.models:
        if model.name in seen:
            raise UsageError(f"{source}: two models are named '{model.name}'.")
        bad = [p for p in model.precisions if p not in PRECISIONS]
        if bad:
            raise UsageError(
                f"{source}, model '{model.name}': unknown precisions {bad}; use {list(PRECISIONS)}."
            )
        if model.source is not None and model.source not in seen:
            raise UsageError(
                f"{source}, model '{model.name}': 'from: {model.source}' must name a model "
                "listed before it."
            )
        if model.source is not None and (model.train or model.checkpoint):
            raise UsageError(
                f"{source}, model '{model.name}': 'from' takes only 'scoring', "
                "not 'train'/'checkpoint'."
            )
        if model.scoring and model.source is None:
            raise UsageError(
                f"{source}, model '{model.name}': 'scoring' needs 'from: <model>' "
                "(the weights to re-score); "
                "to train with a scoring, put it under 'train: {scoring: {...}}'."
            )
        seen.add(model.name)


# -- making what is missing ------------------------------------------------------------------------


def _train_options(fields: dict[str, Any]) -> Any:
    from fmabs_edge.metadata import ScoringConfig
    from fmabs_edge.train import TrainOptions

    fields = dict(fields)
    if isinstance(fields.get("scoring"), dict):
        fields["scoring"] = ModelMetadata.from_dict({"scoring": fields["scoring"]}).scoring
    elif fields.get("scoring") is not None and not isinstance(fields["scoring"], ScoringConfig):
        raise UsageError(
            f"train.scoring must be a mapping of ScoringConfig fields, got {fields['scoring']!r}."
        )
    if "teacher_weights" in fields and fields["teacher_weights"] is not None:
        fields["teacher_weights"] = Path(fields["teacher_weights"])
    try:
        return TrainOptions(**fields)
    except TypeError as err:
        raise UsageError(f"Unknown training option in the sweep: {err}") from err


def _made_from(artefact: Path, checkpoint_sha256: str) -> bool:
    """True when ``artefact`` exists and its metadata names the checkpoint with this sha256."""
    if not artefact.is_file():
        return False
    try:
        metadata = read_metadata(load_onnx(artefact), str(artefact))
    except FmabsError as err:
        logger.info("Remaking %s: %s", artefact, err)
        return False
    if metadata.checkpoint_sha256 != checkpoint_sha256:
        logger.info("Remaking %s: it was made from another checkpoint", artefact)
        return False
    return True


def int8_target(backend: str | None) -> str:
    """The INT8 file's target: FP16 between the Q/DQ layers for TensorRT, FP32 for ONNX Runtime."""
    return "trt" if backend == "trt" else "cpu"


def make_precision_variant(
    fp32_onnx: Path, precision: str, out_path: Path, calib: Path | None, target: str, gate: bool
) -> None:
    """FP16/INT8 ONNX from the FP32 file (``fmabs_edge.converters.precision.convert_precision``).

    A variant that misses the accuracy gate is kept (marked failing in its metadata) and
    benchmarked anyway, with a warning: the benchmark reports its accuracy beside FP32.
    """
    try:
        from fmabs_edge.converters.precision import convert_precision
    except ImportError as err:
        raise UsageError(
            f"The sweep asks for {precision}, but fmabs_edge.converters.precision is not "
            f"available ({err}); "
            "list only fp32, or install an fmabs-edge that has it."
        ) from err
    report = convert_precision(
        fp32_onnx,
        out_path,
        precision,
        target=target,
        calib=calib,
        gate=gate,
        raise_on_gate_failure=False,
    )
    if gate and not report.passed:
        logger.warning(
            "%s missed the accuracy gate; it is benchmarked anyway (see its accuracy columns).",
            out_path,
        )


def _warn_if_trained_otherwise(checkpoint: Path, options: Any) -> None:
    """Warn when a reused checkpoint's architecture or epochs differ from what the sweep asks."""
    from fmabs_edge.checkpoint import read_checkpoint

    stored = ModelMetadata.from_dict(read_checkpoint(checkpoint)["metadata"], str(checkpoint))
    wanted = {
        "image_size": options.image_size,
        "attention": options.attention,
        "backbone": options.backbone,
        "decoder": options.decoder,
        "epochs": options.epochs,
    }
    found = {
        "image_size": stored.model.image_size,
        "attention": stored.model.attention,
        "backbone": stored.model.backbone,
        "decoder": stored.model.decoder,
        "epochs": stored.training.get("epochs"),
    }
    differ = {key: (found[key], wanted[key]) for key in wanted if found[key] != wanted[key]}
    if differ:
        logger.warning(
            "Reusing %s although it differs from the sweep (found, wanted): %s; "
            "delete it to retrain.",
            checkpoint,
            differ,
        )


def _checkpoint_for(model: ModelEntry, sweep: Sweep, data: Path, made: dict[str, Path]) -> Path:
    if model.checkpoint is not None:
        if not model.checkpoint.is_file():
            raise UsageError(f"Model '{model.name}': checkpoint {model.checkpoint} not found.")
        return model.checkpoint
    target = sweep.work_dir / model.name / "model.pt"
    if model.source is not None:
        source = made[model.source]
        stamp = target.with_suffix(".source")
        source_sha = sha256_file(source)
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == source_sha:
            logger.info("Reusing %s (re-scored from %s)", target, source)
            return target
        from fmabs_edge.train import rescore_checkpoint

        rescore_checkpoint(source, target, model.scoring)
        stamp.write_text(source_sha + "\n")
        return target
    options = _train_options({**sweep.defaults, **model.train})
    if target.is_file():
        logger.info("Reusing %s", target)
        _warn_if_trained_otherwise(target, options)
        return target
    from fmabs_edge.train import train

    logger.info("Training '%s' on %s", model.name, data)
    return train(data, target.parent, options).checkpoint


def prepare_sweep(sweep: Sweep, default_data: Path, backend: str | None = None) -> list[Any]:
    """Make the sweep's missing checkpoints and ONNX files; return the benchmark's VariantSpecs."""
    from fmabs_edge.benchmarks.run import VariantSpec, variant_backend

    data = sweep.train_data or default_data
    sweep.work_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    specs: list[VariantSpec] = []
    for model in sweep.models:
        checkpoint = _checkpoint_for(model, sweep, data, made)
        made[model.name] = checkpoint
        checkpoint_sha = sha256_file(checkpoint)
        folder = sweep.work_dir / model.name
        fp32 = folder / "model_fp32.onnx"
        if not _made_from(fp32, checkpoint_sha):
            from fmabs_edge.converters.export import export_onnx

            export_onnx(checkpoint, fp32, check=sweep.check_export)
        for precision in model.precisions:
            label = f"int8-{int8_target(backend)}" if precision == "int8" else precision
            path = fp32 if precision == "fp32" else folder / f"model_{label}.onnx"
            if precision != "fp32" and not _made_from(path, checkpoint_sha):
                make_precision_variant(
                    fp32, precision, path, sweep.calib, int8_target(backend), sweep.precision_gate
                )
            specs.append(
                VariantSpec(path, variant_backend(path, backend), f"{model.name}-{precision}")
            )
        if model.torch_reference:
            specs.append(VariantSpec(checkpoint, "torch", f"{model.name}-torch"))
    for name, path in sweep.variants:
        specs.append(VariantSpec(path, variant_backend(path, backend), name))
    return specs
