"""FmabsNet and DeployModel: stage shapes per backbone, weight loading, the branches that run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fmabs_edge.errors import ModelError, UsageError
from fmabs_edge.metadata import ModelConfig, NormalisationStats, ScoringConfig
from fmabs_edge.model import BACKBONES, DeployModel, FmabsNet, default_teacher_weights

SIZE = 64


def _config(backbone: str = "efficientnet_lite0", attention: bool = True) -> ModelConfig:
    spec = BACKBONES[backbone]
    return ModelConfig(
        backbone=backbone,
        image_size=SIZE,
        attention=attention,
        input_mean=spec["mean"],
        input_std=spec["std"],
    )


def _batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=generator)


def _expected_stage_shapes(backbone: str, n: int) -> list[tuple[int, ...]]:
    channels = BACKBONES[backbone]["channels"]
    return [(n, c, SIZE // s, SIZE // s) for c, s in zip(channels, (4, 8, 16))]


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "no-attention"])
def test_efficientnet_forward_shapes(attention: bool) -> None:
    torch.manual_seed(0)
    net = FmabsNet(_config(attention=attention)).eval()
    with torch.no_grad():
        outputs = net(_batch())

    expected = _expected_stage_shapes("efficientnet_lite0", 2)
    assert [tuple(t.shape) for t in outputs["teacher"]] == expected
    assert [tuple(t.shape) for t in outputs["student"]] == expected
    assert [tuple(t.shape) for t in outputs["differences"]] == expected
    stages = zip(outputs["differences"], outputs["teacher"], outputs["student"])
    for difference, teacher, student in stages:
        torch.testing.assert_close(difference, (teacher - student).abs())
    assert tuple(outputs["reconstruction"].shape) == (2, 3, SIZE, SIZE)
    if attention:
        attention_map = outputs["attention"]
        assert tuple(attention_map.shape) == (2, 1, SIZE // 4, SIZE // 4)
        assert float(attention_map.min()) >= 0.0 and float(attention_map.max()) <= 1.0
    else:
        assert outputs["attention"] is None
        assert not hasattr(net, "figa")


def test_resnet18_teacher_loads_weights_from_a_path(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18_weights.pth"
    torch.save(reference.state_dict(), weights)

    torch.manual_seed(2)
    net = FmabsNet(_config("resnet18"), teacher_weights=weights).eval()
    teacher_conv = net.teacher.stem[0].weight
    torch.testing.assert_close(teacher_conv, reference.conv1.weight)
    student_conv = net.student.stem[0].weight
    assert not torch.equal(student_conv, reference.conv1.weight), "the student must start random"
    assert all(not p.requires_grad for p in net.teacher.parameters())

    with torch.no_grad():
        outputs = net(_batch())
    assert [tuple(t.shape) for t in outputs["teacher"]] == _expected_stage_shapes("resnet18", 2)
    assert tuple(outputs["reconstruction"].shape) == (2, 3, SIZE, SIZE)


def test_teacher_weights_of_another_architecture_name_the_file(tmp_path: Path) -> None:
    import timm

    foreign = tmp_path / "lite0_given_as_resnet.pth"
    torch.save(timm.create_model("efficientnet_lite0", pretrained=False).state_dict(), foreign)
    with pytest.raises(ModelError) as caught:
        FmabsNet(_config("resnet18"), teacher_weights=foreign)
    assert str(foreign) in str(caught.value)
    assert "architecture" in str(caught.value)


def test_bundled_lite0_weights_are_checked_shape_by_shape(tmp_path: Path) -> None:
    bundled_path = default_teacher_weights("efficientnet_lite0")
    bundled = torch.load(bundled_path, map_location="cpu", weights_only=True)
    assert len(bundled) == 296
    net = FmabsNet(_config(), teacher_weights=bundled_path)
    first_key = next(iter(bundled))
    torch.testing.assert_close(net.teacher.stem[0].weight, bundled[first_key])

    # One tensor of the wrong shape: refused, and the message names the file and the entry.
    bent = dict(bundled)
    bent[first_key] = torch.zeros(8, 3, 3, 3)
    bad = tmp_path / "bent.pth"
    torch.save(bent, bad)
    with pytest.raises(ModelError) as caught:
        FmabsNet(_config(), teacher_weights=bad)
    assert str(bad) in str(caught.value) and first_key in str(caught.value)

    # One tensor missing: refused with the counts.
    short = dict(list(bundled.items())[:-1])
    torch.save(short, bad)
    with pytest.raises(ModelError, match="295 tensors"):
        FmabsNet(_config(), teacher_weights=bad)


def test_missing_teacher_weights_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(UsageError, match="nowhere.pth"):
        FmabsNet(_config("resnet18"), teacher_weights=missing)


@pytest.mark.parametrize("size", [72, 16])
def test_image_size_must_be_a_multiple_of_16(size: int) -> None:
    with pytest.raises(UsageError, match=f"image_size={size}"):
        FmabsNet(ModelConfig(image_size=size))


def _deploy(scoring: ScoringConfig, attention: bool = True) -> DeployModel:
    torch.manual_seed(0)
    net = FmabsNet(_config(attention=attention))
    return DeployModel(net, scoring, NormalisationStats()).eval()


def _uint8_images(n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("weight_reconstruction", "decoder_calls"),
    [(0.0, 0), (0.5, 1)],
    ids=["no-reconstruction", "reconstruction"],
)
def test_decoder_runs_only_when_reconstruction_scores(
    weight_reconstruction: float, decoder_calls: int
) -> None:
    deploy = _deploy(ScoringConfig(weight_reconstruction=weight_reconstruction))
    calls = []
    deploy.net.decoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        anomaly_map, image_score = deploy(_uint8_images(3))

    assert len(calls) == decoder_calls
    assert tuple(anomaly_map.shape) == (3, 1, SIZE, SIZE)
    assert tuple(image_score.shape) == (3,)
    assert anomaly_map.dtype == torch.float32 and image_score.dtype == torch.float32
    assert any("decoder" in b for b in deploy.omitted_branches) == (weight_reconstruction == 0.0)


def test_image_score_is_the_stated_reduction_of_the_map() -> None:
    images = _uint8_images(2)
    with torch.no_grad():
        anomaly_map, score_max = _deploy(ScoringConfig(reduction="max"))(images)
    torch.testing.assert_close(score_max, anomaly_map.flatten(1).max(dim=1).values)

    scoring = ScoringConfig(reduction="topk_mean", topk_fraction=0.01)
    with torch.no_grad():
        anomaly_map, score_topk = _deploy(scoring)(images)
    k = round(0.01 * SIZE * SIZE)
    expected = anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(dim=1)
    torch.testing.assert_close(score_topk, expected)


def test_deploy_without_attention_model() -> None:
    deploy = _deploy(ScoringConfig(use_attention=True), attention=False)
    assert deploy.use_attention is False
    with torch.no_grad():
        anomaly_map, image_score = deploy(_uint8_images(2))
    assert tuple(anomaly_map.shape) == (2, 1, SIZE, SIZE) and tuple(image_score.shape) == (2,)
    assert torch.isfinite(anomaly_map).all()
