"""Which tournament buys the most accuracy per judge call: a pure, seeded simulation, no model.

The simulation drives the REAL code of a run, only the judge is made up: tournaments are built by
``rrm_ray.judge.service.new_tournament`` from ``JudgeSettings`` (as ``JudgeService.rank`` builds
them), every match is voted by ``rrm_ray.judge.voting.PairVote`` (both orders, adaptive stop, tie
rule), and a finished tournament becomes a ranking and per-response rewards through
``rrm_ray.judge.service.rank_result`` (``ranking_rewards``), which then get the trainer's GRPO
group normalisation. The table therefore measures our code, not a re-implementation of it.

The world, per trial: n responses with i.i.d. standard normal qualities q_i, in random order (so
index order, which breaks ties in the rankings, carries no information). The judge sees a pair
shown as (first, second) and answers:

- with probability ``b`` (position bias): "Assistant 1", whatever the responses;
- otherwise the truly better response with probability ``p``, the worse one with 1 - p.

So it is right with probability b + (1-b)p when the better response is shown first, (1-b)p when it is
shown second, b/2 + (1-b)p on average, independent of the quality gap. As in ``JudgeService``, each
pair is shown in an orientation that is a coin flip per pair (there: a bit of the sha256 of the
pair, `shown_flipped`), and vote i of k is shown swapped when i is odd.

Metrics per (method, n, p), averaged over trials:

- ``p_best``: the ranking's top response is the truly best one;
- ``kendall_tau``: Kendall's tau-b between the rewards and q (tau-b because a knockout's rewards tie
  everyone knocked out in the same round: a tie is no evidence, neither concordant nor discordant);
- ``advantage_corr``: Pearson correlation between the GRPO advantages (the rewards, normalised per
  group as ``rrm_ray.algo.group_advantages`` does) and q; a flat group has zero advantages and counts
  0 (the trainer learns nothing from it);
- ``judge_calls``: sampled judgments per group (what an RRM engine pays for), ``rounds``: tournament
  waves (each one engine batch, so latency).

Seeds are strings hashed by ``random.Random`` (sha512, not PYTHONHASHSEED), so the table is the same on
every run and machine. Qualities depend on (seed, n, p, trial) only: every method sees the same
groups (common random numbers), so differences between methods are not sampling noise in the groups.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rrm_ray.judge.records import METHODS, JudgeSettings
from rrm_ray.judge.service import new_tournament, rank_result
from rrm_ray.judge.tournament import Match, Outcome, run_tournament
from rrm_ray.judge.voting import PairVote, translate

_GROUP_EPS = 1e-6  # rrm_ray.algo.group_advantages' default eps


class SimulationError(ValueError):
    """A simulation parameter out of range (names the parameter and what is allowed)."""


@dataclass(frozen=True)
class SimJudge:
    """The made-up judge: accuracy ``p`` when unbiased, position bias ``b`` (see the module docstring)."""

    accuracy: float
    position_bias: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise SimulationError(f"simulation: accuracy p must be in [0, 1], got {self.accuracy!r}")
        if not 0.0 <= self.position_bias <= 1.0:
            raise SimulationError(
                f"simulation: position_bias b must be in [0, 1], got {self.position_bias!r}"
            )

    def verdict(self, q_first: float, q_second: float, rng: random.Random) -> Literal[1, 2]:
        """1 or 2: which of the two shown responses the judge calls better."""
        if rng.random() < self.position_bias:
            return 1
        right = rng.random() < self.accuracy
        return 1 if (q_first > q_second) == right else 2


@dataclass(frozen=True)
class SimConfig:
    """One table: every method x group size x judge accuracy, ``trials`` groups per cell."""

    methods: tuple[str, ...] = ("knockout", "swiss", "elo")
    sizes: tuple[int, ...] = (4, 8, 16)
    accuracies: tuple[float, ...] = (0.6, 0.75, 0.9)
    position_bias: float = 0.1
    votes: int = 1  # judge.votes
    adaptive_votes: bool = True  # judge.adaptive_votes
    swiss_rounds: int | None = None  # judge.swiss_rounds (None: ceil(log2 n))
    trials: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in METHODS:
                raise SimulationError(f"simulation: method must be one of {METHODS}, got {m!r}")
        for n in self.sizes:
            if isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise SimulationError(f"simulation: group sizes must be ints >= 2, got {n!r}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise SimulationError(f"simulation: trials must be an int >= 1, got {self.trials!r}")
        for p in self.accuracies:
            SimJudge(p, self.position_bias)  # validates both

    def settings(self, method: str) -> JudgeSettings:
        """The judge settings a real run with this method would have (random tie rule, as default)."""
        return JudgeSettings(
            method=method,  # type: ignore[arg-type]
            votes=self.votes,
            adaptive_votes=self.adaptive_votes,
            swiss_rounds=self.swiss_rounds,
            seed=self.seed,
        )


@dataclass(frozen=True)
class CellResult:
    """The metrics of one (method, n, p) cell; see the module docstring."""

    method: str
    n: int
    accuracy: float
    trials: int
    p_best: float
    kendall_tau: float
    advantage_corr: float
    judge_calls: float
    rounds: float


def group_advantages(rewards: Sequence[float], eps: float = _GROUP_EPS) -> list[float]:
    """One group's GRPO advantages, as ``rrm_ray.algo.group_advantages`` computes them (r - mean) /
    (sample std + eps), exactly 0 for a constant group; pure Python so the simulation needs no torch
    (tests/unit/test_simulation.py checks the two agree)."""
    n = len(rewards)
    mean = sum(rewards) / n
    if all(r == rewards[0] for r in rewards) or n < 2:
        return [0.0] * n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
    return [(r - mean) / (std + eps) for r in rewards]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (no signal to correlate)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0.0 or syy <= 0.0:
        return 0.0
    return sxy / math.sqrt(sxx * syy)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - ties in x)(pairs - ties in y));
    0.0 when either side is constant."""
    n = len(x)
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                tie_x += 1
                tie_y += 1
            elif dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    pairs = n * (n - 1) // 2
    denom = math.sqrt((pairs - tie_x) * (pairs - tie_y))
    return (conc - disc) / denom if denom > 0 else 0.0


