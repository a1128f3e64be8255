"""Turn a judge tournament over one query's responses into per-response rewards for GRPO.

GRPO normalises rewards within each query's group ((r - mean) / std), so what matters is the ORDER
and the relative spacing inside a group, not the absolute scale. The mappings below are chosen so
that (a) the group's best response gets the highest reward, (b) evidence the judge did not produce
(a bye, float noise between equal ratings) creates no spread, and (c) a group with no preference at all
gets equal rewards, which GRPO turns into zero advantage instead of amplifying noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from rrm_ray.judge.tournament import Knockout, RoundRobin, Swiss

_FLAT_TOL = 1e-9  # a rating spread below this (Elo points) is float noise: the group is flat


class RankingRewardError(ValueError):
    """A tournament that is not finished, or reward lists / weights that do not fit together."""


def knockout_rewards(t: Knockout) -> list[float]:
    """Comparisons won / number of rounds, in [0, 1]; the knockout winner gets exactly 1.0.

    How far a response got is the only evidence a knockout gives. Byes do not count as wins (no
    comparison happened), so a bye holder that loses its first real match ties with the first-round
    losers at 0. The winner is set to 1.0 even if a bye means it won fewer than ``num_rounds``
    comparisons: it beat everyone it met, including the runner-up, so it must rank strictly first.
    n=1 gives [1.0] (GRPO sees a single-response group as zero advantage anyway); n=2 gives [1, 0] or
    [0, 1].
    """
    if not isinstance(t, Knockout):
        raise RankingRewardError(f"knockout_rewards: expected a Knockout, got {type(t).__name__}")
    if not t.done:
        raise RankingRewardError(
            f"knockout_rewards: the knockout is not done ({len(t.pending())} matches pending)"
        )
    if t.n == 1:
        return [1.0]
    rewards = [won / t.num_rounds for won in t.matches_won]
    rewards[t.winner] = 1.0
    return rewards


def elo_rewards(t: RoundRobin) -> list[float]:
    """Standardised ratings: (rating - mean) / std (population std), so mean 0 and std 1.

    Ratings are on an arbitrary scale whose spread depends on the K factor or the prior; z-scores
    remove that, which makes the reward the same whatever rating method was used (GRPO's own
    normalisation then leaves them unchanged). If every rating is equal (all matches undecided, or
    n == 1) the group carries no preference and every reward is 0.0.
    """
    if not isinstance(t, RoundRobin):
        raise RankingRewardError(f"elo_rewards: expected a RoundRobin, got {type(t).__name__}")
    if not t.done:
        raise RankingRewardError(
            f"elo_rewards: the round robin is not done ({len(t.pending())} matches pending)"
        )
    return _standardise(t.ratings)


def _standardise(values: Sequence[float]) -> list[float]:
    """(v - mean) / population std; all zeros when the spread is float noise (no preference)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std <= _FLAT_TOL:
        return [0.0] * n
    return [(v - mean) / std for v in values]


def swiss_rewards(t: Swiss) -> list[float]:
    """Standardised Swiss scores (share of played games won): mean 0, std 1; all 0.0 when flat.

    The score, not the points: a bye is no comparison, so it adds no spread (as in a knockout). For
    even n the score is the win count over the rounds, so the rewards are the standardised wins.
    Equal scores get equal rewards although the ranking splits them by a Bradley-Terry fit: that fit
    is a weak signal at a few games each, and using it as the reward did not raise the advantage
    correlation in ``rrm_ray.judge.simulation``.
    """
    if not isinstance(t, Swiss):
        raise RankingRewardError(f"swiss_rewards: expected a Swiss, got {type(t).__name__}")
    if not t.done:
        raise RankingRewardError(
            f"swiss_rewards: the Swiss rounds are not done ({len(t.pending())} matches pending)"
        )
    return _standardise(t.score)


def _check_values(name: str, values: Sequence[float | None]) -> None:
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise RankingRewardError(
                f"mix_rewards: {name} reward at index {i} must be a finite number or None, got {v!r}"
            )


def _check_weight(name: str, w: float) -> None:
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        raise RankingRewardError(f"mix_rewards: {name} must be a finite number >= 0, got {w!r}")


def mix_rewards(
    rule: Sequence[float | None],
    judge: Sequence[float | None],
    rule_weight: float,
    judge_weight: float,
    mode: Literal["weighted", "judge_if_no_rule"],
) -> list[float]:
    """Combine per-response rule rewards (None = no reference answer) and judge rewards (None = no
    judge reward for that row).

    - ``"weighted"``: rule_weight * rule + judge_weight * judge, a missing part counting as 0. That is
      harmless when a whole GRPO group lacks the same part (normalisation removes the constant) but
      biased when only some rows of a group lack it, so the caller should drop such groups. An item
      with both parts missing is an error, as are two zero weights (every reward would be 0).
    - ``"judge_if_no_rule"``: the rule reward where the row has a reference answer, else the judge
      reward, unweighted (the RRM paper's post-training: verifiable prompts keep their exact reward,
      the judge covers the rest). The weights are validated but not used. An item with both parts
      missing is an error.
    """
    if len(rule) != len(judge):
        raise RankingRewardError(
            f"mix_rewards: rule has {len(rule)} rewards but judge has {len(judge)}; "
            "they must align, one of each per response"
        )
    _check_values("rule", rule)
    _check_values("judge", judge)
    _check_weight("rule_weight", rule_weight)
    _check_weight("judge_weight", judge_weight)
    if mode not in ("weighted", "judge_if_no_rule"):
        raise RankingRewardError(f"mix_rewards: mode must be 'weighted' or 'judge_if_no_rule', got {mode!r}")
    if mode == "weighted" and rule_weight == 0 and judge_weight == 0:
        raise RankingRewardError(
            "mix_rewards: rule_weight and judge_weight are both 0; every reward would be 0"
        )
    out: list[float] = []
    for i, (r, j) in enumerate(zip(rule, judge, strict=True)):
        if r is None and j is None:
            raise RankingRewardError(f"mix_rewards: item at index {i} has neither a rule nor a judge reward")
        if mode == "weighted":
            out.append(float(rule_weight * (r or 0.0) + judge_weight * (j or 0.0)))
        else:
            out.append(float(r) if r is not None else float(j))
    return out
