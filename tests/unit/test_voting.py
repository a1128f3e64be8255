"""Pairwise voting: majority, both orders, unparseable votes, tie rules, adaptive stop, batching."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from rrm_ray.judge.voting import (
    PairVote,
    Presentation,
    TieRule,
    Verdict,
    prob_winner,
    swap_corrected_prob_a,
    tie_break,
    translate,
)


# The voting loop the judge service runs (its waves), without the service: a reference for these tests.
def run_votes(
    pairs_count: int,
    votes: int,
    adaptive: bool,
    judge_batch: Callable[[list[Presentation]], list[Verdict]],
    tie_rule: TieRule = "first",
    seed: int = 0,
) -> list[PairVote]:
    """Vote on ``pairs_count`` pairs, calling ``judge_batch`` once per wave with the pending
    presentations of ALL unfinished pairs (one engine batch per wave), until every pair is done.

    ``judge_batch`` must return one verdict (1, 2 or None) per presentation, in order. Non-adaptive
    voting takes exactly one wave; adaptive voting a few, each smaller than the last.
    """
    if pairs_count < 0:
        raise ValueError(f"pairs_count must be >= 0, got {pairs_count}")
    pairs = [PairVote(votes, adaptive, tie_rule, seed, pair_index=i) for i in range(pairs_count)]
    while True:
        wave = [p for pv in pairs for p in pv.next_presentations()]
        if not wave:
            return pairs
        verdicts = list(judge_batch(wave))
        if len(verdicts) != len(wave):
            raise ValueError(
                f"judge_batch returned {len(verdicts)} verdicts for {len(wave)} presentations; "
                "expected one per presentation, in order"
            )
        for p, v in zip(wave, verdicts, strict=True):
            pairs[p.pair_index].record(p.vote_index, translate(p, v))


def judge_from(prefs: dict[int, list[str | None]]):
    """A scripted judge: prefs[pair][vote] is the side that wins ("a"/"b") or None (unparseable);
    it answers in Assistant 1/2 terms, honouring the presentation's swap."""

    def judge_batch(wave: list[Presentation]) -> list[int | None]:
        out: list[int | None] = []
        for p in wave:
            side = prefs[p.pair_index][p.vote_index]
            if side is None:
                out.append(None)
            else:
                shown_first = "b" if p.swapped else "a"
                out.append(1 if side == shown_first else 2)
        return out

    return judge_batch


@pytest.mark.parametrize(
    "swapped, verdict, a_won",
    [
        (False, 1, True),
        (False, 2, False),
        (True, 1, False),
        (True, 2, True),
        (False, None, None),
        (True, None, None),
    ],
)
def test_translate(swapped, verdict, a_won):
    assert translate(Presentation(0, 0, swapped), verdict) is a_won


def test_translate_rejects_bad_verdict():
    with pytest.raises(ValueError, match="pair 3 vote 1: verdict must be 1, 2 or None"):
        translate(Presentation(3, 1, True), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "k, votes, winner, wins_a, wins_b",
    [
        (1, ["a"], "a", 1, 0),
        (1, ["b"], "b", 0, 1),
        (3, ["a", "b", "b"], "b", 1, 2),
        (3, ["b", "a", "a"], "a", 2, 1),
        (4, ["a", "b", "a", "a"], "a", 3, 1),
        (4, ["b", "b", "a", "b"], "b", 1, 3),
        (5, ["a", "b", "a", "b", "a"], "a", 3, 2),
        (5, ["b", "b", "b", "a", "a"], "b", 2, 3),
    ],
)
def test_majority_non_adaptive(k, votes, winner, wins_a, wins_b):
    (pv,) = run_votes(1, k, adaptive=False, judge_batch=judge_from({0: votes}))
    assert (pv.winner(), pv.wins_a, pv.wins_b, pv.invalid) == (winner, wins_a, wins_b, 0)
    assert pv.done and pv.calls_made == k and pv.calls_saved == 0


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_both_orders_used(k):
    pv = PairVote(k, adaptive=False)
    shown = pv.next_presentations()
    assert [p.vote_index for p in shown] == list(range(k))
    assert [p.swapped for p in shown] == [i % 2 == 1 for i in range(k)]
    assert sum(p.swapped for p in shown) == k // 2  # evenly split; odd k favours the original order by one


