"""The FMABS loss: its terms against their definitions, and that a few steps reduce it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fmabs_edge.metadata import ModelConfig
from fmabs_edge.model import FmabsNet, fmabs_loss

SIZE = 64


def _net(attention: bool) -> FmabsNet:
    torch.manual_seed(0)
    return FmabsNet(ModelConfig(image_size=SIZE, attention=attention))


def _batch() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "no-attention"])
def test_loss_terms_match_their_definitions(attention: bool) -> None:
    net = _net(attention).eval()
    x = _batch()
    with torch.no_grad():
        outputs = net(x)
        total, parts = fmabs_loss(
            outputs, x, weight_reconstruction=1.0, weight_mimic=0.5, weight_attention=0.3
        )

    expected_keys = {"rec", "fm", "total"} | ({"att"} if attention else set())
    assert set(parts) == expected_keys
    assert all(math.isfinite(v) for v in parts.values())
    assert math.isfinite(float(total))

    reconstruction = outputs["reconstruction"]
    rec = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
    mimic = sum(F.mse_loss(s, t) for s, t in zip(outputs["student"], outputs["teacher"])) / 3
    assert parts["rec"] == pytest.approx(float(rec), rel=1e-5)
    assert parts["fm"] == pytest.approx(float(mimic), rel=1e-5)
    expected_total = float(rec) + 0.5 * float(mimic)
    if attention:
        stage1 = outputs["differences"][0].mean(dim=1, keepdim=True)
        low = stage1.amin(dim=(2, 3), keepdim=True)
        high = stage1.amax(dim=(2, 3), keepdim=True)
        target = (stage1 - low) / (high - low + 1e-6)
        att = F.mse_loss(outputs["attention"], target)
        assert parts["att"] == pytest.approx(float(att), rel=1e-5)
        expected_total += 0.3 * float(att)
    assert parts["total"] == pytest.approx(expected_total, rel=1e-5)
    assert float(total) == pytest.approx(expected_total, rel=1e-5)


def test_loss_decreases_on_a_fixed_batch() -> None:
    net = _net(attention=True).train()
    x = _batch()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and not any(p.requires_grad for p in net.teacher.parameters())
    teacher_before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    optimizer = torch.optim.Adam(trainable, lr=1e-3)

    history = []
    for _ in range(6):
        loss, parts = fmabs_loss(net(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(parts["total"])

    assert history[-1] < 0.9 * history[0], history
    # The frozen teacher did not move: weights and BatchNorm running statistics alike.
    for key, after in net.teacher.state_dict().items():
        assert torch.equal(teacher_before[key], after), key
