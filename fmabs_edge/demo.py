"""The main job on a fresh machine: synthetic data -> train -> export -> run (ORT) -> evaluate.

:func:`make_synthetic_category` draws an MVTec-style folder of woven-looking textures; defective
test images carry scratches, blobs or stains with exact masks. Tests use it too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fmabs_edge.artefacts import write_bytes_atomic

logger = logging.getLogger(__name__)

DEFECT_KINDS = ("scratch", "blob", "stain")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal image: crossed gratings with a little jitter and noise, ``(size, size, 3) uint8``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, 2)
    freq = 8.0 + rng.uniform(-0.3, 0.3)
    weave = np.sin(2 * np.pi * freq * xx + phase[0]) * np.sin(2 * np.pi * freq * yy + phase[1])
    base = 128 + 45 * weave + rng.normal(0, 6, (size, size))
    tint = np.array([1.0, 0.92, 0.8]) * rng.uniform(0.95, 1.05)
    return np.clip(base[:, :, None] * tint, 0, 255).astype(np.uint8)


def _draw_defect(image: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Draw one defect in place; returns its ``(size, size) uint8`` mask (0/255)."""
    size = image.shape[0]
    mask = np.zeros((size, size), np.uint8)
    centre = tuple(int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = size * rng.uniform(0.2, 0.4)
        dx, dy = int(np.cos(angle) * length / 2), int(np.sin(angle) * length / 2)
        p1, p2 = (centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)
        thickness = max(2, size // 40)
        cv2.line(mask, p1, p2, 255, thickness)
        image[mask > 0] = (235, 235, 235)
    elif kind == "blob":
        axes = (int(size * rng.uniform(0.05, 0.1)), int(size * rng.uniform(0.04, 0.08)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image[mask > 0] = (40, 30, 30)
    else:
        radius = int(size * rng.uniform(0.06, 0.1))
        cv2.circle(mask, centre, radius, 255, -1)
        stained = image.astype(np.float32) * np.array([0.6, 0.9, 1.3])
        image[mask > 0] = np.clip(stained, 0, 255).astype(np.uint8)[mask > 0]
    return mask


def _write_png(path: Path, array: np.ndarray) -> None:
    data = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", data)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 PNGs
        raise RuntimeError(f"cannot encode {path}")
    write_bytes_atomic(path, encoded.tobytes())


def make_synthetic_category(
    root: str | Path,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_defect: int = 18,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write an MVTec-style category (train/good, test/good, test/<kind>, ground_truth) to ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for index in range(n_train):
        _write_png(root / "train" / "good" / f"{index:03d}.png", _texture(rng, size))
    for index in range(n_test_good):
        _write_png(root / "test" / "good" / f"{index:03d}.png", _texture(rng, size))
    for index in range(n_test_defect):
        kind = DEFECT_KINDS[index % len(DEFECT_KINDS)]
        image = _texture(rng, size)
        mask = _draw_defect(image, rng, kind)
        _write_png(root / "test" / kind / f"{index:03d}.png", image)
        _write_png(root / "ground_truth" / kind / f"{index:03d}_mask.png", mask)
    logger.info(
        "Synthetic category with %d train and %d test images in %s",
        n_train,
        n_test_good + n_test_defect,
        root,
    )
    return root


def run_demo(out_dir: str | Path, epochs: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Make data, train, export, run with ONNX Runtime and evaluate; returns the metrics."""
    from fmabs_edge.converters.export import export_onnx
    from fmabs_edge.evaluate import evaluate
    from fmabs_edge.runtime.runners import load_runner
    from fmabs_edge.score_folder import score_paths
    from fmabs_edge.train import TrainOptions, train

    out_dir = Path(out_dir)
    data = make_synthetic_category(out_dir / "data", seed=seed)
    options = TrainOptions(
        epochs=epochs or 8, batch_size=4, image_size=128, seed=seed, val_fraction=0.2
    )
    result = train(data, out_dir / "run", options)
    onnx_path = out_dir / "run" / "model.onnx"
    export_onnx(result.checkpoint, onnx_path)
    with load_runner(onnx_path, "ort") as runner:
        summary = score_paths(runner, [data / "test"], out_dir / "results")
    logger.info("Scored %d test images -> %s", summary.n_scored, summary.results_csv)
    return evaluate(onnx_path, data, backend="ort", json_path=out_dir / "results" / "metrics.json")