def test_unparseable_votes_count_as_no_vote():
    (pv,) = run_votes(1, 5, adaptive=False, judge_batch=judge_from({0: ["a", None, "b", None, "a"]}))
    assert (pv.wins_a, pv.wins_b, pv.invalid, pv.winner()) == (2, 1, 2, "a")


@pytest.mark.parametrize(
    "tie_rule, expected",
    [("first", "a"), ("none", None)],
)
@pytest.mark.parametrize("votes", [["a", "b"], [None, None], ["a", None, None, "b"]])
def test_tie_rules(tie_rule, expected, votes):
    (pv,) = run_votes(1, len(votes), False, judge_from({0: votes}), tie_rule=tie_rule)
    assert pv.wins_a == pv.wins_b and pv.winner() == expected


def test_random_tie_rule_is_seeded():
    def tie_winner(seed: int, pair_index: int) -> str | None:
        pv = PairVote(2, adaptive=False, tie_rule="random", seed=seed, pair_index=pair_index)
        for p in pv.next_presentations():
            pv.record(p.vote_index, p.vote_index == 0)
        return pv.winner()

    first = [tie_winner(s, 0) for s in range(40)]
    assert first == [tie_winner(s, 0) for s in range(40)]  # reproducible
    assert set(first) == {"a", "b"}  # but a real coin across seeds
    assert {tie_winner(0, i) for i in range(40)} == {"a", "b"}  # and across pairs


def test_adaptive_stops_when_first_votes_agree():
    pv = PairVote(5, adaptive=True)
    wave = pv.next_presentations()
    assert len(wave) == 3  # a strict majority of 5
    assert {p.swapped for p in wave} == {False, True}
    for p in wave:
        pv.record(p.vote_index, True)
    assert pv.done and pv.next_presentations() == []
    assert (pv.calls_made, pv.calls_saved, pv.winner()) == (3, 2, "a")


@pytest.mark.parametrize(
    "k, first_wave, votes, calls",
    [
        (1, 1, ["b"], 1),
        (2, 2, ["a", "b"], 2),
        (3, 2, ["a", "a", "b"], 2),
        (3, 2, ["a", "b", "b"], 3),
        (4, 3, ["a", "a", "a", "b"], 3),
        (4, 3, ["a", "a", "b", "a"], 4),
        (5, 3, ["a", None, "a", "a", "b"], 4),
        (5, 3, ["a", "b", "a", "b", "b"], 5),
    ],
)
def test_adaptive_call_counts(k, first_wave, votes, calls):
    pv = PairVote(k, adaptive=True)
    assert len(pv.next_presentations()) == first_wave
    pv2 = run_votes(1, k, True, judge_from({0: votes}))[0]
    assert pv2.calls_made == calls and pv2.calls_saved == k - calls


def test_adaptive_does_not_reissue_while_calls_in_flight():
    pv = PairVote(5, adaptive=True)
    wave = pv.next_presentations()
    assert pv.next_presentations() == [] and pv.pending == 3
    pv.record(wave[0].vote_index, True)
    assert pv.next_presentations() == []  # the two in flight could still settle it


def test_adaptive_never_changes_winner():
    """Property: for any deterministic judge, adaptive and full voting pick the same winner."""
    rng = random.Random(1234)
    saved = 0
    for trial in range(400):
        n_pairs, k = rng.randint(1, 6), rng.randint(1, 7)
        p_a, p_none = rng.random(), rng.choice([0.0, 0.1, 0.4])
        prefs = {
            i: [None if rng.random() < p_none else ("a" if rng.random() < p_a else "b") for _ in range(k)]
            for i in range(n_pairs)
        }
        for tie_rule in ("first", "random", "none"):
            full = run_votes(n_pairs, k, False, judge_from(prefs), tie_rule=tie_rule, seed=trial)
            fast = run_votes(n_pairs, k, True, judge_from(prefs), tie_rule=tie_rule, seed=trial)
            assert [p.winner() for p in fast] == [p.winner() for p in full], (trial, prefs)
            assert all(p.done and p.calls_made <= k for p in fast)
            saved += sum(p.calls_saved for p in fast)
    assert saved > 0


