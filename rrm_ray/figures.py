"""Figures for what MLflow does not draw itself (PNG files, logged as run artifacts under `figures/`).

MLflow plots every metric against the step; it cannot stack the seconds of a step's phases, put the
judge's agreement next to how many judge calls it cost, or show a benchmark's per-subset and section
scores side by side. These functions do, from plain data (no Ray, no MLflow): metric histories are
``{name: [(step, value), ...]}`` as `Tracker.metric_history` returns them, evaluation scores a flat
``{name: value}`` dict as `rrm-ray eval` logs them. Each writes one PNG of a fixed pixel size (no
tight bounding box, so the size does not depend on the labels) and returns its path, or None when the
data holds nothing to draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI

import matplotlib.pyplot as plt  # after choosing the backend
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

History = dict[str, list[tuple[int, float]]]

DPI = 100
WIDE = (10.0, 4.5)  # inches at DPI: 1000 x 450 pixels
TALL = (10.0, 6.0)  # 1000 x 600 pixels

PHASE_PREFIX, PHASE_SUFFIX = "time/", "_s"
PHASE_TOTAL = "time/step_s"  # the sum of the phases: not a phase of its own
AGREEMENT = ("judge/verifier_pair_agreement", "judge/verifier_pick_agreement")
JUDGE_CALLS = ("judge/judge_calls", "judge/calls_saved", "judge/cache_hits")
SECTIONS = ("Chat", "Chat Hard", "Safety", "Reasoning")


def _last_per_step(points: list[tuple[int, float]]) -> dict[int, float]:
    """A resumed or recovered run logs a step again; the last value logged for it counts."""
    return {int(step): float(value) for step, value in points}


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def phase_seconds(history: History, path: str | Path) -> Path | None:
    """Seconds per phase, stacked by step (`time/<phase>_s`; `time/step_s` is their total)."""
    phases = {
        k.removeprefix(PHASE_PREFIX).removesuffix(PHASE_SUFFIX): _last_per_step(v)
        for k, v in sorted(history.items())
        if k.startswith(PHASE_PREFIX) and k.endswith(PHASE_SUFFIX) and k != PHASE_TOTAL and v
    }
    steps = sorted({s for values in phases.values() for s in values})
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=WIDE)
    bottom = [0.0] * len(steps)
    for name, values in phases.items():
        heights = [values.get(s, 0.0) for s in steps]
        ax.bar(steps, heights, bottom=bottom, label=name, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.set_title("Seconds per phase, by step")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.subplots_adjust(left=0.07, right=0.82, bottom=0.12, top=0.9)
    return _save(fig, path)


def judge_agreement(history: History, path: str | Path) -> Path | None:
    """Top: how often the judge agreed with the verifier, per step. Bottom: judge calls per step
    (sampled judgments made, calls saved by adaptive voting, cache hits)."""
    agreement = {k: _last_per_step(history[k]) for k in AGREEMENT if history.get(k)}
    calls = {k: _last_per_step(history[k]) for k in JUDGE_CALLS if history.get(k)}
    if not agreement and not calls:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=TALL, sharex=True)
    for name, values in agreement.items():
        steps = sorted(values)
        top.plot(steps, [values[s] for s in steps], marker="o", label=name.removeprefix("judge/"))
    top.set_ylim(-0.05, 1.05)
    top.set_ylabel("agreement")
    top.set_title("Judge vs verifier, and judge calls per step")
    if agreement:
        top.legend(loc="lower right", fontsize="small")
    width = 0.8 / max(len(calls), 1)
    for i, (name, values) in enumerate(calls.items()):
        steps = sorted(values)
        offset = (i - (len(calls) - 1) / 2) * width
        bottom.bar([s + offset for s in steps], [values[s] for s in steps], width=width, label=name[6:])
    bottom.set_xlabel("step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("calls")
    if calls:
        bottom.legend(loc="upper left", fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.1, top=0.93, hspace=0.12)
    return _save(fig, path)


LEARNING = ("eval/accuracy", "eval/accuracy_ci_low", "eval/accuracy_ci_high")
ORDERS = ("eval/accuracy_better_first", "eval/accuracy_better_second")


def learning_curve(history: History, path: str | Path) -> Path | None:
    """Held-out accuracy by step with its 95% Wilson band (`eval/accuracy_ci_*`), and, for judge
    training, the accuracy per presentation order (a position-biased judge splits them apart)."""
    acc = _last_per_step(history.get(LEARNING[0], []))
    if len(acc) < 2:  # one evaluation is a number, not a curve
        return None
    low, high = (_last_per_step(history.get(k, [])) for k in LEARNING[1:])
    steps = sorted(acc)
    fig, ax = plt.subplots(figsize=WIDE)
    ax.plot(steps, [acc[s] for s in steps], marker="o", label="held-out accuracy")
    band = [s for s in steps if s in low and s in high]
    if band:
        lows, highs = [low[s] for s in band], [high[s] for s in band]
        ax.fill_between(band, lows, highs, alpha=0.2, label="95% interval")
    for name in ORDERS:
        values = _last_per_step(history.get(name, []))
        if values:
            xs = sorted(values)
            ax.plot(xs, [values[s] for s in xs], linestyle="--", marker=".", label=name.removeprefix("eval/"))
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_title("Held-out accuracy (greedy), by step")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.subplots_adjust(left=0.07, right=0.78, bottom=0.12, top=0.9)
    return _save(fig, path)


def rewardbench_scores(metrics: dict[str, float], path: str | Path) -> Path | None:
    """Left: accuracy per subset (`accuracy/<subset>`). Right: the four section scores
    (`section/<name>`) and the overall score, as `rrm-ray eval --benchmark rewardbench` logs them."""
    subsets = {
        k.removeprefix("accuracy/"): v
        for k, v in sorted(metrics.items())
        if k.startswith("accuracy/") and k != "accuracy/all_items"
    }
    sections = {name: metrics[f"section/{name}"] for name in SECTIONS if f"section/{name}" in metrics}
    if not subsets and not sections:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=TALL, gridspec_kw={"width_ratios": [3, 2]})
    names = list(subsets)
    left.barh(range(len(names)), [subsets[n] for n in names], color="tab:blue")
    left.set_yticks(range(len(names)), names, fontsize="small")
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_xlabel("accuracy")
    left.set_title("Per subset")
    labels = [*sections, *(["overall"] if "overall" in metrics else [])]
    values = [*sections.values(), *([metrics["overall"]] if "overall" in metrics else [])]
    colors = ["tab:orange"] * len(sections) + ["tab:green"] * (len(labels) - len(sections))
    right.bar(range(len(labels)), values, color=colors)
    right.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
    right.set_ylim(0, 1)
    right.set_title("Sections and overall")
    for x, v in enumerate(values):
        right.text(x, v + 0.02, f"{v:.3f}", ha="center", fontsize="small")
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.14, top=0.92, wspace=0.25)
    return _save(fig, path)


def _number(text: object) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _axis_positions(ax: plt.Axes, values: list[str]) -> dict[str, float]:
    """Where each swept value sits on the x axis: numeric values at their number (a log2 axis when they
    span a factor of 4 or more, as thinking budgets do), anything else evenly spaced by first appearance."""
    numbers = {v: _number(v) for v in values}
    if all(n is not None for n in numbers.values()):
        positive = [n for n in numbers.values() if n is not None and n > 0]
        if len(positive) == len(numbers) and max(positive) >= 4 * min(positive):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = sorted(set(numbers.values()))  # type: ignore[type-var]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # type: ignore[misc]
        return numbers  # type: ignore[return-value]
    order = list(dict.fromkeys(values))
    ax.set_xticks(range(len(order)), order)
    return {v: float(i) for i, v in enumerate(order)}


def sweep_accuracy(rows: list[dict], x_key: str, line_keys: list[str], path: str | Path) -> Path | None:
    """A test-time-scaling sweep (`rrm-ray eval --sweep`). Left: accuracy against `x_key` (the thinking
    budget), one line per combination of `line_keys` (the vote count). Right: accuracy against the judge
    tokens the point spent. Error bars: the 95% Wilson interval. `rows`: one record per grid point with
    the swept keys as columns and `accuracy`, `ci_low`, `ci_high`, `generated_tokens`."""
    if not rows:
        return None
    lines: dict[str, list[dict]] = {}
    for r in rows:
        name = ", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in line_keys) or "accuracy"
        lines.setdefault(name, []).append(r)
    fig, (left, right) = plt.subplots(1, 2, figsize=WIDE, sharey=True)
    positions = _axis_positions(left, [str(r[x_key]) for r in rows])
    tokens = [float(r["generated_tokens"]) for r in rows]
    if min(tokens) > 0 and max(tokens) >= 10 * min(tokens):
        right.set_xscale("log")
        right.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        right.xaxis.set_minor_formatter(NullFormatter())
    for name, points in lines.items():
        points = sorted(points, key=lambda r: positions[str(r[x_key])])
        acc = [r["accuracy"] for r in points]
        err = [[r["accuracy"] - r["ci_low"] for r in points], [r["ci_high"] - r["accuracy"] for r in points]]
        xs = [positions[str(r[x_key])] for r in points]
        left.errorbar(xs, acc, yerr=err, marker="o", capsize=3, label=name)
        by_tokens = sorted(points, key=lambda r: r["generated_tokens"])
        right.errorbar(
            [r["generated_tokens"] for r in by_tokens],
            [r["accuracy"] for r in by_tokens],
            yerr=[
                [r["accuracy"] - r["ci_low"] for r in by_tokens],
                [r["ci_high"] - r["accuracy"] for r in by_tokens],
            ],
            marker="o",
            capsize=3,
            label=name,
        )
    for ax in (left, right):
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    left.set_ylim(-0.05, 1.05)
    left.set_ylabel("accuracy (95% Wilson interval)")
    left.set_xlabel(x_key)
    left.set_title(f"Accuracy by {x_key.rsplit('.', 1)[-1]}")
    right.set_xlabel("judge tokens generated")
    right.set_title("Accuracy by judge tokens spent")
    right.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.82, bottom=0.13, top=0.9, wspace=0.08)
    return _save(fig, path)
