"""`bench/async_pipeline.py` reads the step metrics of a real synchronous run (the shared two-step run,
no extra job): every phase the driver times is one the bench's bound accounts for."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_phases_add_up_to_the_synchronous_step(grpo_run, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import async_pipeline as bench

    history = grpo_run["summary"]["history"]
    measured = bench.summarize(bench.Setting(judge=False, max_staleness=0), [(0.0, m) for m in history])
    # Synchronously the driver's time/step_s is the sum of its phases: all of them are in the bound.
    assert sum(measured.phases.values()) == pytest.approx(measured.step_s, rel=1e-9)
    assert bench.bound(measured)[0] == pytest.approx(measured.step_s, rel=1e-9)
