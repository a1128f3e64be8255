"""Tournaments: comparison counts, recovering a hidden order, undecided handling, batched driving."""

from __future__ import annotations

import math
import random

import pytest

from rrm_ray.judge.ranking_rewards import RankingRewardError, swiss_rewards
from rrm_ray.judge.tournament import (
    Knockout,
    Match,
    RoundRobin,
    Swiss,
    TournamentError,
    run_many,
    run_tournament,
    swiss_max_rounds,
)


def order_judge(true_rank: list[int]):
    """A perfect judge: true_rank[i] is response i's place in a hidden total order (0 = best)."""
    return lambda matches: ["a" if true_rank[m.a] < true_rank[m.b] else "b" for m in matches]


def bt_judge(strength: list[float], rng: random.Random):
    """A noisy judge: i beats j with the Bradley-Terry probability of their Elo-scale strengths."""

    def judge(matches):
        return [
            "a" if rng.random() < 1 / (1 + 10 ** ((strength[m.b] - strength[m.a]) / 400)) else "b"
            for m in matches
        ]

    return judge


def hidden_order(n: int, seed: int) -> list[int]:
    rank = list(range(n))
    random.Random(1000 + seed).shuffle(rank)
    return rank


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their average rank)."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        k = 0
        while k < len(order):
            end = k
            while end + 1 < len(order) and v[order[end + 1]] == v[order[k]]:
                end += 1
            for m in range(k, end + 1):
                out[order[m]] = (k + end) / 2
            k = end + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_spearman_helper():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------- knockout


@pytest.mark.parametrize("n", range(1, 18))
def test_knockout_counts_rounds_and_byes(n):
    t = Knockout(n, seed=n)
    calls = []

    def judge(matches):
        calls.append(len(matches))
        return ["a"] * len(matches)

    run_tournament(t, judge)
    rounds = math.ceil(math.log2(n)) if n > 1 else 0
    assert t.done and t.comparisons == n - 1 and sum(calls) == n - 1
    assert len(calls) == len(t.bracket) == t.num_rounds == rounds
    assert t.rounds_won[t.winner] == rounds
    assert sum(t.matches_won) == n - 1 and t.undecided == 0
    # Each round: every surviving entrant appears once, odd rounds hand the last one a bye.
    alive = set(range(n))
    previous_bye = None
    for entries in t.bracket:
        seen = [e["a"] for e in entries] + [e["b"] for e in entries if not e["bye"]]
        assert sorted(seen) == sorted(alive)
        byes = [e for e in entries if e["bye"]]
        assert len(byes) == len(alive) % 2
        for e in byes:
            assert e == {"a": e["a"], "b": None, "winner": e["a"], "bye": True, "decided": True}
            assert e["a"] != previous_bye, "no entrant gets two byes in a row"
        previous_bye = byes[0]["a"] if byes else None
        alive = {e["winner"] for e in entries}
    assert alive == {t.winner}


def test_knockout_single_entrant_is_done_at_once():
    t = Knockout(1, seed=3)
    assert t.done and t.winner == 0 and t.comparisons == 0 and t.pending() == [] and t.bracket == []
    assert t.rounds_won == [0]


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 17])
def test_knockout_perfect_judge_finds_the_best(n):
    for seed in range(25):
        rank = hidden_order(n, seed)
        t = run_tournament(Knockout(n, seed=seed), order_judge(rank))
        assert t.winner == rank.index(0)
        assert t.undecided == 0
        assert all(e["decided"] for entries in t.bracket for e in entries)


def test_knockout_is_seeded():
    def first_round(seed):
        return [(m.a, m.b) for m in Knockout(8, seed=seed).pending()]

    assert first_round(7) == first_round(7)
    assert len({tuple(first_round(s)) for s in range(10)}) > 1
    # The first round pairs everyone exactly once.
    assert sorted(x for pair in first_round(7) for x in pair) == list(range(8))


