"""The judge as a service: pairs in, verdicts out, every voting wave ONE engine batch.

Pure logic around an engine callable, so the same code runs inside the Ray judge actor (a vLLM
engine) and in unit tests (a scripted fake):

    generate(prompts, n) -> for each prompt (its token ids), n sampled texts, or None when its batch
                            deadline hit

    service = JudgeService(generate, tokenizer, JudgeSettings(votes=3))
    service.compare([JudgePair(query, a, b), ...])    # PairJudgment per pair, with reasoning traces
    service.rank([(query, [r0, r1, ...]), ...])        # knockout / round-robin / swiss, rewards

How a batch of pairs is judged (``compare``):

1. identical responses need no judge (a tie); the cache answers pairs judged before; a pair that
   occurs twice in one batch is judged once;
2. each remaining pair is shown in a canonical orientation, a coin of the unordered pair and the
   seed (a bit of the sha256 of ``settings.seed`` and both responses' digests, smaller first). The
   cache and the traces then do not depend on the order the caller listed the pair in, and with one
   vote the judge's position bias falls on a pseudo-random side per pair: neither on the caller's
   first response, nor (as a total order such as "smaller digest first" would) on the same response
   in every match of a group. With one vote this is the release's protocol: one presentation per
   item from a seeded coin (``trainer.seed``; another seed shows other orders);
3. the prompt of each presentation is rendered and encoded ONCE (``fit_pair_to_context``); a prompt
   over ``judge.max_prompt_tokens`` is cut, left undecided or fails the call by
   ``judge.over_length``, and counted (``over_length_pairs``);
4. voting follows ``rrm_ray.judge.voting.PairVote`` (``judge.presentation``: ``both_orders`` shows vote
   i swapped when i is odd, ``seeded_coin`` shows every vote in the coin's orientation); each wave
   gathers the presentations ALL pairs still need into one ``generate`` call of token-id prompts;
5. a vote whose text has no parseable verdict (``judge.verdict_rule``), or that timed out, is no vote
   for either side; results with a time-out are not cached (a time-out says nothing about the pair).

``verdict="choice_prob"`` (direct mode) replaces step 3 by ONE wave of two presentations per pair,
one per order, each scored by a second engine callable instead of sampled:

    choice_probs(prompts) -> for each prompt, P("Assistant 1") renormalised over {1, 2}, or None

and the pair's outcome is ``voting.prob_winner`` of the swap-corrected mean (a wins if mean
P(a) > 0.5; exactly 0.5, or an order that timed out, goes to the tie rule).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from rrm_ray.judge.cache import CachedComparison, ComparisonCache
from rrm_ray.judge.prompts import JudgePrompt, PromptTooLongError, complete_choice, fit_pair_to_context
from rrm_ray.judge.ranking_rewards import elo_rewards, knockout_rewards, swiss_rewards
from rrm_ray.judge.records import (
    METHODS,
    JudgeInputError,
    JudgePair,
    JudgeSettings,
    JudgeStats,
    JudgeTrace,
    MatchRecord,
    PairJudgment,
    RankResult,
    Side,
    as_pair,
    check_str,
    flip_judgment,
    shown_flipped,
    vote_swapped,
)
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

GenerateFn = Callable[[list[list[int]], int], list[list[str] | None]]
ChoiceProbFn = Callable[[list[list[int]]], list[float | None]]


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
            f"{s.cache_key}|mode={s.mode}|verdict={s.verdict}|rule={s.verdict_rule}|k={votes}"
            f"|{s.presentation}|adaptive={s.adaptive_votes}|tie={s.tie_rule}|style={s.prompt_style}"
            f"|prompt<={s.max_prompt_tokens}|{s.over_length}"
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
            flipped = shown_flipped(p.response_a, p.response_b, self.settings.seed)
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
            p = Presentation(0, v, swapped=vote_swapped(v, self.settings.presentation))
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
        return render_presentation(
            self.tokenizer, self.settings, query, first, second, where=_where(i, query)
        )

    def _parse(self, text: str) -> Literal[1, 2] | None:
        """The verdict of one judge output (a forced choice is first completed to its box; a choice
        probability names the more likely assistant)."""
        if self.settings.verdict == "choice_prob":
            p = parse_choice_probability(text)
            return None if p is None else choice_verdict(p)
        if self.settings.verdict == "choice":
            text = complete_choice(text)
        return parse_verdict(
            text, self.settings.verdict_rule, require_think_close=self.settings.mode == "rrm"
        )

    def _vote(
        self, pairs: Sequence[JudgePair], canon: list[tuple[str, str, bool]], todo: list[int], k: int
    ) -> dict[int, PairJudgment]:
        """Vote on the pairs ``todo`` in canonical orientation; judgments in that orientation."""
        s = self.settings
        both = k > 1 and s.presentation == "both_orders"
        prompts, truncated, out = self._render_both(pairs, canon, todo, both)
        alternate = s.presentation == "both_orders"
        state = {i: PairVote(k, s.adaptive_votes, s.tie_rule, s.seed, i, alternate) for i in truncated}
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
    ) -> tuple[dict[tuple[int, bool], JudgePrompt], dict[int, bool], dict[int, PairJudgment]]:
        """Prompts of the pairs ``todo`` by (pair, swapped) (the swapped one only if ``both``, else
        the shown one again), whether either was truncated, and judgments of the pairs not judged
        because they do not fit (``judge.over_length=skip``; ``error`` raises, naming the pair)."""
        prompts: dict[tuple[int, bool], JudgePrompt] = {}
        truncated: dict[int, bool] = {}
        skipped: dict[int, PairJudgment] = {}
        for i in todo:
            first, second, _ = canon[i]
            try:
                shown = self._render(i, pairs[i].query, first, second)
                swapped = self._render(i, pairs[i].query, second, first) if both else shown
            except PromptTooLongError as exc:
                if self.settings.over_length == "error":
                    raise
                self.stats.over_length_pairs += 1
                self.stats.skipped += 1
                skipped[i] = PairJudgment(None, 0, 0, 0, 0, 0, 0, error=str(exc))
                continue
            prompts[(i, False)], prompts[(i, True)] = shown, swapped
            truncated[i] = shown.truncated or swapped.truncated
            self.stats.truncated += truncated[i]
            self.stats.over_length_pairs += truncated[i]
        return prompts, truncated, skipped

    def _score_choices(
        self, pairs: Sequence[JudgePair], canon: list[tuple[str, str, bool]], todo: list[int]
    ) -> dict[int, PairJudgment]:
        """verdict choice_prob: both orders of every pair ``todo`` in ONE ``choice_probs`` call (one
        forward each), outcome by ``prob_winner``; judgments in canonical orientation."""
        s = self.settings
        assert self.choice_probs is not None
        prompts, truncated, out = self._render_both(pairs, canon, todo, both=True)
        keys = [(i, swapped) for i in truncated for swapped in (False, True)]
        probs = list(self.choice_probs([list(prompts[key].token_ids) for key in keys])) if keys else []
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

    def _run_wave(self, prompts: list[JudgePrompt]) -> list[str | None]:
        """One ``generate`` call for the whole wave, of token-id prompts. When every distinct prompt is
        asked the same number of times c (e.g. k votes in both orders), it is sent once with n=c, so
        the engine shares the prompt's prefill; otherwise every presentation is its own prompt with n=1."""
        slots: dict[tuple[int, ...], list[int]] = {}
        for pos, prompt in enumerate(prompts):
            slots.setdefault(prompt.token_ids, []).append(pos)
        counts = {len(v) for v in slots.values()}
        if len(counts) == 1 and len(slots) < len(prompts):
            unique, n = list(slots), counts.pop()
        else:
            unique, n = [p.token_ids for p in prompts], 1
        outputs = self.generate([list(ids) for ids in unique], n)
        self.stats.waves += 1
        self.stats.judge_calls += len(prompts)
        if len(outputs) != len(unique):
            raise ValueError(f"judge generate returned {len(outputs)} results for {len(unique)} prompts")
        texts: list[str | None] = [None] * len(prompts)
        for u, (ids, samples) in enumerate(zip(unique, outputs, strict=True)):
            if samples is not None and (len(samples) != n or not all(isinstance(t, str) for t in samples)):
                raise ValueError(
                    f"judge generate: prompt {u}: expected None or {n} strings, got {samples!r:.200}"
                )
            positions = slots[ids] if n > 1 else [u]
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
            check_str(query, f"item {k}: query")
            if isinstance(responses, str) or not isinstance(responses, Sequence) or not responses:
                raise JudgeInputError(
                    f"item {k}: expected a non-empty list of responses, got {responses!r:.80}"
                )
            for r, text in enumerate(responses):
                check_str(text, f"item {k}: response {r}")
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


