"""Tournament -> GRPO rewards: knockout depth, standardised ratings, and rule/judge mixing."""

from __future__ import annotations

import math

import pytest

from rrm_ray.judge.ranking_rewards import RankingRewardError, elo_rewards, knockout_rewards, mix_rewards
from rrm_ray.judge.tournament import Knockout, RoundRobin, run_tournament


def order_judge(true_rank: list[int]):
    """A perfect judge: true_rank[i] is response i's place in a hidden total order (0 = best)."""
    return lambda matches: ["a" if true_rank[m.a] < true_rank[m.b] else "b" for m in matches]


def rank_with(n: int, best: list[int]) -> list[int]:
    """A hidden order whose top places go to ``best`` (in order), the rest by index."""
    order = best + [i for i in range(n) if i not in best]
    rank = [0] * n
    for place, i in enumerate(order):
        rank[i] = place
    return rank


# ---------------------------------------------------------------------------------------------- knockout


def test_knockout_rewards_single_response():
    assert knockout_rewards(Knockout(1, seed=0)) == [1.0]


@pytest.mark.parametrize("verdict", ["a", "b"])
def test_knockout_rewards_two_responses(verdict):
    t = run_tournament(Knockout(2, seed=5), lambda ms: [verdict])
    (m,) = [e for e in t.bracket[0]]
    expected = [0.0, 0.0]
    expected[m["winner"]] = 1.0
    assert knockout_rewards(t) == expected and sorted(expected) == [0.0, 1.0]


def test_knockout_rewards_four_responses_by_depth():
    # 2 rounds: winner 2/2, runner-up 1/2, first-round losers 0/2.
    rank = [2, 0, 3, 1]
    t = run_tournament(Knockout(4, seed=0), order_judge(rank))
    rewards = knockout_rewards(t)
    assert rewards[1] == 1.0
    assert sorted(rewards) == [0.0, 0.0, 0.5, 1.0]


def test_knockout_rewards_bye_holder_that_wins_still_gets_one():
    t = Knockout(3, seed=0)
    (bye,) = [e["a"] for e in t.bracket[0] if e["bye"]]
    (first,) = t.pending()
    run_tournament(t, order_judge(rank_with(3, [bye, first.a])))
    assert t.winner == bye and t.matches_won[bye] == 1 and t.rounds_won[bye] == 2
    expected = [0.0, 0.0, 0.0]
    expected[bye], expected[first.a] = 1.0, 0.5  # the finalist won 1 of 2 rounds; first.b won none
    assert knockout_rewards(t) == expected


def test_knockout_rewards_bye_is_not_a_win():
    # The bye holder loses the final: it won no comparison, so it ties with the first-round loser.
    t = Knockout(3, seed=0)
    (bye,) = [e["a"] for e in t.bracket[0] if e["bye"]]
    (first,) = t.pending()
    run_tournament(t, order_judge(rank_with(3, [first.a, first.b])))
    expected = [0.0, 0.0, 0.0]
    expected[first.a] = 1.0
    assert t.rounds_won[bye] == 1 and knockout_rewards(t) == expected


@pytest.mark.parametrize("n", [3, 5, 6, 7, 9, 11])
def test_knockout_rewards_in_unit_interval_with_unique_top(n):
    for seed in range(10):
        t = run_tournament(Knockout(n, seed=seed), lambda ms: ["b"] * len(ms))
        rewards = knockout_rewards(t)
        assert all(0.0 <= r <= 1.0 for r in rewards)
        assert rewards[t.winner] == 1.0 and rewards.count(1.0) == 1
        for i, r in enumerate(rewards):
            if i != t.winner:
                assert r == t.matches_won[i] / t.num_rounds


def test_knockout_rewards_requires_a_finished_knockout():
    with pytest.raises(RankingRewardError, match="not done"):
        knockout_rewards(Knockout(4, seed=0))
    with pytest.raises(RankingRewardError, match="expected a Knockout"):
        knockout_rewards(RoundRobin(2))


# ------------------------------------------------------------------------------------------------- elo


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
def test_elo_rewards_single_response_and_ties_are_zero(rating):
    assert elo_rewards(RoundRobin(1, rating=rating)) == [0.0]
    t = run_tournament(RoundRobin(4, rating=rating), lambda ms: [None] * len(ms))
    assert elo_rewards(t) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