def test_knockout_steps_one_round_at_a_time_and_accepts_partial_submits():
    t = Knockout(4, seed=0)
    first = t.pending()
    assert len(first) == 2 and all(m.round == 1 for m in first)
    t.submit({first[0]: "a"})
    assert t.pending() == [first[1]] and t.bracket[0][0]["winner"] == first[0].a
    assert t.bracket[0][1]["winner"] is None and t.bracket[0][1]["decided"] is None
    t.submit({first[1]: "b"})
    (final,) = t.pending()
    assert final == Match(2, first[0].a, first[1].b)
    with pytest.raises(TournamentError, match="not done"):
        _ = t.winner
    t.submit({final: "b"})
    assert t.done and t.winner == first[1].b and t.pending() == []
    assert t.rounds_won[first[1].b] == 2 and t.matches_won[first[0].a] == 1


@pytest.mark.parametrize(
    "outcomes, message",
    [
        ({Match(1, 99, 98): "a"}, "not pending"),
        ({Match(5, 0, 1): "a"}, "not pending"),
        ("first-match-bad-value", "must be 'a', 'b' or None"),
    ],
)
def test_knockout_submit_rejects_bad_input(outcomes, message):
    t = Knockout(4, seed=0)
    if outcomes == "first-match-bad-value":
        outcomes = {t.pending()[0]: "Assistant 1"}
    with pytest.raises(TournamentError, match=message):
        t.submit(outcomes)
    assert len(t.pending()) == 2, "a rejected submit changes nothing"


@pytest.mark.parametrize("make", [lambda: Knockout(1, seed=0), lambda: RoundRobin(1)])
def test_empty_submit_after_done_is_a_no_op(make):
    t = make()
    t.submit({})
    assert t.done and t.pending() == []
    with pytest.raises(TournamentError, match="not pending"):
        t.submit({Match(1, 0, 1): "a"})


def test_knockout_rejects_resubmitting_a_match():
    t = Knockout(4, seed=0)
    m = t.pending()[0]
    t.submit({m: "a"})
    with pytest.raises(TournamentError, match="not pending"):
        t.submit({m: "b"})


def test_knockout_undecided_first_gives_the_match_to_a():
    t = run_tournament(Knockout(8, seed=2, undecided="first"), lambda ms: [None] * len(ms))
    assert t.undecided == 7 and t.comparisons == 7
    for entries in t.bracket:
        for e in entries:
            assert e["winner"] == e["a"] and e["decided"] is False


def test_knockout_undecided_random_is_a_seeded_coin_flip():
    def winner(seed):
        return run_tournament(Knockout(8, seed=seed), lambda ms: [None] * len(ms)).winner

    assert winner(4) == winner(4)
    t = run_tournament(Knockout(8, seed=4), lambda ms: [None] * len(ms))
    assert t.undecided == 7
    # Over many brackets the coin sends b through about half the time (a-first would give 0).
    b_wins = 0
    for seed in range(40):
        t = run_tournament(Knockout(8, seed=seed), lambda ms: [None] * len(ms))
        b_wins += sum(e["winner"] == e["b"] for entries in t.bracket for e in entries)
    assert 0.35 < b_wins / (40 * 7) < 0.65


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0, "seed": 0}, "n must be an int >= 1"),
        ({"n": 2.0, "seed": 0}, "n must be an int"),
        ({"n": 2, "seed": "x"}, "seed must be an int"),
        ({"n": 2, "seed": 0, "undecided": "b"}, "undecided must be"),
    ],
)
def test_knockout_rejects_bad_arguments(kwargs, message):
    with pytest.raises(TournamentError, match=message):
        Knockout(**kwargs)


# ------------------------------------------------------------------------------------------ round robin


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 10])
def test_round_robin_compares_every_pair_once(n, rating):
    t = RoundRobin(n, rating=rating)
    pending = t.pending()
    assert len(pending) == n * (n - 1) // 2 == len(set(pending))
    assert {(m.a, m.b) for m in pending} == {(i, j) for i in range(n) for j in range(i + 1, n)}
    calls = []

    def judge(matches):
        calls.append(len(matches))
        return ["a"] * len(matches)

    run_tournament(t, judge)
    assert t.done and t.pending() == [] and t.comparisons == n * (n - 1) // 2
    assert len(calls) == (1 if n > 1 else 0)
    assert len(t.ratings) == n and sum(t.ratings) / n == pytest.approx(1000.0)