def _where(i: int, query: str) -> str:
    """How an error names a pair: its index in the call and the start of its query."""
    return f"pair {i} (query {query[:60]!r}{'...' if len(query) > 60 else ''}): "


def render_presentation(
    tokenizer: Any, s: JudgeSettings, query: str, first: str, second: str, where: str = ""
) -> JudgePrompt:
    """The prompt (text and token ids) the judge is shown for ``first`` as Assistant 1, fitted to
    ``judge.max_prompt_tokens`` by ``judge.over_length`` (``PromptTooLongError`` when it does not fit
    and is not to be cut)."""
    return fit_pair_to_context(
        tokenizer,
        query,
        first,
        second,
        s.max_prompt_tokens,
        s.mode,
        s.over_length,
        where=where,
        verdict=s.verdict,
        style=s.prompt_style,
    )


def shown_first(pair: JudgePair, s: JudgeSettings, votes: int | None = None) -> list[Side]:
    """Which response the judge shows as Assistant 1 in each presentation of ``pair``, in vote order
    (distinct orders only): the seeded coin's orientation first, then the other when the votes cover
    both orders (``both_orders`` with more than one vote, and ``choice_prob``). Identical responses
    are never shown (a tie)."""
    if pair.response_a == pair.response_b:
        return []
    coin: Side = "b" if shown_flipped(pair.response_a, pair.response_b, s.seed) else "a"
    other: Side = "a" if coin == "b" else "b"
    k = s.votes if votes is None else votes
    both = s.verdict == "choice_prob" or (k > 1 and s.presentation == "both_orders")
    return [coin, other] if both else [coin]


def presentations(tokenizer: Any, s: JudgeSettings, pair: JudgePair) -> list[dict[str, Any]]:
    """What the judge would be shown for ``pair`` (``rrm-ray judge --render-only``): per distinct
    presentation, in vote order, which response is Assistant 1 ("a" or "b"), the chat messages, the
    prompt text and its token count (``truncated``: the documented cut). Raises ``PromptTooLongError``
    where the judge would skip the pair or fail (``judge.over_length``)."""
    out = []
    for side in shown_first(pair, s):
        first, second = (
            (pair.response_a, pair.response_b) if side == "a" else (pair.response_b, pair.response_a)
        )
        prompt = render_presentation(tokenizer, s, pair.query, first, second)
        out.append(
            {
                "first": side,
                "messages": [dict(m) for m in prompt.messages],
                "prompt": prompt.text,
                "prompt_tokens": prompt.num_tokens,
                "truncated": prompt.truncated,
            }
        )
    return out


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
