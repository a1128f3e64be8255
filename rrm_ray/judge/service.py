"""The judge as a service: pairs in, verdicts out, every voting wave ONE engine batch.

Pure logic around an engine callable, so the same code runs inside the Ray judge actor (a vLLM
engine) and in unit tests (a scripted fake):

    generate(prompts, n) -> for each prompt, n sampled texts, or None when its batch deadline hit

    service = JudgeService(generate, tokenizer, JudgeSettings(votes=3))
    service.compare([JudgePair(query, a, b), ...])    # PairJudgment per pair, with reasoning traces
    service.rank([(query, [r0, r1, ...]), ...])        # knockout / round-robin / swiss, rewards
    service.best_of_n([(query, responses), ...])       # index of the best response per query

How a batch of pairs is judged (``compare``):

1. identical responses need no judge (a tie); the cache answers pairs judged before; a pair that
   occurs twice in one batch is judged once;
2. each remaining pair is shown in a canonical orientation, a coin of the unordered pair (a bit of
   the sha256 of both responses' digests, smaller first). The cache and the traces then do not
   depend on the order the caller listed the pair in, and with one vote the judge's position bias
   falls on a pseudo-random side per pair: neither on the caller's first response, nor (as a total
   order such as "smaller digest first" would) on the same response in every match of a group;
3. voting follows ``rrm_ray.judge.voting.PairVote`` (vote i is shown swapped when i is odd); each
   wave gathers the presentations ALL pairs still need into one ``generate`` call;
4. a vote whose text has no parseable verdict, or that timed out, is no vote for either side;
   results with a time-out are not cached (a time-out says nothing about the pair).

``verdict="choice_prob"`` (direct mode) replaces step 3 by ONE wave of two presentations per pair,
one per order, each scored by a second engine callable instead of sampled:

    choice_probs(prompts) -> for each prompt, P("Assistant 1") renormalised over {1, 2}, or None

and the pair's outcome is ``voting.prob_winner`` of the swap-corrected mean (a wins if mean
P(a) > 0.5; exactly 0.5, or an order that timed out, goes to the tie rule).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rrm_ray.judge.cache import CachedComparison, ComparisonCache
from rrm_ray.judge.prompts import JudgePrompt, PromptTooLongError, complete_choice, fit_pair_to_context
from rrm_ray.judge.ranking_rewards import elo_rewards, knockout_rewards, swiss_rewards
from rrm_ray.judge.tournament import (
    Knockout,
    Match,
    RoundRobin,
    Swiss,
    Tournament,
    run_many,
    swiss_max_rounds,
)
from rrm_ray.judge.verdict import (
    choice_verdict,
    describe_choice_probability,
    parse_choice_probability,
    parse_verdict,
)
from rrm_ray.judge.voting import PairVote, Presentation, prob_winner, swap_corrected_prob_a, translate

Side = Literal["a", "b"]
GenerateFn = Callable[[list[str], int], list[list[str] | None]]
ChoiceProbFn = Callable[[list[str]], list[float | None]]
VERDICTS = ("generate", "choice", "choice_prob")  # judge.verdict
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
    came from the cache); ``error`` is set when its prompt was rejected as too long. ``prob_a``
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
    time spent in those calls (the judge's cost per policy prompt, see ``judge_rates``)."""

    comparisons: int = 0
    judge_calls: int = 0
    waves: int = 0
    calls_saved: int = 0
    cache_hits: int = 0
    unparseable: int = 0
    timed_out: int = 0
    rejected: int = 0
    truncated: int = 0
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
    prompt_style: Literal["full", "compact"] = "full"
    votes: int = 1
    adaptive_votes: bool = True
    tie_rule: Literal["random", "first", "none"] = "random"
    method: Literal["knockout", "elo", "swiss"] = "knockout"
    rating: Literal["bradley_terry", "elo"] = "bradley_terry"
    k_factor: float = 32.0
    swiss_rounds: int | None = None  # None: ceil(log2 n); capped at swiss_max_rounds(n)
    max_prompt_tokens: int = 4096
    over_length: Literal["truncate", "reject"] = "truncate"
    seed: int = 0
    cache_key: str = ""
    cache_max_entries: int | None = 100_000

    def __post_init__(self) -> None:
        for name, allowed in (
            ("mode", ("rrm", "direct")),
            ("verdict", VERDICTS),
            ("prompt_style", ("full", "compact")),
            ("tie_rule", ("random", "first", "none")),
            ("method", METHODS),
            ("rating", ("bradley_terry", "elo")),
            ("over_length", ("truncate", "reject")),
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

    @classmethod
    def from_config(cls, judge: Any, seed: int, cache_key: str = "") -> JudgeSettings:
        """From a ``JudgeConfig`` (or a dict of its fields, as sent to an actor)."""
        get = judge.get if isinstance(judge, dict) else lambda k: getattr(judge, k)
        names = (
            "mode",
            "verdict",
            "prompt_style",
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
            max_prompt_tokens=get("max_prompt_tokens"),
            over_length=get("over_length"),
            seed=seed,
            cache_key=cache_key,
            cache_max_entries=get("cache_max_entries"),
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shown_flipped(response_a: str, response_b: str) -> bool:
    """Whether the canonical orientation shows response b first: a coin of the unordered pair."""
    low, high = sorted((_digest(response_a), _digest(response_b)))
    high_first = hashlib.sha256(f"{low}{high}".encode()).digest()[0] & 1 == 1
    return (high if high_first else low) == _digest(response_b) != _digest(response_a)


def _check_str(value: object, where: str) -> None:
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
        _check_str(getattr(pair, name), f"pair {i}: field '{name}'")
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


class JudgeService:
    """Pairwise judging, tournaments and best-of-n on top of a batched ``generate`` callable."""

    def __init__(
        self,
        generate: GenerateFn,
        tokenizer: Any,
        settings: JudgeSettings,
        choice_probs: ChoiceProbFn | None = None,
    ) -> None:
        if settings.verdict == "choice_prob" and choice_probs is None:
            raise ValueError("JudgeService: verdict 'choice_prob' needs a choice_probs engine callable")
        self.generate = generate
        self.choice_probs = choice_probs
        self.tokenizer = tokenizer
        self.settings = settings
        self.cache = ComparisonCache(settings.cache_max_entries)
        self.stats = JudgeStats()

    def reset_stats(self) -> JudgeStats:
        """Return the counters so far and start new ones."""
        old, self.stats = self.stats, JudgeStats()
        return old

    def _settings_key(self, votes: int) -> str:
        s = self.settings
        return (
            f"{s.cache_key}|mode={s.mode}|verdict={s.verdict}|k={votes}|adaptive={s.adaptive_votes}"
            f"|tie={s.tie_rule}|prompt<={s.max_prompt_tokens}|{s.over_length}"
        )

    # -- pairs -------------------------------------------------------------------------------------
    def compare(
        self, pairs: Sequence[JudgePair | tuple | dict], votes: int | None = None
    ) -> list[PairJudgment]:
        """Judge every pair (see the module docstring); one ``generate`` call per voting wave."""
        k = self.settings.votes if votes is None else votes
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"compare: votes must be an int >= 1, got {k!r}")
        if self.settings.verdict == "choice_prob" and k != 1:
            raise ValueError(
                f"compare: verdict 'choice_prob' scores both orders once instead of sampling votes, so "
                f"votes must be 1, got {k}"
            )
        pairs = [as_pair(p, i) for i, p in enumerate(pairs)]
        key = self._settings_key(k)
        results: list[PairJudgment | None] = [None] * len(pairs)
        first_of: dict[tuple[str, str, str], int] = {}  # canonical pair -> first index in this batch
        canon: list[tuple[str, str, bool]] = []  # (first shown, second shown, flipped vs the caller)
        duplicates: list[int] = []
        todo: list[int] = []
        for i, p in enumerate(pairs):
            self.stats.comparisons += 1
            flipped = shown_flipped(p.response_a, p.response_b)
            first, second = (p.response_b, p.response_a) if flipped else (p.response_a, p.response_b)
            canon.append((first, second, flipped))
            if p.response_a == p.response_b:
                self.stats.identical += 1
                winner = PairVote(
                    k, self.settings.adaptive_votes, self.settings.tie_rule, self.settings.seed, i
                )
                results[i] = PairJudgment(winner.winner(), 0, 0, 0, 0, 0, 0)
                continue
            ident = (p.query, first, second)
            if ident in first_of:
                duplicates.append(i)
                continue
            first_of[ident] = i
            hit = self.cache.get(p.query, first, second, key)
            if hit is not None:
                self.stats.cache_hits += 1
                results[i] = self._from_cache(hit, flipped)
            else:
                todo.append(i)

        if self.settings.verdict == "choice_prob":
            judged = self._score_choices(pairs, canon, todo)
        else:
            judged = self._vote(pairs, canon, todo, k)
        for i, j in judged.items():
            if j.error is None and j.timed_out == 0:
                first, second, _ = canon[i]
                texts = [t.text or "" for t in j.traces]
                self.cache.put(
                    pairs[i].query, first, second, key, CachedComparison(j.winner, j.wins_a, j.wins_b, texts)
                )
            results[i] = flip_judgment(j) if canon[i][2] else j
        for i in duplicates:
            src = first_of[(pairs[i].query, canon[i][0], canon[i][1])]
            j = results[src]
            assert j is not None
            same = canon[i][2] == canon[src][2]
            copy = j if same else flip_judgment(j)
            results[i] = dataclasses.replace(copy, votes=0, calls_saved=0, from_cache=True)
            self.stats.cache_hits += 1
        missing = [i for i, r in enumerate(results) if r is None]
        assert not missing, f"compare: no judgment for pairs {missing}"
        if (
            self.settings.tie_rule == "first"
        ):  # undecided: the caller's first response, whichever was shown first
            results = [
                r if r.decided or r.winner is None else dataclasses.replace(r, winner="a") for r in results
            ]
        return results  # type: ignore[return-value]

    def _from_cache(self, hit: CachedComparison, flipped: bool) -> PairJudgment:
        """Rebuild a judgment from the cache (stored in canonical orientation, texts in vote order)."""
        traces = []
        for v, text in enumerate(hit.traces):
            p = Presentation(0, v, swapped=v % 2 == 1)
            verdict = self._parse(text)
            won = translate(p, verdict)
            side: Side | None = None if won is None else ("a" if won else "b")
            traces.append(JudgeTrace(v, "ba" if p.swapped else "ab", text, verdict, side))
        unparseable = sum(t.verdict is None for t in traces)
        prob_a = None
        if self.settings.verdict == "choice_prob":
            unparseable = 0  # a probability of exactly 0.5 names neither assistant but is a judgment
            p_ab, p_ba = (parse_choice_probability(t) for t in hit.traces)  # cached: both orders scored
            assert p_ab is not None and p_ba is not None, f"cached choice probabilities {hit.traces!r}"
            prob_a = swap_corrected_prob_a(p_ab, p_ba)
        j = PairJudgment(
            hit.winner, hit.wins_a, hit.wins_b, 0, 0, unparseable, 0, traces, from_cache=True, prob_a=prob_a
        )
        return flip_judgment(j) if flipped else j

    def _render(self, i: int, query: str, first: str, second: str) -> JudgePrompt:
        s = self.settings
        return fit_pair_to_context(
            self.tokenizer,
            query,
            first,
            second,
            s.max_prompt_tokens,
            s.mode,
            s.over_length,
            where=f"pair {i}: ",
            verdict=s.verdict,
            style=s.prompt_style,
        )

    def _parse(self, text: str) -> Literal[1, 2] | None:
        """The verdict of one judge output (a forced choice is first completed to its box; a choice
        probability names the more likely assistant)."""
        if self.settings.verdict == "choice_prob":
            p = parse_choice_probability(text)
            return None if p is None else choice_verdict(p)
        if self.settings.verdict == "choice":
            text = complete_choice(text)
        return parse_verdict(text, require_think_close=self.settings.mode == "rrm")

    def _vote(
        self, pairs: Sequence[JudgePair], canon: list[tuple[str, str, bool]], todo: list[int], k: int
    ) -> dict[int, PairJudgment]:
        """Vote on the pairs ``todo`` in canonical orientation; judgments in that orientation."""
        s = self.settings
        prompts, truncated, out = self._render_both(pairs, canon, todo, both=k > 1)
        state = {i: PairVote(k, s.adaptive_votes, s.tie_rule, s.seed, pair_index=i) for i in truncated}
        traces: dict[int, list[JudgeTrace]] = {i: [] for i in state}
        while True:
            wave = [p for pv in state.values() for p in pv.next_presentations()]
            if not wave:
                break
            texts = self._run_wave([prompts[(p.pair_index, p.swapped)] for p in wave])
            for p, text in zip(wave, texts, strict=True):
                verdict = None if text is None else self._parse(text)
                won = translate(p, verdict)
                state[p.pair_index].record(p.vote_index, won)
                side: Side | None = None if won is None else ("a" if won else "b")
                trace = JudgeTrace(p.vote_index, "ba" if p.swapped else "ab", text, verdict, side)
                traces[p.pair_index].append(trace)
                self.stats.timed_out += text is None
                self.stats.unparseable += text is not None and verdict is None
        for i, pv in state.items():
            ts = sorted(traces[i], key=lambda t: t.vote)
            timed_out = sum(t.text is None for t in ts)
            self.stats.calls_saved += pv.calls_saved
            out[i] = PairJudgment(
                winner=pv.winner(),
                wins_a=pv.wins_a,
                wins_b=pv.wins_b,
                votes=pv.calls_made,
                calls_saved=pv.calls_saved,
                unparseable=pv.invalid - timed_out,
                timed_out=timed_out,
                traces=ts,
                truncated=truncated[i],
            )
        return out

    def _render_both(
        self, pairs: Sequence[JudgePair], canon: list[tuple[str, str, bool]], todo: list[int], both: bool
    ) -> tuple[dict[tuple[int, bool], str], dict[int, bool], dict[int, PairJudgment]]:
        """Prompts of the pairs ``todo`` by (pair, swapped) (the swapped one only if ``both``, else
        the shown one again), whether either was truncated, and judgments of rejected pairs."""
        prompts: dict[tuple[int, bool], str] = {}
        truncated: dict[int, bool] = {}
        rejected: dict[int, PairJudgment] = {}
        for i in todo:
            first, second, _ = canon[i]
            try:
                shown = self._render(i, pairs[i].query, first, second)
                swapped = self._render(i, pairs[i].query, second, first) if both else shown
            except PromptTooLongError as exc:
                self.stats.rejected += 1
                rejected[i] = PairJudgment(None, 0, 0, 0, 0, 0, 0, error=str(exc))
                continue
            prompts[(i, False)], prompts[(i, True)] = shown.text, swapped.text
            truncated[i] = shown.truncated or swapped.truncated
            self.stats.truncated += truncated[i]
        return prompts, truncated, rejected

    def _score_choices(
        self, pairs: Sequence[JudgePair], canon: list[tuple[str, str, bool]], todo: list[int]
    ) -> dict[int, PairJudgment]:
        """verdict choice_prob: both orders of every pair ``todo`` in ONE ``choice_probs`` call (one
        forward each), outcome by ``prob_winner``; judgments in canonical orientation."""
        s = self.settings
        assert self.choice_probs is not None
        prompts, truncated, out = self._render_both(pairs, canon, todo, both=True)
        keys = [(i, swapped) for i in truncated for swapped in (False, True)]
        probs = list(self.choice_probs([prompts[key] for key in keys])) if keys else []
        if len(probs) != len(keys):
            raise ValueError(f"judge choice_probs returned {len(probs)} results for {len(keys)} prompts")
        self.stats.waves += bool(keys)
        self.stats.judge_calls += len(keys)
        by_key = dict(zip(keys, probs, strict=True))
        for i in truncated:
            traces = []
            for vote, swapped in enumerate((False, True)):
                p = by_key[(i, swapped)]
                if p is not None and not 0.0 <= p <= 1.0:
                    raise ValueError(f"judge choice_probs: pair {i}: expected a probability, got {p!r}")
                verdict = None if p is None else choice_verdict(p)
                won = translate(Presentation(i, vote, swapped), verdict)
                side: Side | None = None if won is None else ("a" if won else "b")
                text = None if p is None else describe_choice_probability(p)
                traces.append(JudgeTrace(vote, "ba" if swapped else "ab", text, verdict, side))
            p_ab, p_ba = by_key[(i, False)], by_key[(i, True)]
            prob_a = None if p_ab is None or p_ba is None else swap_corrected_prob_a(p_ab, p_ba)
            timed_out = sum(t.text is None for t in traces)
            self.stats.timed_out += timed_out
            out[i] = PairJudgment(
                winner=prob_winner(prob_a, s.tie_rule, s.seed, i),
                wins_a=int(prob_a is not None and prob_a > 0.5),
                wins_b=int(prob_a is not None and prob_a < 0.5),
                votes=2,
                calls_saved=0,
                unparseable=0,
                timed_out=timed_out,
                traces=traces,
                truncated=truncated[i],
                prob_a=prob_a,
            )
        return out

    def _run_wave(self, prompts: list[str]) -> list[str | None]:
        """One ``generate`` call for the whole wave. When every distinct prompt is asked the same
        number of times c (e.g. k votes in both orders), it is sent once with n=c, so the engine
        shares the prompt's prefill; otherwise every presentation is its own prompt with n=1."""
        slots: dict[str, list[int]] = {}
        for pos, text in enumerate(prompts):
            slots.setdefault(text, []).append(pos)
        counts = {len(v) for v in slots.values()}
        if len(counts) == 1 and len(slots) < len(prompts):
            unique, n = list(slots), counts.pop()
        else:
            unique, n = prompts, 1
        outputs = self.generate(unique, n)
        self.stats.waves += 1
        self.stats.judge_calls += len(prompts)
        if len(outputs) != len(unique):
            raise ValueError(f"judge generate returned {len(outputs)} results for {len(unique)} prompts")
        texts: list[str | None] = [None] * len(prompts)
        for u, (prompt, samples) in enumerate(zip(unique, outputs, strict=True)):
            if samples is not None and (len(samples) != n or not all(isinstance(t, str) for t in samples)):
                raise ValueError(
                    f"judge generate: prompt {u}: expected None or {n} strings, got {samples!r:.200}"
                )
            positions = slots[prompt] if n > 1 else [u]
            for m, pos in enumerate(positions):
                texts[pos] = None if samples is None else samples[m]
        return texts

    # -- many responses per query ----------------------------------------------------------------------
    def rank(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        method: str | None = None,
        votes: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> list[RankResult]:
        """Rank each query's responses; all tournaments advance together, one ``compare`` per wave.

        A match the votes leave undecided (split or no parseable verdict) goes to the tournament's
        own rule: a seeded coin in a knockout ("first" tie rule: response a), half a win each in a
        round robin or Swiss round. Tournament seeds derive from ``settings.seed`` and each item's key
        (default: its position), so an item is ranked alike whichever call or engine it comes in.
        """
        s = self.settings
        method = method or s.method
        if method not in METHODS:
            raise ValueError(f"rank: method must be one of {METHODS}, got {method!r}")
        if keys is not None and len(keys) != len(items):
            raise JudgeInputError(f"rank: {len(keys)} keys for {len(items)} items")
        started = time.perf_counter()
        tournaments: list[Tournament] = []
        for k, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise JudgeInputError(f"item {k}: expected (query, [responses]), got {type(item).__name__}")
            query, responses = item
            _check_str(query, f"item {k}: query")
            if isinstance(responses, str) or not isinstance(responses, Sequence) or not responses:
                raise JudgeInputError(
                    f"item {k}: expected a non-empty list of responses, got {responses!r:.80}"
                )
            for r, text in enumerate(responses):
                _check_str(text, f"item {k}: response {r}")
            key = k if keys is None else int(keys[k])
            tournaments.append(new_tournament(s, method, len(responses), s.seed * 1_000_003 + key))
        records: list[list[MatchRecord]] = [[] for _ in tournaments]

        def compare_batch(batch: list[tuple[int, Match]]) -> list[Side | None]:
            pairs = [JudgePair(items[k][0], items[k][1][m.a], items[k][1][m.b]) for k, m in batch]
            outcomes = []
            for (k, m), j in zip(batch, self.compare(pairs, votes), strict=True):
                outcome = j.winner if j.decided else None
                records[k].append(MatchRecord(m.round, m.a, m.b, outcome, j))
                outcomes.append(outcome)
            return outcomes

        run_many(tournaments, compare_batch)
        self.stats.prompts_judged += len(items)
        self.stats.rank_seconds += time.perf_counter() - started
        return [rank_result(t, rec) for t, rec in zip(tournaments, records, strict=True)]

    def best_of_n(
        self, items: Sequence[tuple[str, Sequence[str]]], method: str | None = None, votes: int | None = None
    ) -> list[int]:
        """Index of the chosen response per query (the tournament's winner)."""
        return [r.winner for r in self.rank(items, method, votes)]


def new_tournament(s: JudgeSettings, method: str, n: int, seed: int) -> Tournament:
    """The tournament ``rank`` runs over ``n`` responses (also what ``rrm_ray.judge.simulation`` drives).

    Swiss: ``s.swiss_rounds`` (None: ceil(log2 n)) capped at ``swiss_max_rounds(n)``, the rounds after
    which every pair has met, so one setting serves every group size.
    """
    if method == "knockout":
        return Knockout(n, seed, undecided="first" if s.tie_rule == "first" else "random")
    if method == "swiss":
        rounds = None if s.swiss_rounds is None else min(s.swiss_rounds, swiss_max_rounds(n))
        return Swiss(n, rounds, seed=seed)
    if method == "elo":
        return RoundRobin(n, s.rating, s.k_factor, seed=seed)
    raise ValueError(f"new_tournament: method must be one of {METHODS}, got {method!r}")


def rank_result(t: Tournament, records: list[MatchRecord]) -> RankResult:
    """A finished tournament as ranking, winner and per-response rewards."""
    if isinstance(t, Knockout):
        rewards = knockout_rewards(t)
        won = t.rounds_won
        ranking = sorted(range(t.n), key=lambda i: (i != t.winner, -rewards[i], -won[i], i))
        bracket = [[dict(e) for e in rnd] for rnd in t.bracket]
        return RankResult(
            "knockout", ranking, t.winner, [float(x) for x in won], rewards, bracket, None, records
        )
    if isinstance(t, Swiss):
        ranking = t.ranking
        bracket = [[dict(e) for e in rnd] for rnd in t.bracket]
        return RankResult(
            "swiss", ranking, ranking[0], t.score, swiss_rewards(t), bracket, t.ratings, records
        )
    assert isinstance(t, RoundRobin)
    ranking = t.ranking
    return RankResult("elo", ranking, ranking[0], t.ratings, elo_rewards(t), None, t.ratings, records)