def test_round_robin_single_entrant():
    t = RoundRobin(1, initial=1500.0)
    assert t.done and t.ratings == [1500.0] and t.ranking == [0] and t.wins == [0.0]


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
@pytest.mark.parametrize("n", [2, 3, 4, 7, 12])
def test_round_robin_recovers_a_hidden_total_order(n, rating):
    for seed in range(8):
        rank = hidden_order(n, seed)
        t = run_tournament(RoundRobin(n, rating=rating, seed=seed), order_judge(rank))
        assert t.ranking == sorted(range(n), key=lambda i: rank[i])
        assert sorted(t.wins) == [float(k) for k in range(n)]


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
def test_round_robin_noisy_judge_tracks_true_strengths(rating):
    # Bradley-Terry judge with known Elo-scale strengths; one noisy verdict per pair, averaged over
    # independent tournaments.
    n, repeats = 8, 15
    strength = [100.0 * k for k in range(n)]
    judge = bt_judge(strength, random.Random(12345))
    mean_rating = [0.0] * n
    for rep in range(repeats):
        t = run_tournament(RoundRobin(n, rating=rating, seed=rep), judge)
        mean_rating = [acc + r / repeats for acc, r in zip(mean_rating, t.ratings, strict=True)]
    assert spearman(mean_rating, strength) > 0.7
    # A single larger tournament is informative on its own.
    big = [25.0 * k for k in range(24)]
    t = run_tournament(RoundRobin(24, rating=rating, seed=1), bt_judge(big, random.Random(7)))
    assert spearman(t.ratings, big) > 0.7


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
def test_round_robin_undecided_is_half_a_win_each(rating):
    t = run_tournament(RoundRobin(5, rating=rating), lambda ms: [None] * len(ms))
    assert t.undecided == 10 and t.wins == [2.0] * 5
    assert t.ratings == pytest.approx([1000.0] * 5, abs=1e-9)
    assert t.ranking == [0, 1, 2, 3, 4], "ties keep index order"
    # One decided match among undecided ones: the winner is on top, the loser at the bottom.
    t = run_tournament(
        RoundRobin(3, rating=rating), lambda ms: ["b" if (m.a, m.b) == (0, 2) else None for m in ms]
    )
    assert t.wins == [0.5, 1.0, 1.5] and t.ranking == [2, 1, 0]


@pytest.mark.parametrize("rating", ["elo", "bradley_terry"])
def test_round_robin_ratings_do_not_depend_on_submit_order(rating):
    rank = hidden_order(6, 0)
    judge = order_judge(rank)
    one, two = RoundRobin(6, rating=rating, seed=3), RoundRobin(6, rating=rating, seed=3)
    matches = one.pending()
    outcomes = dict(zip(matches, judge(matches), strict=True))
    one.submit(outcomes)
    for m in reversed(matches):
        two.submit({m: outcomes[m]})
    assert one.ratings == two.ratings


def test_round_robin_bradley_terry_matches_hand_computed_two_player_fit():
    # n=2, 0 beats 1. Penalised likelihood in theta with prior wins/losses vs theta=0; by symmetry
    # theta_1 = -theta_0 = -x where x solves 2 = sigmoid(2x) + 2 sigmoid(x) (wins+prior = expected).
    lo, hi = 0.0, 10.0
    for _ in range(200):
        x = (lo + hi) / 2
        f = 1 / (1 + math.exp(-2 * x)) + 2 / (1 + math.exp(-x)) - 2
        lo, hi = (x, hi) if f < 0 else (lo, x)
    t = run_tournament(RoundRobin(2), lambda ms: ["a"])
    gap = 2 * x * 400 / math.log(10)
    assert t.ratings == pytest.approx([1000 + gap / 2, 1000 - gap / 2], abs=1e-6)


def test_round_robin_elo_single_match_is_the_k_factor_update():
    # One game between equal ratings: expected 0.5, so the winner gains K/2 whatever the order.
    t = run_tournament(RoundRobin(2, rating="elo", k_factor=20.0, initial=1200.0), lambda ms: ["b"])
    assert t.ratings == pytest.approx([1190.0, 1210.0]) and t.ranking == [1, 0]


