"""What a step reports about its samples (rrm_ray.step_metrics): accuracy over the scored items only,
with its interval, and an evenly spaced samples table."""

from __future__ import annotations

import pytest

from rrm_ray.data.prompts import PromptRow
from rrm_ray.step_metrics import accuracy, samples_table
from rrm_ray.types import Completion


def test_accuracy_counts_only_items_with_an_answer():
    assert accuracy("eval/accuracy", [None, None]) == {}
    assert accuracy("reward/accuracy", [True, None, False, True]) == {"reward/accuracy": pytest.approx(2 / 3)}
    with_interval = accuracy("eval/accuracy", [True, False, None, True], interval=True)
    assert with_interval["eval/accuracy_n"] == 3.0
    assert with_interval["eval/accuracy_ci_low"] < 2 / 3 < with_interval["eval/accuracy_ci_high"]


def test_samples_table_spreads_over_the_batch():
    rows = [PromptRow("p0", "a0", row=1), PromptRow("p1", "a1", row=2)]
    completions = [Completion(i // 4, [1], [2], [0.0], f"r{i}", "stop") for i in range(8)]
    table = samples_table(3, rows, completions, [float(i) for i in range(8)], k=2)
    assert [(t["prompt"], t["answer"], t["response"], t["reward"]) for t in table] == [
        ("p0", "a0", "r0", 0.0),
        ("p1", "a1", "r4", 4.0),
    ]
    assert {t["step"] for t in table} == {3}