def test_elo_rewards_two_responses_are_plus_minus_one(rating):
    t = run_tournament(RoundRobin(2, rating=rating), lambda ms: ["b"])
    assert elo_rewards(t) == pytest.approx([-1.0, 1.0])


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
def test_elo_rewards_are_z_scores_in_rating_order(rating):
    rank = [3, 0, 4, 1, 2]
    t = run_tournament(RoundRobin(5, rating=rating, seed=2), order_judge(rank))
    rewards = elo_rewards(t)
    assert sum(rewards) == pytest.approx(0.0, abs=1e-12)
    assert math.sqrt(sum(r * r for r in rewards) / 5) == pytest.approx(1.0)
    assert sorted(range(5), key=lambda i: -rewards[i]) == t.ranking == [1, 3, 4, 0, 2]


def test_elo_rewards_requires_a_finished_round_robin():
    with pytest.raises(RankingRewardError, match="not done"):
        elo_rewards(RoundRobin(3))
    with pytest.raises(RankingRewardError, match="expected a RoundRobin"):
        elo_rewards(Knockout(1, seed=0))


# ------------------------------------------------------------------------------------------------- mix


@pytest.mark.parametrize(
    "rule, judge, rule_weight, judge_weight, mode, expected",
    [
        ([1.0, 0.0], [0.5, -1.0], 1.0, 1.0, "weighted", [1.5, -1.0]),
        ([1.0, 0.0], [0.5, -1.0], 0.7, 0.3, "weighted", [0.85, -0.3]),
        ([1.0, None], [None, 2.0], 0.5, 0.25, "weighted", [0.5, 0.5]),  # a missing part counts as 0
        ([1, 0], [1, 1], 2, 0, "weighted", [2.0, 0.0]),
        ([1.0, None, 0.0], [-0.5, 0.8, 0.9], 1.0, 1.0, "judge_if_no_rule", [1.0, 0.8, 0.0]),
        ([None, None], [0.3, -0.3], 0.1, 5.0, "judge_if_no_rule", [0.3, -0.3]),  # weights unused
        ([1.0], [None], 0.0, 0.0, "judge_if_no_rule", [1.0]),
        ([], [], 1.0, 1.0, "weighted", []),
    ],
)
def test_mix_rewards_hand_computed(rule, judge, rule_weight, judge_weight, mode, expected):
    out = mix_rewards(rule, judge, rule_weight, judge_weight, mode)
    assert out == pytest.approx(expected) and all(isinstance(x, float) for x in out)


@pytest.mark.parametrize(
    "rule, judge, rule_weight, judge_weight, mode, message",
    [
        ([1.0], [1.0, 2.0], 1.0, 1.0, "weighted", "rule has 1 rewards but judge has 2"),
        ([1.0, None], [1.0, None], 1.0, 1.0, "weighted", "item at index 1 has neither"),
        ([None], [None], 1.0, 1.0, "judge_if_no_rule", "item at index 0 has neither"),
        ([1.0], [1.0], -1.0, 1.0, "weighted", "rule_weight must be a finite number >= 0"),
        ([1.0], [1.0], 1.0, float("nan"), "weighted", "judge_weight must be a finite number >= 0"),
        ([1.0], [1.0], True, 1.0, "weighted", "rule_weight must be"),
        ([1.0], [1.0], 0.0, 0.0, "weighted", "both 0"),
        ([1.0], [1.0], 1.0, 1.0, "sum", "mode must be 'weighted' or 'judge_if_no_rule'"),
        ([1.0, float("inf")], [1.0, 1.0], 1.0, 1.0, "weighted", "rule reward at index 1 must be a finite"),
        ([1.0], ["0.5"], 1.0, 1.0, "weighted", "judge reward at index 0 must be a finite"),
    ],
)
def test_mix_rewards_rejects_bad_input(rule, judge, rule_weight, judge_weight, mode, message):
    with pytest.raises(RankingRewardError, match=message):
        mix_rewards(rule, judge, rule_weight, judge_weight, mode)
