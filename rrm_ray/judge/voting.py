"""Majority voting over k sampled judgments of one pair, in both presentation orders, with an
adaptive stop. Built for batched engines: the caller collects the presentations that all pairs
still need, runs them as ONE engine batch, and records the verdicts back (the judge service's
voting waves, `rrm_ray.judge.service`).

Vocabulary: a pair is (a, b) in the caller's order. A presentation shows it to the judge either as
(a, b) or swapped as (b, a); a verdict names "Assistant 1" or "Assistant 2", which ``translate``
turns back into "a won" / "b won".

``judge.verdict=choice_prob`` replaces the sampled votes by one probability per order:
``swap_corrected_prob_a`` averages them and ``prob_winner`` applies the same majority and tie rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

TieRule = Literal["first", "random", "none"]
Verdict = Literal[1, 2] | None
_TIE_RULES = ("first", "random", "none")


def tie_coin(seed: int, pair_index: int) -> Literal["a", "b"]:
    """The side tie rule "random" gives pair ``pair_index``. String seeds hash deterministically
    (not via PYTHONHASHSEED), so the coin is reproducible."""
    return "a" if random.Random(f"{seed}/{pair_index}").random() < 0.5 else "b"


def tie_break(tie_rule: TieRule, seed: int, pair_index: int) -> Literal["a", "b"] | None:
    """The winner of a tied pair: "first" -> a, "random" -> ``tie_coin``, "none" -> None."""
    if tie_rule not in _TIE_RULES:
        raise ValueError(f"pair {pair_index}: tie_rule must be one of {_TIE_RULES}, got {tie_rule!r}")
    if tie_rule == "first":
        return "a"
    return tie_coin(seed, pair_index) if tie_rule == "random" else None


@dataclass(frozen=True)
class Presentation:
    """One judge call. ``swapped=True`` shows response b as Assistant 1 and a as Assistant 2."""

    pair_index: int
    vote_index: int
    swapped: bool


def translate(presentation: Presentation, verdict: Verdict) -> bool | None:
    """Map a verdict about "Assistant 1/2" to "did a win?" (None stays None: no vote)."""
    if verdict is None:
        return None
    if verdict not in (1, 2):
        raise ValueError(
            f"pair {presentation.pair_index} vote {presentation.vote_index}: verdict must be 1, 2 or "
            f"None, got {verdict!r}"
        )
    first_won = verdict == 1
    return first_won != presentation.swapped


class PairVote:
    """The vote state of one pair.

    Vote i is shown swapped when i is odd, so any k >= 2 covers both orders (evenly for even k;
    original order gets one extra vote for odd k). With k=1 only the original order is ever shown,
    so the judge's position bias goes straight into the result: shuffle pairs upstream if k=1.
    ``alternate=False`` (``judge.presentation=seeded_coin``) shows every vote in the original order.

    The winner is the side with more valid votes; an unparseable or timed-out judgment (recorded
    as None) is no vote for either side. Equal counts (including zero valid votes) go to the tie
    rule: "first" -> a, "random" -> a coin seeded by (seed, pair_index), "none" -> None.

    Adaptive mode asks for votes in waves of the fewest calls that could still settle the pair and
    stops once the leader is ahead by more than the votes not yet recorded, i.e. when no outcome of
    the remaining votes could change the result. Ties are not exploited (a lead equal to the
    remaining votes does not stop the pair, even where the tie rule would favour the leader), so
    the winner always equals the one a full non-adaptive run would give for the same verdicts.
    """

    def __init__(
        self,
        votes: int,
        adaptive: bool = True,
        tie_rule: TieRule = "first",
        seed: int = 0,
        pair_index: int = 0,
        alternate: bool = True,
    ) -> None:
        if not isinstance(votes, int) or votes < 1:
            raise ValueError(f"pair {pair_index}: judge votes must be an int >= 1, got {votes!r}")
        if tie_rule not in _TIE_RULES:
            raise ValueError(f"pair {pair_index}: tie_rule must be one of {_TIE_RULES}, got {tie_rule!r}")
        self.votes = votes
        self.adaptive = adaptive
        self.tie_rule = tie_rule
        self.pair_index = pair_index
        self.seed = seed
        self.alternate = alternate
        self._issued = 0  # votes 0.._issued-1 have been handed out
        self._results: dict[int, bool | None] = {}

    # ---- counts -------------------------------------------------------------------------------
    @property
    def wins_a(self) -> int:
        return sum(1 for v in self._results.values() if v is True)

    @property
    def wins_b(self) -> int:
        return sum(1 for v in self._results.values() if v is False)

    @property
    def invalid(self) -> int:
        return sum(1 for v in self._results.values() if v is None)

    @property
    def calls_made(self) -> int:
        """Judge calls handed out so far (recorded or still in flight)."""
        return self._issued

    @property
    def pending(self) -> int:
        """Calls handed out whose verdict has not been recorded yet."""
        return self._issued - len(self._results)

    @property
    def calls_saved(self) -> int:
        """Calls the adaptive stop avoided: k - calls made, once the pair is done (else 0)."""
        return self.votes - self._issued if self.done else 0

    @property
    def results(self) -> dict[int, bool | None]:
        """Recorded votes by vote index: True = a won, False = b won, None = no vote."""
        return dict(self._results)

    @property
    def decided(self) -> bool:
        """The remaining votes can no longer change the winner."""
        return abs(self.wins_a - self.wins_b) > self.votes - len(self._results)

    @property
    def done(self) -> bool:
        if len(self._results) == self.votes:
            return True
        return self.adaptive and self.decided

    # ---- the wave protocol --------------------------------------------------------------------
    def next_presentations(self, max_n: int | None = None) -> list[Presentation]:
        """Hand out the calls still needed (at most ``max_n``); [] when done or waiting on calls.

        Non-adaptive: every vote not yet handed out. Adaptive: the smallest number n of further
        votes that could settle the pair if all went to the leader, i.e. lead + n > remaining - n,
        minus the calls already in flight. For a fresh pair that is a strict majority, k // 2 + 1.
        """
        if max_n is not None and max_n < 0:
            raise ValueError(f"pair {self.pair_index}: max_n must be >= 0 or None, got {max_n}")
        if self.done:
            return []
        unissued = self.votes - self._issued
        if self.adaptive:
            remaining = self.votes - len(self._results)
            lead = abs(self.wins_a - self.wins_b)
            need = min(remaining, (remaining - lead) // 2 + 1)
            n = max(0, min(need - self.pending, unissued))
        else:
            n = unissued
        if max_n is not None:
            n = min(n, max_n)
        start = self._issued
        self._issued += n
        return [
            Presentation(self.pair_index, i, swapped=self.alternate and i % 2 == 1)
            for i in range(start, start + n)
        ]

    def record(self, vote_index: int, verdict_for_a: bool | None) -> None:
        """Record vote ``vote_index``: True = a won, False = b won, None = unparseable / timed out."""
        if not 0 <= vote_index < self._issued:
            raise ValueError(
                f"pair {self.pair_index}: vote {vote_index} was never handed out "
                f"(handed out: 0..{self._issued - 1})"
            )
        if vote_index in self._results:
            raise ValueError(f"pair {self.pair_index}: vote {vote_index} was already recorded")
        if verdict_for_a is not None and not isinstance(verdict_for_a, bool):
            raise ValueError(
                f"pair {self.pair_index} vote {vote_index}: expected True, False or None, "
                f"got {verdict_for_a!r}"
            )
        self._results[vote_index] = verdict_for_a

    def winner(self) -> Literal["a", "b"] | None:
        """Return "a", "b", or None (a tie under tie_rule "none"). Provisional until ``done``."""
        wa, wb = self.wins_a, self.wins_b
        if wa != wb:
            return "a" if wa > wb else "b"
        return tie_break(self.tie_rule, self.seed, self.pair_index)

    def __repr__(self) -> str:
        return (
            f"PairVote(pair={self.pair_index}, k={self.votes}, a={self.wins_a}, b={self.wins_b}, "
            f"invalid={self.invalid}, calls={self._issued}, done={self.done})"
        )


# -- judge.verdict=choice_prob: one probability per presentation order instead of sampled votes ------
def swap_corrected_prob_a(p_first_ab: float, p_first_ba: float) -> float:
    """P(a is better), averaged over both presentation orders.

    ``p_first_ab``: P("Assistant 1") with a shown first; ``p_first_ba``: the same with b shown first,
    where a is Assistant 2 and wins with 1 - P("Assistant 1"). The mean cancels a position bias that
    adds the same amount to P("Assistant 1") in both orders.
    """
    for name, p in (("p_first_ab", p_first_ab), ("p_first_ba", p_first_ba)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"swap_corrected_prob_a: {name} must be a probability in [0, 1], got {p!r}")
    return (p_first_ab + (1.0 - p_first_ba)) / 2.0


def prob_winner(
    prob_a: float | None, tie_rule: TieRule = "first", seed: int = 0, pair_index: int = 0
) -> Literal["a", "b"] | None:
    """The outcome of a choice-probability verdict, by the majority rule of ``PairVote`` with the
    probability as a's vote share: a if P(a) > 0.5, b if < 0.5, and exactly 0.5 (or None, no
    probability: an order timed out) is a tie that goes to the tie rule, seeded as ``PairVote``'s."""
    if prob_a is not None and prob_a != 0.5:
        return "a" if prob_a > 0.5 else "b"
    return tie_break(tie_rule, seed, pair_index)
