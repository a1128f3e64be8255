"""The tournament simulation: the made-up judge, the metrics, call counts, limits and determinism."""

from __future__ import annotations

import math
import random

import pytest
import torch
from scipy.stats import kendalltau, pearsonr

from rrm_ray.algo import group_advantages as torch_group_advantages
from rrm_ray.judge.simulation import (
    SimConfig,
    SimJudge,
    SimulationError,
    group_advantages,
    kendall_tau_b,
    markdown_table,
    pearson,
    simulate,
    simulate_cell,
)

METHODS = ("knockout", "swiss", "elo")


def test_judge_accuracy_and_position_bias_are_as_documented():
    judge, rng, trials = SimJudge(0.75, 0.2), random.Random(0), 20_000
    better_first = sum(judge.verdict(1.0, 0.0, rng) == 1 for _ in range(trials)) / trials
    better_second = sum(judge.verdict(0.0, 1.0, rng) == 2 for _ in range(trials)) / trials
    se = math.sqrt(0.25 / trials)
    assert abs(better_first - (0.2 + 0.8 * 0.75)) < 5 * se
    assert abs(better_second - 0.8 * 0.75) < 5 * se


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [4, 8, 16])
def test_a_perfect_unbiased_judge_always_finds_the_best(method, n):
    cell = simulate_cell(SimConfig(accuracies=(1.0,), position_bias=0.0, trials=30), method, n, 1.0)
    assert cell.p_best == 1.0
    assert cell.advantage_corr > 0.5 and cell.kendall_tau > 0.5
    if method == "elo":
        assert cell.kendall_tau == pytest.approx(1.0)  # a full round robin recovers the whole order


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [4, 8])
def test_a_coin_flip_judge_picks_the_best_one_time_in_n(method, n):
    # p = 0.5: every verdict is independent of quality, so by symmetry P(best) = 1/n exactly; this
    # seeded run is within 4.5 binomial standard errors (it is deterministic: it passes every time).
    trials = 300
    cell = simulate_cell(SimConfig(trials=trials, position_bias=0.1), method, n, 0.5)
    se = math.sqrt((1 / n) * (1 - 1 / n) / trials)
    assert abs(cell.p_best - 1 / n) < 4.5 * se
    assert abs(cell.kendall_tau) < 0.15 and abs(cell.advantage_corr) < 0.15  # ~4.5 se at n=4


@pytest.mark.parametrize("n", [4, 5, 8, 16])
def test_judge_calls_follow_the_formulas(n):
    cfg = SimConfig(trials=3)
    calls = {m: simulate_cell(cfg, m, n, 0.75) for m in METHODS}
    rounds = math.ceil(math.log2(n))
    assert calls["knockout"].judge_calls == n - 1 and calls["knockout"].rounds == rounds
    assert calls["elo"].judge_calls == n * (n - 1) // 2 and calls["elo"].rounds == 1
    assert calls["swiss"].judge_calls == rounds * (n // 2) and calls["swiss"].rounds == rounds
    # k votes, not adaptive: k calls per comparison; adaptive: between a majority and k.
    fixed = simulate_cell(SimConfig(trials=3, votes=3, adaptive_votes=False), "elo", n, 0.75)
    assert fixed.judge_calls == 3 * n * (n - 1) // 2
    adaptive = simulate_cell(SimConfig(trials=3, votes=3), "elo", n, 0.75)
    assert 2 * n * (n - 1) // 2 <= adaptive.judge_calls < 3 * n * (n - 1) // 2
    # judge.swiss_rounds reaches the real tournament, capped at a full round robin.
    more = simulate_cell(SimConfig(trials=2, swiss_rounds=n + 5), "swiss", n, 0.75)
    full = n - 1 if n % 2 == 0 else n
    assert more.judge_calls == full * (n // 2) and more.rounds == full


def test_the_table_is_the_same_every_run_and_covers_every_cell():
    cfg = SimConfig(sizes=(4, 8), accuracies=(0.6, 0.9), trials=20, seed=3)
    one, two = simulate(cfg), simulate(cfg)
    assert one == two
    assert [(c.n, c.accuracy, c.method) for c in one] == [
        (n, p, m) for n in (4, 8) for p in (0.6, 0.9) for m in ("knockout", "swiss", "elo")
    ]
    assert simulate(SimConfig(sizes=(4, 8), accuracies=(0.6, 0.9), trials=20, seed=4)) != one
    table = markdown_table(one).splitlines()
    assert len(table) == 2 + len(one) and table[0].startswith("| n | p | method | judge calls")
    assert table[2].startswith("| 4 | 0.6 | knockout | 3.0 | 2 | ")


def test_better_judges_rank_better():
    cfg = SimConfig(trials=150)
    for method in METHODS:
        weak, strong = (simulate_cell(cfg, method, 8, p) for p in (0.6, 0.9))
        assert strong.p_best > weak.p_best
        assert strong.kendall_tau > weak.kendall_tau and strong.advantage_corr > weak.advantage_corr


def test_group_advantages_match_the_trainer():
    rng = random.Random(0)
    for rewards in ([1.0, 0.0, 0.5, 0.5], [rng.gauss(0, 1) for _ in range(8)], [0.3] * 4, [2.0, -1.0]):
        ours = group_advantages(rewards)
        theirs = torch_group_advantages(torch.tensor(rewards, dtype=torch.float64), len(rewards)).tolist()
        assert ours == pytest.approx(theirs, abs=1e-6)
    assert group_advantages([0.3] * 4) == [0.0] * 4


def test_correlation_helpers_match_scipy():
    rng = random.Random(1)
    for _ in range(20):
        x = [float(rng.randint(0, 3)) for _ in range(9)]  # ties, as knockout rewards have
        y = [rng.gauss(0, 1) for _ in range(9)]
        if len(set(x)) > 1:
            assert kendall_tau_b(x, y) == pytest.approx(kendalltau(x, y).statistic)
            assert pearson(x, y) == pytest.approx(pearsonr(x, y).statistic)
    assert kendall_tau_b([1.0, 1.0], [0.0, 1.0]) == 0.0 and pearson([1.0, 1.0], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ("glicko",)}, "method must be one of"),
        ({"sizes": (1,)}, "group sizes must be ints >= 2"),
        ({"trials": 0}, "trials must be an int >= 1"),
        ({"accuracies": (1.2,)}, "accuracy p must be in"),
        ({"position_bias": -0.1}, "position_bias b must be in"),
        ({"swiss_rounds": 0}, "swiss_rounds must be None or an int >= 1"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, message):
    with pytest.raises((SimulationError, ValueError), match=message):
        SimConfig(**kwargs).settings("swiss")


def test_the_bench_prints_the_table_and_ends_with_the_ratio(monkeypatch, capsys):
    from bench import tournaments

    monkeypatch.setattr("sys.argv", ["tournaments.py", "--trials", "2"])
    tournaments.main()
    out = capsys.readouterr().out.strip().splitlines()
    assert "| n | p | method | judge calls | rounds | P(best) | Kendall tau-b | advantage corr |" in out
    assert sum(line.startswith("| ") for line in out) == 1 + 27
    assert out[-1].startswith("accuracy per call (P(best) / judge calls): swiss / knockout = ")
    assert out[-1].endswith(" at n=8 p=0.75")
