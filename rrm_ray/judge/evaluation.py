"""What `rrm-ray judge | eval | best-of-n` make of the judge's verdicts: benchmark passes, records.

A pass presents each benchmark item as a pair (which side the good response is shown on is a
reproducible per-item coin, so position bias cannot help the judge), hands the pairs to `judge`,
a function from pairs to judgments (the command's JudgeClient behind a progress bar), and scores the
verdicts with the benchmark's official rules (`rrm_ray.judge.benchmarks`):

    items -> pairs (coin per item) -> judge(pairs) -> credits / predictions -> Scored

Pure logic: no Ray, no engine; the console and MLflow are the command's (`rrm_ray.commands.judge`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from rrm_ray.judge.benchmarks import PandaLMItem, RewardBenchItem, score_pandalm, score_rewardbench
from rrm_ray.judge.records import JudgePair, PairJudgment

TRACE_TEXT_CHARS = 4000  # per trace in the MLflow table; the JSONL outputs keep the whole text

Judge = Callable[[list[JudgePair]], list[PairJudgment]]


def coin(seed: int, key: object) -> bool:
    """Reproducible per-item coin: which side the chosen response is listed on."""
    return hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()[0] & 1 == 1


def credit(j: PairJudgment, good_is_a: bool) -> float:
    """Evaluation credit from the votes: 1 if the good response got more, 0 if fewer, 0.5 on a tie
    (an unparseable single vote included: the paper's half credit), whatever the tie rule."""
    good, bad = (j.wins_a, j.wins_b) if good_is_a else (j.wins_b, j.wins_a)
    return 1.0 if good > bad else 0.0 if good < bad else 0.5


def judgment_fields(j: PairJudgment) -> dict[str, Any]:
    """A judgment as JSONL fields: verdict (None when undecided), votes, what went wrong, traces."""
    return {
        "verdict": j.winner if j.decided else None,
        "winner": j.winner,
        "votes": {"a": j.wins_a, "b": j.wins_b, "calls": j.votes, "saved": j.calls_saved},
        "unparseable": j.unparseable,
        "timed_out": j.timed_out,
        "from_cache": j.from_cache,
        "truncated": j.truncated,
        "error": j.error,
        "traces": [dataclasses.asdict(t) for t in j.traces],
    }


def counted(count: int, noun: str) -> str:
    """A count with its noun: "1 vote", "3 votes"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def stats_line(stats: dict[str, float], seconds: float) -> str:
    """The judge's counters (`JudgeClient.stats`) as the console line every command prints."""
    s = {k: int(v) if k != "generate_s" else v for k, v in stats.items()}
    line = (
        f"{counted(s['comparisons'], 'comparison')} in {seconds:.1f}s: "
        f"{counted(s['judge_calls'], 'judge call')} in {counted(s['waves'], 'wave')} "
        f"({s['calls_saved']} saved by adaptive voting, {counted(s['cache_hits'], 'cache hit')}), "
        f"{s['unparseable']} unparseable, {s['timed_out']} timed out, "
        f"{counted(s['over_length_pairs'], 'pair')} over judge.max_prompt_tokens ({s['truncated']} "
        f"truncated, {s['skipped']} skipped); {s['generated_tokens']} tokens generated"
    )
    if "endpoint_errors" in s:  # a served judge (judge.endpoint.url): failed requests, retried
        line += f"; {counted(s['endpoint_errors'], 'endpoint error')} (retried)"
    return line


def trace_rows(
    ids: Sequence[Any], judgments: Sequence[PairJudgment], extra: Sequence[dict], limit: int
) -> list[dict[str, Any]]:
    """The first `limit` judge traces as table rows (text cut to TRACE_TEXT_CHARS)."""
    rows: list[dict[str, Any]] = []
    for item_id, j, more in zip(ids, judgments, extra, strict=True):
        for t in j.traces:
            if len(rows) >= limit:
                return rows
            text = t.text if t.text is not None else "<timed out>"
            rows.append(
                {
                    "id": str(item_id),
                    **more,
                    "vote": t.vote,
                    "order": t.order,
                    "verdict": t.verdict,
                    "vote_for": t.winner,
                    "text": text[:TRACE_TEXT_CHARS],
                }
            )
    return rows


@dataclasses.dataclass
class Scored:
    """One benchmark pass: its metrics, the first judge traces, the headline accuracy as a binomial
    count (`successes` of `n`; RewardBench's half credits count half) for its interval, and the
    report the console shows for a single evaluation (`report`, one string per line)."""

    metrics: dict[str, float]
    traces: list[dict[str, Any]]
    successes: float
    n: int
    report: list[str]


def rewardbench_pass(items: Sequence[RewardBenchItem], judge: Judge, seed: int, traces: int) -> Scored:
    """Accuracy per subset and section, the leaderboard's overall, and the mean credit of all items."""
    chosen_a = [coin(seed, it.id) for it in items]
    pairs = [
        JudgePair(it.prompt, it.chosen, it.rejected) if a else JudgePair(it.prompt, it.rejected, it.chosen)
        for it, a in zip(items, chosen_a, strict=True)
    ]
    judgments = judge(pairs)
    credits = [credit(j, a) for j, a in zip(judgments, chosen_a, strict=True)]
    report = score_rewardbench(zip(items, credits, strict=True))
    metrics: dict[str, float] = {f"accuracy/{s}": a for s, a in report.subset_accuracy.items()}
    metrics.update({f"unknown_subset/{s}": a for s, a in report.unknown_subsets.items()})
    metrics.update({f"section/{name}": v for name, v in report.sections.items() if v is not None})
    if report.overall is not None:
        metrics["overall"] = report.overall
    metrics["accuracy/all_items"] = sum(credits) / max(len(credits), 1)
    lines = [f"\n{'subset':<28}{'n':>6}{'accuracy':>10}"]
    for subset, acc in {**report.subset_accuracy, **report.unknown_subsets}.items():
        mark = "  (not a RewardBench subset)" if subset in report.unknown_subsets else ""
        lines.append(f"{subset:<28}{report.subset_counts[subset]:>6}{acc:>10.3f}{mark}")
    for name, score in report.sections.items():
        lines.append(f"section {name:<20}{'-' if score is None else f'{score:.3f}':>16}")
    lines.append(f"{'overall':<28}{'-' if report.overall is None else f'{report.overall:.3f}':>16}")
    lines.append(
        f"{'mean credit over all items':<28}{metrics['accuracy/all_items']:>16.3f}  ({len(items)} items)"
    )
    extra = [
        {"subset": it.subset, "chosen_shown_as": "a" if a else "b", "credit": c}
        for it, a, c in zip(items, chosen_a, credits, strict=True)
    ]
    rows = trace_rows([it.id for it in items], judgments, extra, traces)
    return Scored(metrics, rows, sum(credits), len(items), lines)


def pandalm_pass(items: Sequence[PandaLMItem], judge: Judge, seed: int, traces: int) -> Scored:
    """Accuracy and macro-F1 over the three labels (an undecided verdict predicts nothing)."""
    keep = [not coin(seed, it.idx) for it in items]  # response1 listed as a?
    pairs = [
        JudgePair(it.query, it.response1, it.response2)
        if k
        else JudgePair(it.query, it.response2, it.response1)
        for it, k in zip(items, keep, strict=True)
    ]
    judgments = judge(pairs)
    predictions: list[int | None] = []
    for j, k in zip(judgments, keep, strict=True):
        if not j.decided:
            predictions.append(None)
        else:
            predictions.append(1 if (j.winner == "a") == k else 2)
    report = score_pandalm([it.label for it in items], predictions)  # type: ignore[misc]
    excl = report.accuracy_excluding_ties
    lines = [
        f"\nPandaLM: {report.n_items} items ({report.n_ties} ties, {report.n_unparseable} undecided)",
        f"accuracy {report.accuracy:.3f}  macro-F1 {report.macro_f1:.3f}  accuracy excluding ties "
        f"{'-' if excl is None else f'{excl:.3f}'}",
    ]
    for c, s in report.per_class.items():
        scores = f"precision {s.precision:.3f} recall {s.recall:.3f} f1 {s.f1:.3f}"
        lines.append(f"  class {c}: {scores} (support {s.support})")
    metrics = {"accuracy": report.accuracy, "macro_f1": report.macro_f1}
    if excl is not None:
        metrics["accuracy_excluding_ties"] = excl
    extra = [
        {"label": it.label, "prediction": p, "response1_shown_as": "a" if k else "b"}
        for it, p, k in zip(items, predictions, keep, strict=True)
    ]
    correct = sum(p is not None and p == it.label for it, p in zip(items, predictions, strict=True))
    rows = trace_rows([it.idx for it in items], judgments, extra, traces)
    return Scored(metrics, rows, correct, len(items), lines)