def test_round_robin_results_before_done_raise():
    t = RoundRobin(3)
    t.submit({t.pending()[0]: "a"})
    assert t.wins == [1.0, 0.0, 0.0] and not t.done
    with pytest.raises(TournamentError, match="2 matches are still pending"):
        _ = t.ratings
    with pytest.raises(TournamentError, match="not pending"):
        t.submit({Match(1, 0, 1): "a"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be an int >= 1"),
        ({"n": 3, "rating": "glicko"}, "rating must be"),
        ({"n": 3, "k_factor": 0.0}, "k_factor must be"),
        ({"n": 3, "k_factor": float("nan")}, "k_factor must be"),
        ({"n": 3, "initial": float("inf")}, "initial must be"),
        ({"n": 3, "seed": None}, "seed must be an int"),
        ({"n": 3, "elo_shuffles": 0}, "elo_shuffles must be"),
    ],
)
def test_round_robin_rejects_bad_arguments(kwargs, message):
    with pytest.raises(TournamentError, match=message):
        RoundRobin(**kwargs)


# ----------------------------------------------------------------------------------------------- swiss


def played_pairs(t: Swiss) -> list[tuple[int, int]]:
    return [tuple(sorted((e["a"], e["b"]))) for entries in t.bracket for e in entries if not e["bye"]]


def coin_judge(seed: int):
    rng = random.Random(seed)
    return lambda matches: [rng.choice(["a", "b", None]) for _ in matches]


@pytest.mark.parametrize("n", range(1, 18))
def test_swiss_counts_rounds_byes_and_never_repeats_a_pair_at_the_default_rounds(n):
    for seed in range(10):
        t = Swiss(n, seed=seed)
        calls: list[int] = []
        coin = coin_judge(seed)
        run_tournament(t, lambda ms, calls=calls, coin=coin: calls.append(len(ms)) or coin(ms))
        rounds = math.ceil(math.log2(n)) if n > 1 else 0
        assert t.done and t.num_rounds == rounds and len(calls) == len(t.bracket) == rounds
        assert calls == [n // 2] * rounds and t.comparisons == rounds * (n // 2)
        pairs = played_pairs(t)
        assert len(pairs) == len(set(pairs)), "no pair meets twice while a fresh pairing exists"
        for entries in t.bracket:
            seen = [e["a"] for e in entries] + [e["b"] for e in entries if not e["bye"]]
            assert sorted(seen) == list(range(n)), "every entrant plays or sits out each round once"
            assert sum(e["bye"] for e in entries) == n % 2
        # Odd n: a different entrant sits out every round (rounds < n), and a bye is a point, not a game.
        if n % 2 == 0:
            assert t.byes == [0] * n
        else:
            assert max(t.byes) <= 1 and sum(t.byes) == rounds
        assert t.games == [rounds - b for b in t.byes]
        assert t.points == pytest.approx([w + b for w, b in zip(t.wins, t.byes, strict=True)])


def test_swiss_is_seeded_and_round_one_is_a_random_pairing():
    def first_round(seed):
        return [(m.a, m.b) for m in Swiss(8, seed=seed).pending()]

    assert first_round(5) == first_round(5)
    assert len({tuple(first_round(s)) for s in range(10)}) > 1
    assert sorted(x for pair in first_round(5) for x in pair) == list(range(8))
    # Same seed and same verdicts: the same brackets all the way down.
    one = run_tournament(Swiss(11, seed=3), coin_judge(9))
    two = run_tournament(Swiss(11, seed=3), coin_judge(9))
    assert one.bracket == two.bracket and one.ranking == two.ranking


def test_swiss_pairs_leaders_with_leaders():
    t = Swiss(8, seed=0)
    r1 = t.pending()
    t.submit({m: "a" for m in r1})
    winners = {m.a for m in r1}
    r2 = t.pending()
    assert all(m.round == 2 for m in r2) and len(r2) == 4
    # Round 2: the four winners play each other, the four losers each other.
    assert all((m.a in winners) == (m.b in winners) for m in r2)
    assert sum(m.a in winners for m in r2) == 2


@pytest.mark.parametrize("n", [2, 3, 4, 6, 7, 8, 9, 12, 16, 17])
def test_swiss_perfect_judge_finds_the_best(n):
    # (n=5 with 3 rounds is the exception: a repeat-free pairing can keep the two unbeaten entrants
    # apart, and then the fit cannot tell them apart either.)
    for seed in range(30):
        rank = hidden_order(n, seed)
        t = run_tournament(Swiss(n, seed=seed), order_judge(rank))
        assert t.ranking[0] == rank.index(0) and t.undecided == 0


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8])
def test_swiss_with_every_round_is_a_round_robin(n):
    for seed in range(5):
        rank = hidden_order(n, seed)
        t = run_tournament(Swiss(n, rounds=swiss_max_rounds(n), seed=seed), order_judge(rank))
        assert sorted(played_pairs(t)) == [(i, j) for i in range(n) for j in range(i + 1, n)]
        assert t.ranking == sorted(range(n), key=lambda i: rank[i])


