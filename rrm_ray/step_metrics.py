"""What a GRPO step or a held-out evaluation reports about its samples (pure: no Ray).

Accuracy with its interval, the judge-training verdict breakdown (right, wrong, malformed, per
presentation order), and the MLflow samples table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rrm_ray.data.prompts import PromptRow
from rrm_ray.rewards.judge_reward import judge_reward, order_accuracy
from rrm_ray.stats import wilson_interval

if TYPE_CHECKING:
    from rrm_ray.types import Completion


def accuracy(name: str, correct: list[bool | None], interval: bool = False) -> dict[str, float]:
    """Fraction correct among items that have a reference answer (none: no metric); `interval` adds
    how many were scored and the 95% Wilson interval (`<name>_ci_low`, `<name>_ci_high`)."""
    known = [c for c in correct if c is not None]
    if not known:
        return {}
    out = {name: sum(known) / len(known)}
    if interval:
        low, high = wilson_interval(sum(known), len(known))
        out |= {f"{name}_n": float(len(known)), f"{name}_ci_low": low, f"{name}_ci_high": high}
    return out


def verdict_breakdown(
    prefix: str,
    rows: list[PromptRow],
    completions: list[Completion],
    mode: str,
    think_budget: int,
    rule: str = "release",
) -> dict[str, float]:
    """Judge training: right, wrong and malformed verdicts counted apart (format vs judgment), read by
    `rule` (`judge.verdict_rule`, as the reward reads them)."""
    results = [
        judge_reward(c.text, int(rows[c.prompt_index].answer), mode == "rrm", mode, rule=rule)  # type: ignore[arg-type]
        for c in completions
    ]
    total = max(len(results), 1)
    budget = {f"{prefix}/think_forced_close_rate": sum(c.forced_close for c in completions) / total}
    labels = [int(rows[c.prompt_index].answer) for c in completions]  # type: ignore[arg-type]
    return {
        **(budget if think_budget else {}),
        **order_accuracy(prefix, labels, [r.correct for r in results]),
        f"{prefix}/verdict_correct_rate": sum(r.correct for r in results) / total,
        f"{prefix}/verdict_wrong_rate": sum(r.format_ok and not r.correct for r in results) / total,
        f"{prefix}/format_fail_rate": sum(not r.format_ok for r in results) / total,
        # position bias: labels are balanced, so an unbiased judge names Assistant 1 about half the time
        f"{prefix}/verdict_first_rate": sum(r.format_ok and r.verdict == 1 for r in results)
        / max(sum(r.format_ok for r in results), 1),
    }


def samples_table(
    step: int, rows: list[PromptRow], completions: list[Completion], rewards: list[float], k: int
) -> list[dict[str, Any]]:
    """About `k` of the step's generations, evenly spaced, with their prompt, answer and reward."""
    picked = list(range(0, len(completions), max(1, len(completions) // k)))[:k]
    return [
        {
            "step": step,
            "prompt": str(rows[completions[i].prompt_index].prompt),
            "answer": rows[completions[i].prompt_index].answer,
            "response": completions[i].text,
            "reward": rewards[i],
        }
        for i in picked
    ]
