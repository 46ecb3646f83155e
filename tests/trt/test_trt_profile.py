"""Profile arithmetic and build-option defaults (pure functions; CPU only, no TensorRT)."""

from __future__ import annotations

import logging

import pytest

from fmabs_edge.converters.tensorrt_build import resolve_build_options, resolve_profile
from fmabs_edge.errors import UsageError


def test_defaults_serve_batch_one_to_eight() -> None:
    assert resolve_profile() == (1, 8, 8)


def test_min_six_max_eight_without_opt_puts_opt_inside() -> None:
    low, opt, high = resolve_profile(min_batch=6, max_batch=8)
    assert (low, high) == (6, 8)
    assert 6 <= opt <= 8


def test_opt_is_clamped_down_to_a_small_max() -> None:
    assert resolve_profile(max_batch=4) == (1, 4, 4)


def test_max_grows_to_cover_a_large_min_or_opt() -> None:
    assert resolve_profile(min_batch=16) == (16, 16, 16)
    assert resolve_profile(opt_batch=12) == (1, 12, 12)


@pytest.mark.parametrize(
    ("low", "opt", "high"),
    [(0, None, None), (None, None, 0), (4, 2, 8), (1, 9, 8), (6, None, 4), (-1, 1, 1)],
)
def test_invalid_profiles_are_usage_errors(low, opt, high) -> None:
    with pytest.raises(UsageError, match="batch|min_batch|max_batch|opt_batch"):
        resolve_profile(low, opt, high)


def test_min_above_one_warns_that_serving_needs_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        options = resolve_build_options("fp32", min_batch=6, max_batch=8)
    assert options.min_batch == 6
    assert "--min-batch 1" in caplog.text


def test_tf32_cleared_by_default_for_fp32_only() -> None:
    assert resolve_build_options("fp32").clear_tf32 is True
    assert resolve_build_options("fp16").clear_tf32 is False
    assert resolve_build_options("int8 (entropy, 64 images)").clear_tf32 is False
    assert resolve_build_options("fp16", clear_tf32=True).clear_tf32 is True
    assert resolve_build_options("fp32", clear_tf32=False).clear_tf32 is False


def test_none_leaves_tensorrt_defaults_and_values_are_checked() -> None:
    options = resolve_build_options("fp32")
    assert options.workspace_mb is None and options.builder_optimization_level is None
    assert options.timing_cache is None
    with pytest.raises(UsageError, match="0..5"):
        resolve_build_options("fp32", builder_optimization_level=6)
    with pytest.raises(UsageError, match="workspace_mb"):
        resolve_build_options("fp32", workspace_mb=0)
