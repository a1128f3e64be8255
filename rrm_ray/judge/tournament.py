"""Rank several responses to one query with a pairwise judge: knockout, round robin, Swiss rounds.

The judge (an RRM behind a vLLM engine) is the expensive part and is batched across many queries, so
a tournament here never calls it. It is a small state machine that the caller STEPS:

    t = Knockout(n=8, seed=0)
    while not t.done:
        matches = t.pending()                  # comparisons that can run now
        t.submit(dict(zip(matches, judge(matches))))

and ``run_many`` does the same for many tournaments at once, one judge batch per wave. An outcome is
``"a"`` or ``"b"`` (which of the match's two indexes won) or ``None`` (the judge could not decide:
no parseable verdict, or a split vote).

Knockout (the RRM paper's multi-response rule): random pairing, winners advance; n-1 comparisons in
ceil(log2 n) rounds. An odd round gives the last entrant a bye (it advances without a comparison); the
bye holder is put first in the next round so that no entrant gets two byes in a row. An undecided
match goes to a seeded coin flip (``undecided="random"``) or to ``a`` (``"first"``).

Round robin (the paper's ELO variant): all n(n-1)/2 pairs in a single wave, then ratings on the Elo
scale (higher is better) from the outcomes. An undecided match counts half a win for each side.
Two rating methods:

- ``"elo"``: the classic sequential update. For a match with score s for i (1 win, 0 loss, 0.5
  undecided), E = 1/(1+10^((R_j-R_i)/400)), R_i += K(s-E), R_j -= K(s-E), everyone starting at
  ``initial``. A single pass depends on the order of the matches (a round robin has no natural order),
  so the matches are replayed in ``elo_shuffles`` (default 10) seeded random orders, each from
  ``initial``, and the final ratings are averaged. The updates are zero-sum, so the mean stays
  ``initial``.
- ``"bradley_terry"``: maximum-likelihood strengths p_i with P(i beats j) = p_i/(p_i+p_j). A plain
  MLE is infinite for an unbeaten item, so each item also gets one virtual win and one virtual loss
  against a fixed reference of strength 1 (a weak prior that pulls towards the middle and keeps every
  strength finite). Reported as 400*log10(p_i), shifted so the mean equals ``initial``. Unlike Elo it
  does not depend on match order; in a complete round robin its order equals the order of the win
  counts (the wins are a sufficient statistic), ties included. The fit is damped Newton on
  log-strengths, not Hunter's (2004) MM iteration: both reach the same maximum, but MM converges
  linearly and slowly exactly when the judge is consistent (a near-total order; measured: ~1,000 MM
  iterations for n=16, ~2,800 for n=32), while Newton needs about ten steps.

Swiss rounds (in between: ``rounds`` x floor(n/2) comparisons, default ceil(log2 n) rounds, so about
log2(n)/2 times a knockout's calls and a small fraction of a round robin's): every round pairs entrants
of equal score that have not met, and the ranking is the share of games won, split by a Bradley-Terry
fit over the games played; see ``Swiss``. README "Which tournament" compares the three per judge call.

``ranking`` sorts best first; ratings within 1e-6 of each other count as tied and keep index order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from rrm_ray.judge.ratings import bradley_terry_ratings, elo_ratings, rank_by

Outcome = Literal["a", "b"] | None
_OUTCOMES = ("a", "b", None)
_PAIRING_STEPS = 20_000  # Swiss pairing search nodes per repeat allowance before allowing one more


class TournamentError(ValueError):
    """Bad tournament arguments, an unknown or repeated match, or a result asked for too early."""


@dataclass(frozen=True)
class Match:
    """One pending comparison: ``a`` and ``b`` index the query's responses; ``round`` starts at 1."""

    round: int
    a: int
    b: int


