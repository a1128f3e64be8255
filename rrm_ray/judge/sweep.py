"""Test-time scaling as a sweep: `rrm-ray eval ... --sweep judge.max_new_tokens=256,1024 --sweep votes=1,3`.

Pure logic (no Ray, no MLflow): parse the `--sweep KEY=V1,V2,...` options, expand their cartesian
product into grid points, decide which points can share one judge session, and turn each point's
scores into a table row with its binomial 95% Wilson interval.

Which keys share a session. The RRM paper's scaling axes (the thinking horizon, votes per pair) are
sampling-time settings: they change what the engine is asked, not the engine. `SESSION_KEYS` are the
keys a running judge engine takes in place (`JudgeWorker.configure`); points that differ only in them
run in one session, so a sweep pays one engine start. Every other key (the judge model, its context
length, KV cache, engines, GPUs, the seed, ...) is fixed when an engine starts: points that differ in
one get their own session, which is restarted for them.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rrm_ray.stats import wilson_interval
from rrm_ray.tables import aligned_table

# Keys a running judge engine takes in place: decoding, votes, prompt and tournament rules.
SESSION_KEYS = frozenset(
    f"judge.{k}"
    for k in (
        "max_new_tokens",
        "think_budget",
        "temperature",
        "top_p",
        "votes",
        "adaptive_votes",
        "tie_rule",
        "mode",
        "verdict",
        "verdict_rule",
        "presentation",
        "prompt_style",
        "max_prompt_tokens",
        "over_length",
        "batch_timeout_s",
        "method",
        "swiss_rounds",
        "rating",
        "k_factor",
    )
)
# What a sweep may vary: what the judge is and does. Data, tracking and the policy are set once.
SWEEPABLE_PREFIX, SWEEPABLE_EXTRA = "judge.", ("trainer.seed",)
ALIASES = {
    "votes": "judge.votes",
    "max_new_tokens": "judge.max_new_tokens",
    "think_budget": "judge.think_budget",
}
# The horizon axes, in order of preference for the figure's x axis.
BUDGET_KEYS = ("judge.max_new_tokens", "judge.think_budget")
TABLE_SUFFIXES = (".json", ".csv")


class SweepError(ValueError):
    """A `--sweep` option that cannot be a grid axis (or a table path that cannot be written)."""


@dataclass(frozen=True)
class Axis:
    """One `--sweep KEY=V1,V2,...`: a config key and its values, as typed (validated by the config)."""

    key: str
    values: tuple[str, ...]


def parse_axis(option: str) -> Axis:
    """`judge.votes=1,3,5` -> Axis("judge.votes", ("1", "3", "5")); aliases `votes`, `max_new_tokens`,
    `think_budget` name their `judge.` keys. Values may not contain commas."""
    key, sep, values = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"--sweep {option!r}: expected KEY=V1,V2,... (e.g. judge.votes=1,3,5)")
    if not all(part.isidentifier() for part in key.split(".")):
        raise SweepError(f"--sweep {option!r}: {key!r} is not a config key (dotted names, e.g. judge.votes)")
    key = ALIASES.get(key, key)
    if not (key.startswith(SWEEPABLE_PREFIX) or key in SWEEPABLE_EXTRA):
        raise SweepError(
            f"--sweep {option!r}: a sweep varies the judge (judge.* keys, or trainer.seed), not {key!r}; "
            f"set it once as {key}=VALUE"
        )
    parts = tuple(v.strip() for v in values.split(","))
    if any(not v for v in parts):
        raise SweepError(f"--sweep {option!r}: an empty value; expected {key}=V1,V2,... without empty items")
    repeated = sorted({v for v in parts if parts.count(v) > 1})
    if repeated:
        raise SweepError(f"--sweep {option!r}: value {repeated[0]!r} is listed twice")
    return Axis(key, parts)


def parse_axes(options: Sequence[str], fixed_keys: Sequence[str] = ()) -> list[Axis]:
    """Every `--sweep` option as an axis; a key swept twice, or also fixed by an override or an option
    (`fixed_keys`, e.g. `judge.votes` from `--votes`), is an error: which value would win is unclear."""
    axes = [parse_axis(o) for o in options]
    seen: set[str] = set()
    for axis in axes:
        if axis.key in seen:
            raise SweepError(f"--sweep: {axis.key} is swept twice; list all its values in one --sweep")
        seen.add(axis.key)
        if axis.key in fixed_keys:
            raise SweepError(
                f"--sweep: {axis.key} is swept and also set once (an override or an option); drop one"
            )
    return axes


def expand(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """The cartesian product, one dict per point; the first axis varies slowest."""
    return [
        dict(zip([a.key for a in axes], combo, strict=True))
        for combo in itertools.product(*(a.values for a in axes))
    ]


def overrides(point: Mapping[str, str]) -> list[str]:
    """A point as `key=value` config overrides (after the command's own, so they are the point's)."""
    return [f"{k}={v}" for k, v in point.items()]


def label(point: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items())


def engine_keys(keys: Sequence[str]) -> list[str]:
    """The swept keys a running engine cannot take: each of their values needs its own session."""
    return [k for k in keys if k not in SESSION_KEYS]


def session_groups(flat_configs: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Point indices grouped by everything outside `SESSION_KEYS` (the engine a point needs), in order
    of first appearance: one judge session per group."""
    groups: dict[tuple, list[int]] = {}
    for i, flat in enumerate(flat_configs):
        signature = tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in SESSION_KEYS))
        groups.setdefault(signature, []).append(i)
    return list(groups.values())


