"""`bench/async_pipeline.py`'s cheap parts (its --help imports nothing heavy: test_overhead_bench_smoke):
its four settings are valid overrides of the demo config, and the report (means, bound, ratios) is
computed from step metrics keyed as `GRPOJob.train_step` logs them.

The measurement itself starts four jobs with their engines (minutes on 2 CPU cores): it runs as
`make bench`, not in the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from rrm_ray.config import ConfigError
from rrm_ray.validation import load_config

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import async_pipeline

    return async_pipeline


def step_metrics(step_s: float, staleness: int = 0, **phases: float) -> dict[str, float]:
    """A step's metrics as the driver names them: `time/<phase>_s`, `time/step_s`, `train/staleness`."""
    return {
        "time/step_s": step_s,
        "train/staleness": float(staleness),
        **{f"time/{name}_s": seconds for name, seconds in phases.items()},
    }


def test_settings_are_valid_demo_overrides(bench, tmp_path):
    settings = {(s.judge, s.max_staleness) for s in bench.SETTINGS}
    assert settings == {(True, 0), (True, 1), (False, 0), (False, 1)}
    for s in bench.SETTINGS:
        cfg = load_config(REPO / "configs" / "demo_rrm.yaml", s.overrides(tmp_path / s.slug, 6))
        assert (cfg.judge.enabled, cfg.trainer.max_staleness) == (s.judge, s.max_staleness)
        assert cfg.trainer.total_steps == 6
        assert not cfg.tracking.enabled
    one_step_off = bench.Setting(judge=True, max_staleness=1).overrides(tmp_path, 6)
    with pytest.raises(ConfigError, match=r"algorithm\.tis_cap"):  # what max_staleness=1 requires
        load_config(REPO / "configs" / "demo_rrm.yaml", ["algorithm.tis_cap=null", *one_step_off])


def test_report_means_bound_and_headline_last(bench, capsys):
    alone = dict(generate=2.0, reward=3.0, logprobs=0.0, update=4.0, weight_sync=1.0)
    sync = bench.summarize(
        bench.Setting(True, 0),
        [(10.5, step_metrics(10.0, **alone)), (11.5, step_metrics(12.0, **alone))],
    )
    assert (sync.steps, sync.step_s, sync.wall_s, sync.phases["generate_wait"]) == (2, 11.0, 11.0, 0.0)
    # produce 5 + train 4 + sync 1 = 10 synchronously; one-step-off max(5, 4) + 1 = 6
    assert bench.bound(sync) == (10.0, 6.0)

    overlapped = dict(generate=3.0, reward=4.5, logprobs=0.0, update=6.0, weight_sync=1.0, generate_wait=2.0)
    one_step_off = bench.summarize(bench.Setting(True, 1), [(9.0, step_metrics(8.8, 1, **overlapped))])
    assert one_step_off.staleness == 1.0
    bench.print_report([sync, one_step_off], warmup=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "bound ratio 0.600" in lines[-2]
    assert lines[-1] == f"ratio async/sync step seconds (judge on): {8.8 / 11.0:.3f}"


def test_a_step_without_its_phase_timers_is_an_error(bench):
    no_wait = step_metrics(9.0, 1, generate=1.0, reward=1.0, logprobs=0.0, update=1.0, weight_sync=1.0)
    with pytest.raises(ValueError, match="time/generate_wait_s"):  # k=1 logs the learner's wait
        bench.summarize(bench.Setting(False, 1), [(9.0, no_wait)])
    no_sync = step_metrics(3.0, generate=1.0, reward=1.0, logprobs=0.0, update=1.0)
    with pytest.raises(ValueError, match="time/weight_sync_s"):
        bench.summarize(bench.Setting(False, 0), [(3.0, no_sync)])
