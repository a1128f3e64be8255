"""Best-of-N against the truth: how often the judge's pick is correct, next to what is possible.

`rrm-ray best-of-n` samples n responses per prompt once, then lets the judge pick one per setting
(method x votes). When the prompts carry reference answers, every response is scored with the
verifier's rule, and each setting is reported against two reference points over the same responses:

- oracle: the share of prompts with at least one correct response (what a perfect picker gets);
- random: the expected accuracy of a uniform random pick, the mean over prompts of the share of
  correct responses (exact, not sampled).

A judge worth its calls sits between the two. Pure logic: no Ray, no engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rrm_ray.judge.evaluation import judgment_fields
from rrm_ray.judge.records import METHODS
from rrm_ray.tables import aligned_table


class BestOfNError(ValueError):
    """A `--method` / `--votes` list that names no valid setting."""


def parse_methods(text: str | None, default: str) -> list[str]:
    """`knockout,elo` -> ["knockout", "elo"]; None -> [default] (judge.method)."""
    if text is None:
        return [default]
    methods = [m.strip() for m in text.split(",")]
    for m in methods:
        if m not in METHODS:
            raise BestOfNError(
                f"--method {text!r}: {m!r} is not a method; expected a list of {', '.join(METHODS)}"
            )
    if len(set(methods)) != len(methods):
        raise BestOfNError(f"--method {text!r}: a method is listed twice")
    return methods


def parse_votes(text: str | None, default: int) -> list[int]:
    """`1,3` -> [1, 3]; None -> [default] (judge.votes). Each an integer >= 1."""
    if text is None:
        return [default]
    votes = []
    for part in text.split(","):
        try:
            k = int(part.strip())
        except ValueError:
            raise BestOfNError(f"--votes {text!r}: {part.strip()!r} is not an integer") from None
        if k < 1:
            raise BestOfNError(f"--votes {text!r}: votes must be at least 1, got {k}")
        votes.append(k)
    if len(set(votes)) != len(votes):
        raise BestOfNError(f"--votes {text!r}: a vote count is listed twice")
    return votes


def settings(methods: Sequence[str], votes: Sequence[int]) -> list[tuple[str, int]]:
    """Every (method, votes) pair, method-major: the rows of the table."""
    return [(m, k) for m in methods for k in votes]


def correctness_rule(reward: Any) -> str:
    """The rule whose value > 0 means correct: `reward.accuracy_rule`, else the first weighted rule,
    else `reward.rule`, the way training reports accuracy (a reward may mix in format terms)."""
    return reward.accuracy_rule or next(iter(reward.rule_weights), reward.rule)


def per_prompt(prompt_index: Sequence[int], values: Sequence[Any], prompts: int) -> list[list[Any]]:
    """Flat per-sample values (sample k of prompt `prompt_index[k]`, the rollout's order) as one list
    per prompt, in sample order."""
    out: list[list[Any]] = [[] for _ in range(prompts)]
    for p, value in zip(prompt_index, values, strict=True):
        out[p].append(value)
    return out


def correct_flags(
    answers: Sequence[str | None], prompt_index: Sequence[int], correct: Sequence[bool | None]
) -> list[list[bool] | None]:
    """Per prompt, the reward actor's per-sample correctness (`ScoredBatch.correct`), or None for a
    prompt without a reference answer: the `correct` that `pick_scores` takes."""
    grouped = per_prompt(prompt_index, correct, len(answers))
    return [
        None if a is None else [bool(c) for c in flags] for a, flags in zip(answers, grouped, strict=True)
    ]


@dataclass(frozen=True)
class PickScores:
    """Over the prompts that have a reference answer (``prompts`` of them; the rates are None when 0)."""

    prompts: int
    pick_accuracy: float | None
    oracle: float | None
    random_pick: float | None


def pick_scores(correct: Sequence[Sequence[bool] | None], picks: Sequence[int]) -> PickScores:
    """`correct[i][r]`: response r of prompt i is correct (None: prompt i has no answer); `picks[i]`:
    the response the judge chose for prompt i."""
    if len(correct) != len(picks):
        raise ValueError(f"pick_scores: {len(correct)} prompts of flags but {len(picks)} picks")
    scored = [(flags, p) for flags, p in zip(correct, picks, strict=True) if flags is not None]
    for flags, p in scored:
        if not flags:
            raise ValueError("pick_scores: a prompt with an answer but no responses")
        if not 0 <= p < len(flags):
            raise ValueError(f"pick_scores: pick {p} outside the {len(flags)} responses")
    if not scored:
        return PickScores(0, None, None, None)
    n = len(scored)
    return PickScores(
        n,
        sum(flags[p] for flags, p in scored) / n,
        sum(any(flags) for flags, _ in scored) / n,
        sum(sum(flags) / len(flags) for flags, _ in scored) / n,
    )


@dataclass(frozen=True)
class SettingRow:
    """One line of the table: a setting's picks scored, and what the judge spent on them."""

    method: str
    votes: int
    n: int  # responses per prompt
    scores: PickScores
    judge_calls: int
    seconds: float


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def settings_table(rows: Sequence[SettingRow], prompts: int) -> str:
    """The side-by-side table; says so when no prompt carries an answer (then only picks exist)."""
    head = ["method", "votes", "n", "judge pick acc", "oracle", "random", "judge calls", "seconds"]
    body = [
        [
            r.method,
            str(r.votes),
            str(r.n),
            _rate(r.scores.pick_accuracy),
            _rate(r.scores.oracle),
            _rate(r.scores.random_pick),
            str(r.judge_calls),
            f"{r.seconds:.1f}",
        ]
        for r in rows
    ]
    lines = aligned_table(head, body)
    with_answers = rows[0].scores.prompts if rows else 0
    if with_answers == 0:
        lines.append(f"no prompt has a reference answer ({prompts} prompts): only the picks are written")
    elif with_answers < prompts:
        lines.append(
            f"accuracies over the {with_answers} of {prompts} prompts with a reference answer; "
            f"the other {prompts - with_answers} have picks only"
        )
    else:
        lines.append(f"accuracies over all {prompts} prompts (each has a reference answer)")
    return "\n".join(lines)


def metrics(rows: Sequence[SettingRow]) -> dict[str, float]:
    """MLflow metrics: per setting `best_of_n/<method>/votes_<k>/*`; oracle and random once (the
    responses are the same for every setting)."""
    out: dict[str, float] = {}
    for r in rows:
        prefix = f"best_of_n/{r.method}/votes_{r.votes}"
        out[f"{prefix}/judge_calls"] = float(r.judge_calls)
        out[f"{prefix}/seconds"] = r.seconds
        if r.scores.pick_accuracy is not None:
            out[f"{prefix}/pick_accuracy"] = r.scores.pick_accuracy
    if rows and rows[0].scores.prompts:
        out["best_of_n/oracle"] = rows[0].scores.oracle  # type: ignore[assignment]
        out["best_of_n/random_pick"] = rows[0].scores.random_pick  # type: ignore[assignment]
        out["best_of_n/prompts_with_answers"] = float(rows[0].scores.prompts)
    return out


def table_records(rows: Sequence[SettingRow]) -> list[dict[str, Any]]:
    """The table as records (MLflow table)."""
    return [
        {
            "method": r.method,
            "votes": r.votes,
            "n": r.n,
            "prompts_with_answers": r.scores.prompts,
            "pick_accuracy": r.scores.pick_accuracy,
            "oracle": r.scores.oracle,
            "random_pick": r.scores.random_pick,
            "judge_calls": r.judge_calls,
            "seconds": r.seconds,
        }
        for r in rows
    ]


def pick_records(
    rows: Sequence[Any],
    queries: Sequence[str],
    responses: Sequence[Sequence[str]],
    correct: Sequence[Sequence[bool] | None],
    results: Sequence[Any],
    votes: int,
) -> list[dict[str, Any]]:
    """The output JSONL of one setting, a record per prompt: its responses and their correctness,
    the judge's pick, ranking and every comparison (`rows`: `PromptRow`s; `results`: `RankResult`s)."""
    out = []
    for row, query, resp, flags, res in zip(rows, queries, responses, correct, results, strict=True):
        out.append(
            {
                "row": row.row,
                "query": query,
                "responses": list(resp),
                "pick": res.winner,
                "best": resp[res.winner],
                "method": res.method,
                "votes": votes,
                "answer": row.answer,
                "correct": flags,  # per response, by the verifier's rule; null without an answer
                "pick_correct": None if flags is None else flags[res.winner],
                "ranking": res.ranking,
                "scores": res.scores,
                "rewards": res.rewards,
                "bracket": res.bracket,
                "ratings": res.ratings,
                "comparisons": [
                    {
                        "round": m.round,
                        "a": m.a,
                        "b": m.b,
                        "outcome": m.outcome,
                        **judgment_fields(m.judgment),
                    }
                    for m in res.comparisons
                ],
            }
        )
    return out