def test_run_votes_batches_across_pairs():
    prefs = {0: ["a"] * 5, 1: ["b", "a", "b", "b", "a"], 2: ["a", "b", "a", "b", "b"]}
    waves: list[list[Presentation]] = []
    inner = judge_from(prefs)

    def judge_batch(wave):
        waves.append(list(wave))
        return inner(wave)

    pairs = run_votes(3, 5, adaptive=True, judge_batch=judge_batch)
    assert [p.winner() for p in pairs] == ["a", "b", "b"]
    assert {p.pair_index for p in waves[0]} == {0, 1, 2} and len(waves[0]) == 9  # one batch, 3 pairs
    assert all(p.pair_index != 0 for w in waves[1:] for p in w)  # pair 0 settled in wave 1
    assert sum(len(w) for w in waves) == sum(p.calls_made for p in pairs)

    waves.clear()
    run_votes(3, 5, adaptive=False, judge_batch=judge_batch)
    assert len(waves) == 1 and len(waves[0]) == 15


def test_max_n_caps_a_wave():
    pv = PairVote(5, adaptive=False)
    assert [p.vote_index for p in pv.next_presentations(max_n=2)] == [0, 1]
    assert [p.vote_index for p in pv.next_presentations()] == [2, 3, 4]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PairVote(0), "votes must be an int >= 1"),
        (lambda: PairVote(3, tie_rule="coin"), "tie_rule must be one of"),  # type: ignore[arg-type]
        (lambda: PairVote(3).record(0, True), "never handed out"),
        (lambda: PairVote(3).next_presentations(max_n=-1), "max_n must be >= 0"),
        (lambda: run_votes(2, 3, False, lambda wave: [1]), "returned 1 verdicts for 6 presentations"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_record_twice_and_bad_value():
    pv = PairVote(3, adaptive=False, pair_index=4)
    pv.next_presentations()
    pv.record(0, True)
    with pytest.raises(ValueError, match="pair 4: vote 0 was already recorded"):
        pv.record(0, False)
    with pytest.raises(ValueError, match="expected True, False or None"):
        pv.record(1, 1)  # type: ignore[arg-type]


# ---- choice probabilities (judge.verdict=choice_prob) -------------------------------------------------
@pytest.mark.parametrize(
    "p_ab, p_ba, prob_a",
    [
        (0.8, 0.2, 0.8),  # a named first with 0.8 in one order, named second with 0.8 in the other
        (0.9, 0.7, 0.6),  # a position bias towards Assistant 1 (+0.2 both ways) cancels out
        (0.6, 0.6, 0.5),  # pure position bias: no preference
        (0.0, 1.0, 0.0),
    ],
)
def test_swap_correction_averages_both_orders(p_ab, p_ba, prob_a):
    assert swap_corrected_prob_a(p_ab, p_ba) == pytest.approx(prob_a)


def test_swap_correction_rejects_non_probabilities():
    with pytest.raises(ValueError, match="p_first_ba must be a probability"):
        swap_corrected_prob_a(0.5, 1.2)


@pytest.mark.parametrize("tie_rule", ["first", "random", "none"])
def test_prob_winner_is_the_majority_rule_with_a_vote_share(tie_rule):
    assert prob_winner(0.51, tie_rule) == "a" and prob_winner(0.49, tie_rule) == "b"
    # Exactly 0.5 or no probability (an order timed out) is a tie: the tie rule decides, as for
    # sampled votes (the same seeded coin as PairVote's for that pair).
    for seed, index in [(0, 0), (3, 7), (11, 2)]:
        tied = PairVote(2, tie_rule=tie_rule, seed=seed, pair_index=index).winner()
        assert prob_winner(0.5, tie_rule, seed, index) == tied == tie_break(tie_rule, seed, index)
        assert prob_winner(None, tie_rule, seed, index) == tied
