"""The judge's records and settings: pairs in, judgments and rankings out, and the counters and
settings of `rrm_ray.judge.service.JudgeService`. Plain dataclasses, picklable (they travel from the
judge actors to the driver)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from rrm_ray.config import JudgeConfig
from rrm_ray.judge.prompts import OVER_LENGTH, PROMPT_STYLES, resolve_prompt_style
from rrm_ray.judge.verdict import VERDICT_RULES

Side = Literal["a", "b"]


VERDICTS = ("generate", "choice", "choice_prob")  # judge.verdict
PRESENTATIONS = ("both_orders", "seeded_coin")  # judge.presentation


_FLIP: dict[Side | None, Side | None] = {"a": "b", "b": "a", None: None}


METHODS = ("knockout", "elo", "swiss")  # judge.method


class JudgeInputError(ValueError):
    """A pair or ranking item that is not made of strings, or an empty response list."""


@dataclass(frozen=True)
class JudgePair:
    query: str
    response_a: str
    response_b: str


@dataclass(frozen=True)
class JudgeTrace:
    """One judgment. ``order`` "ab" showed response a as Assistant 1; ``verdict`` is what the judge
    wrote (1/2, None if unparseable or timed out); ``winner`` is that verdict in pair terms."""

    vote: int
    order: Literal["ab", "ba"]
    text: str | None  # None: the batch deadline passed before this judgment finished
    verdict: Literal[1, 2] | None
    winner: Side | None


@dataclass
class PairJudgment:
    """The outcome of one pair. ``votes`` counts judge calls made for it in this call (0 when it
    came from the cache); ``error`` is set when it was not judged because its prompt does not fit
    the judge's context (``judge.over_length=skip``); ``truncated``: it was judged on the documented
    cut of its prompt (``judge.over_length=truncate``). ``prob_a``
    (verdict choice_prob): the swap-corrected P(a is better); wins_a / wins_b are then 1 / 0 for
    the side it favours, so ``decided`` and vote-based credit read it like one majority vote."""

    winner: Side | None
    wins_a: int
    wins_b: int
    votes: int
    calls_saved: int
    unparseable: int
    timed_out: int
    traces: list[JudgeTrace] = field(default_factory=list)
    from_cache: bool = False
    truncated: bool = False
    error: str | None = None
    prob_a: float | None = None

    @property
    def decided(self) -> bool:
        """The votes preferred one side; otherwise ``winner`` came from the tie rule (or is None)."""
        return self.wins_a != self.wins_b


@dataclass
class MatchRecord:
    """One tournament comparison: responses ``a`` and ``b`` of the query, the outcome the tournament
    received (None: undecided, resolved by the tournament's own rule) and the full judgment."""

    round: int
    a: int
    b: int
    outcome: Side | None
    judgment: PairJudgment


@dataclass
class RankResult:
    """Responses of one query ranked by a tournament. ``scores``: rounds won (knockout), ratings
    (elo) or share of games won (swiss); ``rewards``: ``knockout_rewards`` / ``elo_rewards`` /
    ``swiss_rewards``; ``bracket`` (knockout) or ``ratings`` (elo) is set, the other is None; swiss
    sets both."""

    method: str
    ranking: list[int]
    winner: int
    scores: list[float]
    rewards: list[float]
    bracket: list[list[dict]] | None
    ratings: list[float] | None
    comparisons: list[MatchRecord]

    @property
    def traces(self) -> list[dict[str, Any]]:
        """Every judgment of the tournament as flat rows (for MLflow tables)."""
        return [
            {"round": m.round, "a": m.a, "b": m.b, **dataclasses.asdict(t)}
            for m in self.comparisons
            for t in m.judgment.traces
        ]


@dataclass
class JudgeStats:
    """Counters since the last reset. ``judge_calls`` counts sampled judgments, ``waves`` engine
    batches; ``comparisons`` counts every pair asked for, including cached and identical ones;
    ``prompts_judged`` counts the queries ``rank`` / ``best_of_n`` ranked, ``rank_seconds`` the wall
    time spent in those calls (the judge's cost per policy prompt, see ``judge_rates``).
    ``over_length_pairs``: pairs whose prompt did not fit ``judge.max_prompt_tokens``, of which
    ``truncated`` were judged on the documented cut and ``skipped`` were not judged (undecided)."""

    comparisons: int = 0
    judge_calls: int = 0
    waves: int = 0
    calls_saved: int = 0
    cache_hits: int = 0
    unparseable: int = 0
    timed_out: int = 0
    over_length_pairs: int = 0
    truncated: int = 0
    skipped: int = 0
    identical: int = 0
    prompts_judged: int = 0
    rank_seconds: float = 0.0


def judge_rates(totals: dict[str, float]) -> dict[str, float]:
    """``totals`` (judge counters summed over engines) plus the ratios that cannot be summed:

    - ``prefix_cache_hit_rate``: prefix_cached_tokens / prefill_tokens, the share of prompt tokens
      vLLM's prefix cache supplied instead of computing them;
    - ``tokens_per_prompt`` / ``seconds_per_prompt``: generated_tokens and rank_seconds per ranked
      query (seconds are each engine's own, summed over engines). Counters span every call since
      the last reset, so they are per policy prompt when only ``rank`` ran, as in a GRPO step.

    A ratio whose denominator is 0 is left out, not reported as 0.
    """
    out = dict(totals)
    if totals.get("prefill_tokens", 0) > 0:
        out["prefix_cache_hit_rate"] = totals.get("prefix_cached_tokens", 0) / totals["prefill_tokens"]
    if totals.get("prompts_judged", 0) > 0:
        out["tokens_per_prompt"] = totals.get("generated_tokens", 0) / totals["prompts_judged"]
        out["seconds_per_prompt"] = totals.get("rank_seconds", 0.0) / totals["prompts_judged"]
    return out


@dataclass(frozen=True)
class JudgeSettings:
    """What the service needs from ``JudgeConfig``; ``cache_key`` names what else changes a verdict
    (judge model and checkpoint, sampling parameters) and goes into every cache key."""

    mode: Literal["rrm", "direct"] = "rrm"
    verdict: Literal["generate", "choice", "choice_prob"] = "generate"
    # "auto" is resolved by mode on construction (rrm_release for rrm, mtbench for direct)
    prompt_style: Literal["auto", "rrm_release", "mtbench", "compact"] = "auto"
    verdict_rule: Literal["release", "lenient"] = "release"
    presentation: Literal["both_orders", "seeded_coin"] = "both_orders"
    votes: int = 1
    adaptive_votes: bool = True
    tie_rule: Literal["random", "first", "none"] = "random"
    method: Literal["knockout", "elo", "swiss"] = "knockout"
    rating: Literal["bradley_terry", "elo"] = "bradley_terry"
    k_factor: float = 32.0
    swiss_rounds: int | None = None  # None: ceil(log2 n); capped at swiss_max_rounds(n)
    max_prompt_tokens: int = 4096
    over_length: Literal["truncate", "skip", "error"] = "error"
    seed: int = 0
    cache_key: str = ""
    cache_max_entries: int | None = 100_000

    def __post_init__(self) -> None:
        if self.mode in ("rrm", "direct") and self.prompt_style == "auto":
            object.__setattr__(self, "prompt_style", resolve_prompt_style("auto", self.mode))
        for name, allowed in (
            ("mode", ("rrm", "direct")),
            ("verdict", VERDICTS),
            ("prompt_style", PROMPT_STYLES),
            ("verdict_rule", VERDICT_RULES),
            ("presentation", PRESENTATIONS),
            ("tie_rule", ("random", "first", "none")),
            ("method", METHODS),
            ("rating", ("bradley_terry", "elo")),
            ("over_length", OVER_LENGTH),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"judge settings: {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if not isinstance(self.votes, int) or self.votes < 1:
            raise ValueError(f"judge settings: votes must be an int >= 1, got {self.votes!r}")
        rounds = self.swiss_rounds
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"judge settings: swiss_rounds must be None or an int >= 1, got {rounds!r}")
        if self.verdict in ("choice", "choice_prob") and self.mode != "direct":
            raise ValueError(
                f"judge settings: verdict {self.verdict!r} needs mode 'direct' (an RRM reasons first)"
            )
        if self.verdict == "choice_prob" and self.votes != 1:
            raise ValueError(
                "judge settings: verdict 'choice_prob' scores both orders once, so votes must be 1, "
                f"got {self.votes}"
            )
        if self.verdict == "choice_prob" and self.presentation != "both_orders":
            raise ValueError(
                "judge settings: verdict 'choice_prob' scores both orders: presentation 'both_orders'"
            )
        if self.prompt_style == "rrm_release" and self.mode != "rrm":
            raise ValueError("judge settings: prompt_style 'rrm_release' needs mode 'rrm'")

    @classmethod
    def from_config(cls, judge: JudgeConfig, seed: int, cache_key: str = "") -> JudgeSettings:
        """From the job's ``JudgeConfig``."""

        def get(key: str) -> Any:
            return getattr(judge, key)

        names = (
            "mode",
            "verdict",
            "verdict_rule",
            "presentation",
            "votes",
            "adaptive_votes",
            "tie_rule",
            "method",
            "rating",
            "k_factor",
            "swiss_rounds",
        )
        return cls(
            **{n: get(n) for n in names},
            prompt_style=judge.prompt_style,
            max_prompt_tokens=get("max_prompt_tokens"),
            over_length=get("over_length"),
            seed=seed,
            cache_key=cache_key,
            cache_max_entries=get("cache_max_entries"),
        )


def judge_cache_key(model: str, judge: JudgeConfig) -> str:
    """What changes a verdict besides ``JudgeSettings``: the judge model and its decoding."""
    return (
        f"{model}|t={judge.temperature:g}|p={judge.top_p:g}|max={judge.max_new_tokens}"
        f"|think={judge.think_budget}"
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shown_flipped(response_a: str, response_b: str, seed: int = 0) -> bool:
    """Whether the canonical orientation shows response b first: a coin of the unordered pair and the
    seed (``trainer.seed``), so the same seed shows every pair alike and another seed draws anew."""
    low, high = sorted((_digest(response_a), _digest(response_b)))
    high_first = hashlib.sha256(f"{seed}/{low}{high}".encode()).digest()[0] & 1 == 1
    return (high if high_first else low) == _digest(response_b) != _digest(response_a)


def vote_swapped(vote: int, presentation: str) -> bool:
    """Whether vote ``vote`` shows the pair against its canonical orientation: ``both_orders``
    alternates (odd votes swapped), ``seeded_coin`` shows every vote in the coin's orientation."""
    return presentation == "both_orders" and vote % 2 == 1


def check_str(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise JudgeInputError(f"{where}: expected a string, got {type(value).__name__}")


def as_pair(obj: Any, i: int) -> JudgePair:
    """A ``JudgePair`` from a JudgePair, a (query, a, b) tuple or a dict with those field names."""
    if isinstance(obj, JudgePair):
        pair = obj
    elif isinstance(obj, dict):
        missing = [k for k in ("query", "response_a", "response_b") if k not in obj]
        if missing:
            raise JudgeInputError(f"pair {i}: missing field '{missing[0]}'")
        pair = JudgePair(obj["query"], obj["response_a"], obj["response_b"])
    elif isinstance(obj, tuple | list) and len(obj) == 3:
        pair = JudgePair(*obj)
    else:
        raise JudgeInputError(f"pair {i}: expected a JudgePair, (query, a, b) or a dict, got {obj!r:.80}")
    for name in ("query", "response_a", "response_b"):
        check_str(getattr(pair, name), f"pair {i}: field '{name}'")
    return pair


def flip_judgment(j: PairJudgment) -> PairJudgment:
    """The same judgment seen as (b, a)."""
    traces = [
        dataclasses.replace(t, order="ba" if t.order == "ab" else "ab", winner=_FLIP[t.winner])
        for t in j.traces
    ]
    prob_a = None if j.prob_a is None else 1.0 - j.prob_a
    return dataclasses.replace(
        j, winner=_FLIP[j.winner], wins_a=j.wins_b, wins_b=j.wins_a, traces=traces, prob_a=prob_a
    )