class Tournament(Protocol):
    """What the drivers below need from a tournament."""

    @property
    def done(self) -> bool: ...

    def pending(self) -> list[Match]: ...

    def submit(self, outcomes: dict[Match, Outcome]) -> None: ...


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TournamentError(f"tournament: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TournamentError(f"tournament: seed must be an int, got {value!r}")
    return value


def _check_submission(where: str, pending: list[Match], outcomes: dict[Match, Outcome]) -> None:
    """Every submitted match must be pending and its outcome 'a', 'b' or None (nothing is recorded
    before the whole submission is checked)."""
    for match, outcome in outcomes.items():
        if match not in pending:
            raise TournamentError(f"{where}: {match} is not pending (pending: {pending})")
        if outcome not in _OUTCOMES:
            raise TournamentError(f"{where}: outcome for {match} must be 'a', 'b' or None, got {outcome!r}")


class Knockout:
    """Single-elimination bracket over ``n`` responses, stepped one round at a time.

    Attributes (readable at any time): ``bracket`` - one list per round created so far, each entry a
    dict ``{a, b, winner, bye, decided}`` (a bye has ``b=None``; ``winner``/``decided`` are None while
    the match is unresolved; ``decided`` is False only when the judge gave no verdict and the
    ``undecided`` rule picked the winner); ``rounds_won[i]`` - rounds entrant i advanced from, a bye
    included, so the winner has ``num_rounds``; ``matches_won[i]`` - comparisons it won (byes
    excluded, the evidence the rewards use); ``comparisons`` and ``undecided`` - counts so far.
    """

    def __init__(self, n: int, seed: int, undecided: Literal["random", "first"] = "random") -> None:
        self.n = _check_int("n", n, 1)
        _check_seed(seed)
        if undecided not in ("random", "first"):
            raise TournamentError(f"Knockout: undecided must be 'random' or 'first', got {undecided!r}")
        self.undecided_rule = undecided
        self._rng = random.Random(seed)  # pairing order and coin flips: same seed, same bracket
        self.num_rounds = math.ceil(math.log2(n)) if n > 1 else 0
        self.bracket: list[list[dict]] = []
        self.rounds_won = [0] * n
        self.matches_won = [0] * n
        self.comparisons = 0
        self.undecided = 0
        self._winner: int | None = None
        self._open: dict[Match, dict] = {}  # unresolved matches of the current round -> bracket entry
        order = list(range(n))
        self._rng.shuffle(order)
        self._start_round(order)

    def _start_round(self, entrants: list[int]) -> None:
        if len(entrants) == 1:
            self._winner = entrants[0]
            return
        r = len(self.bracket) + 1
        entries = []
        for k in range(0, len(entrants) - 1, 2):
            entry = {"a": entrants[k], "b": entrants[k + 1], "winner": None, "bye": False, "decided": None}
            self._open[Match(r, entrants[k], entrants[k + 1])] = entry
            entries.append(entry)
        if len(entrants) % 2:
            bye = entrants[-1]
            entries.append({"a": bye, "b": None, "winner": bye, "bye": True, "decided": True})
            self.rounds_won[bye] += 1
        self.bracket.append(entries)

    @property
    def done(self) -> bool:
        return self._winner is not None

    @property
    def winner(self) -> int:
        """Index of the response that won every comparison it played."""
        if self._winner is None:
            raise TournamentError("Knockout.winner: the tournament is not done; submit the pending matches")
        return self._winner

    def pending(self) -> list[Match]:
        """Unresolved matches of the current round, in bracket order; empty when done."""
        return list(self._open)

    def submit(self, outcomes: dict[Match, Outcome]) -> None:
        """Record outcomes for some or all pending matches; the next round starts once all are in."""
        _check_submission("Knockout.submit", self.pending(), outcomes)
        # Resolve in bracket order, not dict order, so coin flips do not depend on how the caller
        # built the dict.
        for match in [m for m in self._open if m in outcomes]:
            entry = self._open.pop(match)
            outcome = outcomes[match]
            entry["decided"] = outcome is not None
            if outcome is None:
                self.undecided += 1
                outcome = self._rng.choice("ab") if self.undecided_rule == "random" else "a"
            won = match.a if outcome == "a" else match.b
            entry["winner"] = won
            self.rounds_won[won] += 1
            self.matches_won[won] += 1
            self.comparisons += 1
        if not self._open and not self.done:
            last = self.bracket[-1]
            byes = [e["winner"] for e in last if e["bye"]]
            self._start_round(byes + [e["winner"] for e in last if not e["bye"]])


class RoundRobin:
    """Every pair compared once (one wave), then ratings; see the module docstring for the methods.

    ``pending()`` returns all pairs ``Match(1, i, j)`` with i < j until they are submitted. ``wins``
    (undecided = 0.5 each), ``comparisons`` and ``undecided`` update as outcomes arrive; ``ratings``
    (Elo scale, mean ``initial``) and ``ranking`` (best first) exist once every pair is in.
    """

    def __init__(
        self,
        n: int,
        rating: Literal["elo", "bradley_terry"] = "bradley_terry",
        k_factor: float = 32.0,
        initial: float = 1000.0,
        seed: int = 0,
        elo_shuffles: int = 10,
    ) -> None:
        self.n = _check_int("n", n, 1)
        if rating not in ("elo", "bradley_terry"):
            raise TournamentError(f"RoundRobin: rating must be 'elo' or 'bradley_terry', got {rating!r}")
        if not (isinstance(k_factor, int | float) and math.isfinite(k_factor) and k_factor > 0):
            raise TournamentError(f"RoundRobin: k_factor must be a finite number > 0, got {k_factor!r}")
        if not (isinstance(initial, int | float) and math.isfinite(initial)):
            raise TournamentError(f"RoundRobin: initial must be a finite number, got {initial!r}")
        self.rating = rating
        self.k_factor = float(k_factor)
        self.initial = float(initial)
        self.seed = _check_seed(seed)
        self.elo_shuffles = _check_int("elo_shuffles", elo_shuffles, 1)
        self.wins = [0.0] * n
        self.comparisons = 0
        self.undecided = 0
        self._open = {Match(1, i, j): None for i in range(n) for j in range(i + 1, n)}
        self._scores: dict[Match, float] = {}  # score of match.a: 1, 0 or 0.5
        self._ratings: list[float] | None = None
        if not self._open:
            self._finish()

    @property
    def done(self) -> bool:
        return self._ratings is not None

    def pending(self) -> list[Match]:
        return list(self._open)

    def submit(self, outcomes: dict[Match, Outcome]) -> None:
        """Record outcomes for some or all pending pairs; ratings are computed when the last arrives."""
        _check_submission("RoundRobin.submit", self.pending(), outcomes)
        for match, outcome in outcomes.items():
            del self._open[match]
            score = {"a": 1.0, "b": 0.0, None: 0.5}[outcome]
            self._scores[match] = score
            self.wins[match.a] += score
            self.wins[match.b] += 1.0 - score
            self.comparisons += 1
            self.undecided += outcome is None
        if not self._open and not self.done:
            self._finish()

    def _finish(self) -> None:
        # Sorted so the result does not depend on the order outcomes were submitted in.
        games = sorted((m.a, m.b, s) for m, s in self._scores.items())
        if self.rating == "elo":
            self._ratings = elo_ratings(
                self.n, games, self.k_factor, self.initial, self.elo_shuffles, self.seed
            )
        else:
            self._ratings = bradley_terry_ratings(self.n, games, self.initial)

    @property
    def ratings(self) -> list[float]:
        if self._ratings is None:
            raise TournamentError(f"RoundRobin.ratings: {len(self._open)} matches are still pending")
        return list(self._ratings)

    @property
    def ranking(self) -> list[int]:
        """Indexes best first; near-equal ratings (within 1e-6) keep index order."""
        return rank_by(self.ratings)


def swiss_max_rounds(n: int) -> int:
    """Rounds after which every pair can have met: n-1 for even n, n for odd n (one bye each)."""
    if n <= 1:
        return 0
    return n - 1 if n % 2 == 0 else n


class _PairingGaveUp(Exception):
    """The pairing search spent its step budget at this number of allowed repeats."""


class Swiss:
    """Swiss rounds over ``n`` responses: ``rounds`` waves of floor(n/2) comparisons each.

    Every round sorts the entrants by points (wins + byes, half a point each for an undecided match),
    ties by a seeded random order fixed at the start, and pairs them top down with the nearest entrant
    below that they have not met (Monrad pairing): leaders meet leaders, so after ceil(log2 n) rounds,
    the default, one entrant is usually alone on top, as in a knockout, but everyone has played every
    round. Round 1 is therefore a seeded random pairing. A repeat-free pairing is found by a
    depth-first search; when none exists the search allows one repeated pair, then two, ... (each
    allowance gets a bounded number of search steps, so a pathological history costs milliseconds,
    not an exponential search). Rounds are paired one at a time, so close to ``swiss_max_rounds``
    the history can leave no fresh pairing although a full round-robin schedule exists (measured:
    n=14 with all 13 rounds repeats 2 pairs); at the default rounds no pair repeats (tested to n=17).
    For odd n the bye goes to the lowest-placed entrant among those with the fewest byes; for
    PAIRING it is a point (as in chess), so that a strong bye holder keeps meeting the leaders, but
    it is not evidence: the ranking and the fit below never see it.

    Ranking: ``score`` first, the share of its played games an entrant won (undecided = half; for
    even n that is points / rounds, i.e. wins), then a penalised Bradley-Terry fit over the games
    played (the round robin's ``"bradley_terry"``, same prior), which weighs whom an entrant beat
    (finer than a Buchholz sum of the opponents' points, which ties often at small n); then index.
    ``ratings`` holds that fit on the Elo scale, mean ``initial``. In the simulation
    (``rrm_ray.judge.simulation``) ranking by the fit alone picked the same winners, and rewards from
    the fit instead of the score gave the same advantage correlation within noise: the score is the
    simpler signal and does not depend on the prior.

    Attributes: ``bracket`` - one list per round, entries ``{a, b, winner, bye, decided}`` as in
    ``Knockout`` (an undecided match has ``winner=None``, ``decided=False``); ``points`` (pairing),
    ``wins`` and ``games`` (played), ``byes``, ``comparisons`` and ``undecided``.
    """

    def __init__(self, n: int, rounds: int | None = None, seed: int = 0, initial: float = 1000.0) -> None:
        self.n = _check_int("n", n, 1)
        _check_seed(seed)
        if not (isinstance(initial, int | float) and math.isfinite(initial)):
            raise TournamentError(f"Swiss: initial must be a finite number, got {initial!r}")
        limit = swiss_max_rounds(n)
        if rounds is None:
            rounds = math.ceil(math.log2(n)) if n > 1 else 0
        _check_int("rounds", rounds, 0)
        if rounds > limit:
            raise TournamentError(
                f"Swiss: rounds={rounds} is more than {limit}, the rounds after which every pair of "
                f"{n} entrants has met; use at most {limit}"
            )
        self.num_rounds = rounds
        self.initial = float(initial)
        rng = random.Random(seed)
        order = list(range(n))
        rng.shuffle(order)
        self._place = {i: k for k, i in enumerate(order)}  # seeded tie order of equal points
        self.bracket: list[list[dict]] = []
        self.points = [0.0] * n
        self.wins = [0.0] * n
        self.games = [0] * n
        self.byes = [0] * n
        self.comparisons = 0
        self.undecided = 0
        self._met = [[0] * n for _ in range(n)]
        self._games: list[tuple[int, int, float]] = []  # (a, b, score of a)
        self._open: dict[Match, dict] = {}
        self._ratings: list[float] | None = None
        self._start_round()

    def _start_round(self) -> None:
        if len(self.bracket) == self.num_rounds:
            self._ratings = bradley_terry_ratings(self.n, sorted(self._games), self.initial)
            return
        r = len(self.bracket) + 1
        standing = sorted(range(self.n), key=lambda i: (-self.points[i], self._place[i]))
        bye = None
        if self.n % 2:
            fewest = min(self.byes)
            bye = next(i for i in reversed(standing) if self.byes[i] == fewest)
            standing.remove(bye)
        entries = []
        for a, b in self._pair(standing):
            entry = {"a": a, "b": b, "winner": None, "bye": False, "decided": None}
            self._open[Match(r, a, b)] = entry
            entries.append(entry)
        if bye is not None:
            entries.append({"a": bye, "b": None, "winner": bye, "bye": True, "decided": True})
            self.byes[bye] += 1
            self.points[bye] += 1.0
        self.bracket.append(entries)

    def _pair(self, standing: list[int]) -> list[tuple[int, int]]:
        """Top-down pairing of ``standing`` (even length) with the fewest repeated pairs it finds."""
        for allowed in range(len(standing) // 2 + 1):
            try:
                found = _pair_search(standing, self._met, allowed, [0])
            except _PairingGaveUp:
                continue
            if found is not None:
                return found
        raise AssertionError("unreachable: with every pair allowed to repeat, adjacent pairing works")

    @property
    def done(self) -> bool:
        return self._ratings is not None

    def pending(self) -> list[Match]:
        """Unresolved matches of the current round, in pairing order; empty when done."""
        return list(self._open)

    def submit(self, outcomes: dict[Match, Outcome]) -> None:
        """Record outcomes for some or all pending matches; the next round is paired once all are in."""
        _check_submission("Swiss.submit", self.pending(), outcomes)
        for match in [m for m in self._open if m in outcomes]:
            entry = self._open.pop(match)
            outcome = outcomes[match]
            score = {"a": 1.0, "b": 0.0, None: 0.5}[outcome]
            entry["decided"] = outcome is not None
            entry["winner"] = {"a": match.a, "b": match.b, None: None}[outcome]
            self._games.append((match.a, match.b, score))
            self._met[match.a][match.b] += 1
            self._met[match.b][match.a] += 1
            for i, s in ((match.a, score), (match.b, 1.0 - score)):
                self.wins[i] += s
                self.points[i] += s
                self.games[i] += 1
            self.comparisons += 1
            self.undecided += outcome is None
        if not self._open and not self.done:
            self._start_round()

    @property
    def ratings(self) -> list[float]:
        """Bradley-Terry fit over the games played (Elo scale, mean ``initial``)."""
        if self._ratings is None:
            raise TournamentError(
                f"Swiss.ratings: round {len(self.bracket)} of {self.num_rounds} has "
                f"{len(self._open)} matches pending"
            )
        return list(self._ratings)

    @property
    def score(self) -> list[float]:
        """Share of its played games each entrant won (undecided = half); 0.5 for one that played none."""
        return [w / g if g else 0.5 for w, g in zip(self.wins, self.games, strict=True)]

    @property
    def ranking(self) -> list[int]:
        """Indexes best first: score, then the Bradley-Terry rating, then index (Python's sort is
        stable, so the order ``rank_by`` gives inside an equal score survives)."""
        score = self.score
        return sorted(rank_by(self.ratings), key=lambda i: -score[i])


def _pair_search(
    rest: list[int], met: list[list[int]], allowed: int, steps: list[int], repeats: int = 0
) -> list[tuple[int, int]] | None:
    """Depth first: pair ``rest[0]`` with the nearest entrant below it that keeps the repeated pairs
    within ``allowed``, then the rest; None when no such pairing exists. ``steps`` counts the nodes
    visited (a one-item list, shared by the recursion) and the search gives up past ``_PAIRING_STEPS``."""
    if not rest:
        return []
    steps[0] += 1
    if steps[0] > _PAIRING_STEPS:
        raise _PairingGaveUp
    first = rest[0]
    for k in range(1, len(rest)):
        used = repeats + (met[first][rest[k]] > 0)
        if used > allowed:
            continue
        tail = _pair_search(rest[1:k] + rest[k + 1 :], met, allowed, steps, used)
        if tail is not None:
            return [(first, rest[k]), *tail]
    return None


def run_tournament(tournament: Tournament, compare: Callable[[list[Match]], Sequence[Outcome]]) -> Tournament:
    """Drive one tournament to the end; ``compare`` gets each wave's matches, returns outcomes in order."""
    while not tournament.done:
        matches = tournament.pending()
        if not matches:
            raise TournamentError("run_tournament: the tournament is not done but has no pending matches")
        outcomes = list(compare(matches))
        if len(outcomes) != len(matches):
            raise TournamentError(
                f"run_tournament: compare returned {len(outcomes)} outcomes for {len(matches)} matches"
            )
        tournament.submit(dict(zip(matches, outcomes, strict=True)))
    return tournament


def run_many(
    tournaments: Sequence[Tournament],
    compare_batch: Callable[[list[tuple[int, Match]]], Sequence[Outcome]],
) -> list[Tournament]:
    """Drive several tournaments (e.g. one per query) together: each wave gathers the pending matches
    of every unfinished tournament as ``(tournament_index, Match)`` and makes ONE ``compare_batch``
    call, so the judge engine sees one large batch per wave instead of one small batch per query."""
    tournaments = list(tournaments)
    while True:
        batch: list[tuple[int, Match]] = []
        for k, t in enumerate(tournaments):
            if t.done:
                continue
            matches = t.pending()
            if not matches:
                raise TournamentError(f"run_many: tournament {k} is not done but has no pending matches")
            batch.extend((k, m) for m in matches)
        if not batch:
            return tournaments
        outcomes = list(compare_batch(batch))
        if len(outcomes) != len(batch):
            raise TournamentError(
                f"run_many: compare_batch returned {len(outcomes)} outcomes for {len(batch)} matches"
            )
        per_tournament: dict[int, dict[Match, Outcome]] = {}
        for (k, m), outcome in zip(batch, outcomes, strict=True):
            per_tournament.setdefault(k, {})[m] = outcome
        for k, result in per_tournament.items():
            tournaments[k].submit(result)
