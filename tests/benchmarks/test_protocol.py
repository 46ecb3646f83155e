"""The timing protocol on a fake backend with exactly known delays (a fake clock, no sleeping)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fmabs_edge.benchmarks.fake_backend import FakeClock, FakeRunner
from fmabs_edge.benchmarks.protocol import (
    PERCENTILES,
    STAGES,
    TimedVariant,
    cycled_batches,
    measure,
    reset_warnings,
    run_batch,
    stage_fields,
    summarise,
    time_runner,
)
from fmabs_edge.errors import UsageError


@pytest.fixture(autouse=True)
def _fresh_warnings():
    reset_warnings()
    yield
    reset_warnings()


def _frames(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8) for _ in range(count)]


def test_summarise_matches_hand_computed_values():
    samples = [10.0, 20.0, 30.0, 40.0, 100.0]
    summary = summarise("infer", samples)
    assert summary["infer_ms_p50"] == pytest.approx(30.0)
    # numpy's linear interpolation: p90 lies 60 % of the way from 40 to 100.
    assert summary["infer_ms_p90"] == pytest.approx(76.0)
    assert summary["infer_ms_p99"] == pytest.approx(97.6)
    assert summary["infer_ms_mean"] == pytest.approx(40.0)
    assert summary["infer_ms_min"] == 10.0 and summary["infer_ms_max"] == 100.0
    assert summary["infer_cv"] == pytest.approx(np.std(samples, ddof=1) / 40.0)
    assert list(summary) == stage_fields("infer")


def test_summarise_without_samples_is_all_none():
    assert set(summarise("decode", []).values()) == {None}


def test_known_delays_give_exact_percentiles_and_throughput():
    clock = FakeClock()
    steady = FakeRunner("steady", [10.0], clock=clock)
    jumpy = FakeRunner("jumpy", [5.0, 50.0], clock=clock)
    records = measure(
        [TimedVariant("steady", steady), TimedVariant("jumpy", jumpy)],
        _frames(),
        batch_sizes=(1, 4),
        warmup=2,
        iterations=6,
        block_iterations=2,
        clock=clock,
    )
    assert [(r["variant"], r["batch_size"]) for r in records] == [
        ("steady", 1),
        ("jumpy", 1),
        ("steady", 4),
        ("jumpy", 4),
    ]
    for record in records:
        # The fake clock moves only inside the runner: every other stage takes exactly 0 ms.
        assert record["preprocess_ms_max"] == pytest.approx(0.0)
        assert record["postprocess_ms_max"] == pytest.approx(0.0)
        assert record["decode_ms_p50"] is None  # frames were given decoded
        assert record["latency_ms_p50"] == pytest.approx(record["infer_ms_p50"])
        assert record["timed_iterations"] == 6 and record["warmup_iterations"] == 2
    steady_1, jumpy_1, steady_4, _ = records
    assert steady_1["infer_ms_p50"] == pytest.approx(10.0)
    assert steady_1["infer_cv"] == pytest.approx(0.0, abs=1e-9)
    assert steady_1["cv_high"] is False
    assert jumpy_1["infer_ms_min"] == pytest.approx(5.0)
    assert jumpy_1["infer_ms_max"] == pytest.approx(50.0)
    assert jumpy_1["infer_ms_p50"] == pytest.approx(27.5)
    assert jumpy_1["infer_ms_mean"] == pytest.approx(27.5)
    assert jumpy_1["cv_high"] is True
    assert steady_1["throughput_ips"] == pytest.approx(100.0)
    assert steady_4["throughput_ips"] == pytest.approx(400.0)


def test_variants_alternate_in_rotating_blocks_after_warmup():
    clock, log = FakeClock(), []
    a = FakeRunner("a", [1.0], clock=clock, call_log=log)
    b = FakeRunner("b", [1.0], clock=clock, call_log=log)
    measure(
        [TimedVariant("a", a), TimedVariant("b", b)],
        _frames(),
        (1,),
        warmup=1,
        iterations=6,
        block_iterations=2,
        clock=clock,
    )
    assert "".join(log) == "ab" + "aabb" + "bbaa" + "aabb"


def test_high_cv_warns_once_per_record(caplog):
    clock = FakeClock()
    jumpy = FakeRunner("jumpy", [1.0, 30.0], clock=clock)
    with caplog.at_level(logging.WARNING, logger="fmabs_edge.benchmarks.protocol"):
        measure(
            [TimedVariant("jumpy", jumpy)], _frames(), (1,), warmup=0, iterations=8, clock=clock
        )
        measure(
            [TimedVariant("jumpy", jumpy)], _frames(), (1,), warmup=0, iterations=8, clock=clock
        )
    warnings = [r for r in caplog.records if "varies a lot" in r.getMessage()]
    assert len(warnings) == 1
    assert "jumpy" in warnings[0].getMessage() and "infer and latency" in warnings[0].getMessage()


def test_steady_runner_does_not_warn(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.WARNING):
        measure(
            [TimedVariant("s", FakeRunner("s", [3.0], clock=clock))],
            _frames(),
            (1, 2),
            warmup=1,
            iterations=5,
            clock=clock,
        )
    assert not [r for r in caplog.records if "varies a lot" in r.getMessage()]


def test_every_batch_holds_the_same_frames_for_every_variant():
    frames = _frames(3)
    batches = cycled_batches(frames, 4, 2)
    assert [[id(f) for f in batch] for batch in batches] == [
        [id(frames[i]) for i in (0, 1, 2, 0)],
        [id(frames[i]) for i in (1, 2, 0, 1)],
    ]


def test_run_batch_decodes_files_and_maps_back_to_original_size(bright_category):
    files = sorted((bright_category / "test" / "spot").glob("*.png"))[:2]
    runner = FakeRunner("f", [0.0], image_size=32, threshold=0.5)
    output = run_batch(TimedVariant("f", runner), files)
    assert output.stage_s["decode"] is not None and output.stage_s["decode"] >= 0
    assert output.anomaly_map.shape == (2, 32, 32)
    assert [m.shape for m in output.original_maps] == [(48, 56), (48, 56)]
    assert output.rejected.tolist() == [True, True]  # a bright square scores above 0.5


def test_frames_go_to_the_runner_at_its_input_size_and_maps_back_to_theirs(bright_category):
    files = sorted((bright_category / "test" / "good").glob("*.png"))[:2]
    runner = FakeRunner("camera", [0.0], image_size=32, input_hw=(24, 40))
    output = run_batch(TimedVariant("camera", runner), files)
    assert output.anomaly_map.shape == (2, 32, 32)
    assert [m.shape for m in output.original_maps] == [(48, 56), (48, 56)]


def test_sync_hook_runs_before_the_clock_is_read():
    clock = FakeClock()
    runner = FakeRunner("r", [2.0], clock=clock)
    records = measure(
        [TimedVariant("r", runner, sync=lambda: clock.advance(0.003))],
        _frames(),
        (1,),
        warmup=0,
        iterations=3,
        clock=clock,
    )
    assert records[0]["infer_ms_p50"] == pytest.approx(5.0)


def test_inference_only_variant_times_its_own_input_and_skips_batches_it_cannot_take():
    clock = FakeClock()
    calls = []

    class External:
        def infer(self, batch: np.ndarray) -> None:
            calls.append(batch.shape)
            clock.advance(0.004)

    def make_input(batch_size: int) -> np.ndarray:
        if batch_size != 1:
            raise UsageError("fixed batch of 1")
        return np.zeros((1, 3, 8, 8), np.float32)

    records = measure(
        [TimedVariant("ext", External(), make_input=make_input)],
        _frames(),
        (1, 4),
        warmup=1,
        iterations=3,
        clock=clock,
    )
    assert [r["batch_size"] for r in records] == [1]
    assert records[0]["infer_ms_p50"] == pytest.approx(4.0)
    assert records[0]["latency_ms_p50"] is None and records[0]["throughput_ips"] is None
    assert set(calls) == {(1, 3, 8, 8)}


def test_time_runner_gives_flat_records_with_units_in_names():
    runner = FakeRunner("engine", [0.0])
    records = time_runner(runner, _frames(), batch_sizes=(1, 8), warmup=1, iterations=3)
    assert [r["batch_size"] for r in records] == [1, 8]
    for record in records:
        for stage in STAGES:
            for p in PERCENTILES:
                assert f"{stage}_ms_p{p}" in record
        assert record["variant"] == "engine" and record["backend"] == "fake"
        assert record["rss_mb_peak"] > 0 and record["machine_cpu_model"]
        assert all(not isinstance(v, (dict, list)) for v in record.values())


def test_time_runner_records_make_the_same_report(tmp_path):
    from fmabs_edge.benchmarks.report import write_results

    records = time_runner(
        FakeRunner("trt_fp16", [0.0]), _frames(), batch_sizes=(1, 8), warmup=0, iterations=2
    )
    files = write_results(records, tmp_path / "gpu")
    assert files["report"].read_text().count("trt_fp16") >= 2
    assert files["latency_plot"].is_file() and files["throughput_plot"].is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_sizes": (0,)},
        {"batch_sizes": ()},
        {"iterations": 0},
        {"warmup": -1},
        {"block_iterations": 0},
    ],
)
def test_bad_counts_are_usage_errors(kwargs):
    options = {"batch_sizes": (1,), "warmup": 0, "iterations": 2, "block_iterations": 1} | kwargs
    with pytest.raises(UsageError):
        measure(
            [TimedVariant("r", FakeRunner("r", [1.0], clock=FakeClock()))], _frames(), **options
        )


def test_duplicate_variant_names_are_refused():
    runner = FakeRunner("r", [1.0], clock=FakeClock())
    with pytest.raises(UsageError, match="unique"):
        measure([TimedVariant("r", runner), TimedVariant("r", runner)], _frames(), (1,), 0, 1)