@dataclass(frozen=True)
class SweepRow:
    """One grid point's result. ``accuracy`` = ``successes / n``; RewardBench's half credit (an
    undecided pair) counts as half a success, also in the Wilson interval."""

    point: int  # 0-based position in the grid
    values: dict[str, str]
    accuracy: float
    successes: float
    n: int
    ci_low: float
    ci_high: float
    generated_tokens: int
    judge_calls: int
    comparisons: int
    seconds: float
    run_id: str | None = None

    @classmethod
    def from_scores(
        cls,
        point: int,
        values: Mapping[str, str],
        successes: float,
        n: int,
        stats: Mapping[str, float],
        seconds: float,
        run_id: str | None = None,
    ) -> SweepRow:
        low, high = wilson_interval(successes, n)  # type: ignore[arg-type]
        return cls(
            point,
            dict(values),
            successes / n,
            float(successes),
            n,
            low,
            high,
            int(stats["generated_tokens"]),
            int(stats["judge_calls"]),
            int(stats["comparisons"]),
            float(seconds),
            run_id,
        )


def short_names(keys: Sequence[str]) -> list[str]:
    """Column names: the last part of each key (`judge.votes` -> `votes`) unless two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k for s, k in zip(last, keys, strict=True)]


def points_table(keys: Sequence[str], rows: Sequence[SweepRow]) -> str:
    """One line per point: the swept values, accuracy, its 95% Wilson interval, judge tokens, judge
    calls, seconds of judging."""
    head = [*short_names(keys), "n", "accuracy", "95% CI", "judge tokens", "judge calls", "seconds"]
    body = [
        [
            *(r.values[k] for k in keys),
            str(r.n),
            f"{r.accuracy:.3f}",
            f"{r.ci_low:.3f}-{r.ci_high:.3f}",
            str(r.generated_tokens),
            str(r.judge_calls),
            f"{r.seconds:.1f}",
        ]
        for r in rows
    ]
    lines = aligned_table(head, body)
    return "\n".join(lines)


def table_records(keys: Sequence[str], rows: Sequence[SweepRow]) -> list[dict[str, Any]]:
    """Flat records (swept keys as columns) for JSON, CSV and the MLflow table."""
    out = []
    for r in rows:
        record = asdict(r)
        values = record.pop("values")
        out.append({**{k: values[k] for k in keys}, **record})
    return out


def check_table_path(path: str | Path) -> Path:
    """`--out` must say its format by its suffix; checked before anything starts."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise SweepError(
            f"--out {path}: the sweep table is written as .json or .csv; got {path.suffix or 'no suffix'!r}"
        )
    return path


def write_table(keys: Sequence[str], rows: Sequence[SweepRow], path: str | Path) -> Path:
    """The table as a JSON list of records or a CSV file with a header line."""
    path = check_table_path(path)
    records = table_records(keys, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(records, indent=2) + "\n")
        return path
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else list(keys))
        writer.writeheader()
        writer.writerows(records)
    return path


def figure_axes(keys: Sequence[str]) -> tuple[str, list[str]]:
    """(x axis, line keys) for the accuracy figure: the thinking budget on x when it is swept
    (else the first swept key), one line per combination of the other swept keys."""
    x = next((k for k in BUDGET_KEYS if k in keys), keys[0])
    return x, [k for k in keys if k != x]