def test_swiss_repeats_a_pair_only_when_no_fresh_pairing_exists():
    # More rounds than a round robin has are refused ...
    with pytest.raises(TournamentError, match="rounds=4 is more than 3"):
        Swiss(4, rounds=4)
    # ... and a history with no fresh pairing left still pairs everyone, with the fewest repeats.
    t = Swiss(6, seed=0)
    t._met = [[int(i != j) for j in range(6)] for i in range(6)]  # everyone has met everyone
    assert t._pair([0, 1, 2, 3, 4, 5]) == [(0, 1), (2, 3), (4, 5)]
    t._met[0][1] = t._met[1][0] = 0  # only 0-1 is fresh: it is used, the rest repeats
    t._met[2][3] = t._met[3][2] = 0  # and 2-3
    assert t._pair([0, 2, 1, 3, 4, 5]) == [(0, 1), (2, 3), (4, 5)]


def test_swiss_undecided_is_half_a_point_each():
    t = run_tournament(Swiss(6, seed=1), lambda ms: [None] * len(ms))
    assert t.undecided == t.comparisons == 9 and t.wins == [1.5] * 6 and t.score == [0.5] * 6
    assert t.ratings == pytest.approx([1000.0] * 6, abs=1e-9) and t.ranking == list(range(6))
    assert all(e["winner"] is None and e["decided"] is False for entries in t.bracket for e in entries)
    assert swiss_rewards(t) == [0.0] * 6


def test_swiss_partial_submit_and_bad_input():
    t = Swiss(4, seed=0)
    first = t.pending()
    t.submit({first[0]: "b"})
    assert t.pending() == [first[1]] and t.bracket[0][0]["winner"] == first[0].b
    with pytest.raises(TournamentError, match="not pending"):
        t.submit({first[0]: "a"})
    with pytest.raises(TournamentError, match="must be 'a', 'b' or None"):
        t.submit({first[1]: 1})
    with pytest.raises(TournamentError, match="round 1 of 2 has 1 matches pending"):
        _ = t.ratings
    t.submit({first[1]: "a"})
    assert [m.round for m in t.pending()] == [2, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be an int >= 1"),
        ({"n": 4, "rounds": -1}, "rounds must be an int >= 0"),
        ({"n": 4, "rounds": 2.0}, "rounds must be an int"),
        ({"n": 5, "rounds": 6}, "rounds=6 is more than 5"),
        ({"n": 4, "seed": "x"}, "seed must be an int"),
        ({"n": 4, "initial": float("nan")}, "initial must be"),
    ],
)
def test_swiss_rejects_bad_arguments(kwargs, message):
    with pytest.raises(TournamentError, match=message):
        Swiss(**kwargs)


def test_swiss_small_and_empty():
    one = Swiss(1, seed=0)
    assert one.done and one.ranking == [0] and one.pending() == [] and swiss_rewards(one) == [0.0]
    zero = Swiss(5, rounds=0, seed=0)
    assert zero.done and zero.ranking == list(range(5)) and zero.comparisons == 0
    two = run_tournament(Swiss(2, seed=0), lambda ms: ["b"])
    assert two.ranking == [1, 0] and swiss_rewards(two) == [-1.0, 1.0]