def judge_match(
    m: Match,
    q: Sequence[float],
    judge: SimJudge,
    settings: JudgeSettings,
    rng: random.Random,
    pair_index: int,
) -> tuple[Outcome, int]:
    """Vote one match as ``JudgeService.compare`` does; returns (outcome for the tournament, calls).

    The pair is shown in a coin-flip orientation (the service's `shown_flipped`); an undecided vote
    (a split) goes to the tournament as None, like the service does.
    """
    flipped = rng.random() < 0.5
    first, second = (m.b, m.a) if flipped else (m.a, m.b)
    pv = PairVote(settings.votes, settings.adaptive_votes, settings.tie_rule, settings.seed, pair_index)
    while wave := pv.next_presentations():
        for pres in wave:
            x, y = (second, first) if pres.swapped else (first, second)
            pv.record(pres.vote_index, translate(pres, judge.verdict(q[x], q[y], rng)))
    if pv.wins_a == pv.wins_b:
        return None, pv.calls_made
    first_won = pv.wins_a > pv.wins_b
    return ("b" if first_won else "a") if flipped else ("a" if first_won else "b"), pv.calls_made


@dataclass(frozen=True)
class TrialResult:
    best: bool
    kendall_tau: float
    advantage_corr: float
    judge_calls: int
    rounds: int


def run_trial(
    method: str, q: Sequence[float], judge: SimJudge, settings: JudgeSettings, seed: str
) -> TrialResult:
    """One group: a tournament over responses of qualities ``q`` with the simulated judge."""
    rng = random.Random(f"judge/{seed}")
    tournament_seed = random.Random(f"tournament/{seed}").getrandbits(31)
    t = new_tournament(settings, method, len(q), tournament_seed)
    calls = rounds = matches_seen = 0

    def compare(matches: list[Match]) -> list[Outcome]:
        nonlocal calls, rounds, matches_seen
        rounds += 1
        out = []
        for m in matches:
            outcome, used = judge_match(m, q, judge, settings, rng, pair_index=matches_seen)
            matches_seen += 1
            calls += used
            out.append(outcome)
        return out

    result = rank_result(run_tournament(t, compare), [])
    best = max(range(len(q)), key=lambda i: q[i])
    return TrialResult(
        best=result.winner == best,
        kendall_tau=kendall_tau_b(result.rewards, q),
        advantage_corr=pearson(group_advantages(result.rewards), q),
        judge_calls=calls,
        rounds=rounds,
    )


def qualities(cfg: SimConfig, n: int, accuracy: float, trial: int) -> list[float]:
    """The true qualities of one group: the same for every method (common random numbers)."""
    rng = random.Random(f"q/{cfg.seed}/{n}/{accuracy}/{trial}")
    return [rng.gauss(0.0, 1.0) for _ in range(n)]


def simulate_cell(cfg: SimConfig, method: str, n: int, accuracy: float) -> CellResult:
    """``cfg.trials`` groups of size ``n`` ranked by ``method`` with a judge of accuracy ``accuracy``."""
    judge = SimJudge(accuracy, cfg.position_bias)
    settings = cfg.settings(method)
    rows = [
        run_trial(
            method, qualities(cfg, n, accuracy, k), judge, settings, f"{cfg.seed}/{method}/{n}/{accuracy}/{k}"
        )
        for k in range(cfg.trials)
    ]
    count = len(rows)
    return CellResult(
        method=method,
        n=n,
        accuracy=accuracy,
        trials=count,
        p_best=sum(r.best for r in rows) / count,
        kendall_tau=sum(r.kendall_tau for r in rows) / count,
        advantage_corr=sum(r.advantage_corr for r in rows) / count,
        judge_calls=sum(r.judge_calls for r in rows) / count,
        rounds=sum(r.rounds for r in rows) / count,
    )


def simulate(cfg: SimConfig) -> list[CellResult]:
    """Every cell of the table, ordered by n, then p, then method (as listed in ``cfg.methods``)."""
    return [
        simulate_cell(cfg, method, n, p) for n in cfg.sizes for p in cfg.accuracies for method in cfg.methods
    ]


def markdown_table(cells: Sequence[CellResult]) -> str:
    """The cells as a markdown table, one row per cell."""
    lines = [
        "| n | p | method | judge calls | rounds | P(best) | Kendall tau-b | advantage corr |",
        "|---:|---:|:---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.n} | {c.accuracy:g} | {c.method} | {c.judge_calls:.1f} | {c.rounds:g} | "
            f"{c.p_best:.3f} | {c.kendall_tau:.3f} | {c.advantage_corr:.3f} |"
        )
    return "\n".join(lines)