def test_swiss_rewards_are_standardised_scores_and_byes_add_no_spread():
    rank = hidden_order(8, 4)
    t = run_tournament(Swiss(8, seed=4), order_judge(rank))
    rewards = swiss_rewards(t)
    assert sum(rewards) == pytest.approx(0.0, abs=1e-9)
    assert sum(r * r for r in rewards) / 8 == pytest.approx(1.0)
    # Higher score, higher reward; the ranking agrees with the rewards wherever they differ.
    pos = {i: k for k, i in enumerate(t.ranking)}
    assert all(pos[i] < pos[j] for i in range(8) for j in range(8) if rewards[i] > rewards[j] + 1e-12)
    # n=3, one round: the bye holder played nothing, so it sits exactly in the middle.
    t = Swiss(3, rounds=1, seed=0)
    (m,) = t.pending()
    t.submit({m: "a"})
    (bye,) = {0, 1, 2} - {m.a, m.b}
    rewards = swiss_rewards(t)
    assert rewards[bye] == 0.0 and rewards[m.a] > 0 > rewards[m.b]
    assert t.points[bye] == 1.0 and t.ranking == [m.a, bye, m.b]
    with pytest.raises(RankingRewardError, match="expected a Swiss"):
        swiss_rewards(Knockout(2, seed=0))  # type: ignore[arg-type]
    with pytest.raises(RankingRewardError, match="not done"):
        swiss_rewards(Swiss(4, seed=0))


# ---------------------------------------------------------------------------------------------- drivers


def test_run_many_batches_all_tournaments_into_one_call_per_wave():
    ranks = [hidden_order(8, 1), hidden_order(5, 2), [0], hidden_order(4, 3)]
    make = [
        lambda: Knockout(8, seed=1),
        lambda: Knockout(5, seed=2),
        lambda: Knockout(1, seed=0),
        lambda: RoundRobin(4, seed=3),
    ]
    calls: list[list[tuple[int, Match]]] = []

    def compare_batch(batch):
        calls.append(batch)
        return ["a" if ranks[k][m.a] < ranks[k][m.b] else "b" for k, m in batch]

    out = run_many([f() for f in make], compare_batch)
    # Waves = the most rounds any tournament needs (3 for n=5 and n=8), not the sum over tournaments.
    assert len(calls) == 3
    assert {k for k, _ in calls[0]} == {0, 1, 3} and len(calls[0]) == 4 + 2 + 6
    assert {k for k, _ in calls[1]} == {0, 1} and {k for k, _ in calls[2]} == {0, 1}
    assert all(t.done for t in out)
    # Same results as driving each tournament alone.
    for k, f in enumerate(make):
        alone = run_tournament(f(), order_judge(ranks[k]))
        if isinstance(alone, Knockout):
            assert out[k].winner == alone.winner and out[k].bracket == alone.bracket
        else:
            assert out[k].ratings == alone.ratings


def test_drivers_reject_wrong_outcome_counts():
    with pytest.raises(TournamentError, match="returned 1 outcomes for 2 matches"):
        run_tournament(Knockout(4, seed=0), lambda ms: ["a"])
    with pytest.raises(TournamentError, match="returned 0 outcomes for 3 matches"):
        run_many([Knockout(4, seed=0), Knockout(2, seed=0)], lambda batch: [])


def test_run_many_with_nothing_to_do():
    assert run_many([], lambda batch: pytest.fail("no call expected")) == []
    done = [Knockout(1, seed=0), RoundRobin(1)]
    assert run_many(done, lambda batch: pytest.fail("no call expected")) == done


def test_run_many_drives_swiss_alongside_the_others():
    ranks = [hidden_order(8, 5), hidden_order(5, 6)]
    calls: list[int] = []

    def compare_batch(batch):
        calls.append(len(batch))
        return ["a" if ranks[k][m.a] < ranks[k][m.b] else "b" for k, m in batch]

    out = run_many([Swiss(8, seed=5), Knockout(5, seed=6)], compare_batch)
    assert calls == [4 + 2, 4 + 1, 4 + 1], "3 waves: both tournaments need ceil(log2 n) = 3 rounds"
    alone = run_tournament(Swiss(8, seed=5), order_judge(ranks[0]))
    assert out[0].bracket == alone.bracket and out[0].ranking == alone.ranking
