"""RRM feedback for policy training (pure): which prompts go to the judge, how tournament results and
rule rewards combine into one reward per sample, and how often the judge agrees with a verifier.

Samples are laid out prompt-major: sample k of prompt p is index p * n + k, as the rollout returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rrm_ray.judge.ranking_rewards import mix_rewards


def query_text(prompt: Any) -> str:
    """What the judge sees as the user's question: the prompt, or the chat's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt)


def prompts_to_judge(answers: Sequence[str | None], mode: str) -> list[int]:
    """`judge_if_no_rule`: only prompts without a reference answer; `weighted`: every prompt."""
    return [p for p, a in enumerate(answers) if mode == "weighted" or a is None]


def sample_rewards(
    rule: Sequence[float | None],
    judge_by_prompt: dict[int, Sequence[float]],
    n: int,
    mode: str,
    rule_weight: float,
    judge_weight: float,
) -> list[float]:
    """One reward per sample from rule rewards (None: no reference answer) and each judged prompt's
    ranking rewards (`RankResult.rewards`, one per sample of that prompt)."""
    judge: list[float | None] = [None] * len(rule)
    for p, values in judge_by_prompt.items():
        if len(values) != n:
            raise ValueError(f"prompt {p}: {len(values)} judge rewards for {n} samples")
        judge[p * n : (p + 1) * n] = list(values)
    return mix_rewards(list(rule), judge, rule_weight, judge_weight, mode)  # type: ignore[arg-type]


@dataclass
class Agreement:
    """Judge vs verifier on the comparisons whose two samples the verifier scores apart (the others say
    nothing), and whether each judged prompt's winner is one the verifier scores best."""

    pairs_agree: int = 0
    pairs_total: int = 0
    picks_correct: int = 0
    picks_total: int = 0

    def add(self, other: Agreement) -> None:
        self.pairs_agree += other.pairs_agree
        self.pairs_total += other.pairs_total
        self.picks_correct += other.picks_correct
        self.picks_total += other.picks_total

    @property
    def pair_rate(self) -> float | None:
        return self.pairs_agree / self.pairs_total if self.pairs_total else None

    @property
    def pick_rate(self) -> float | None:
        return self.picks_correct / self.picks_total if self.picks_total else None


def verifier_agreement(
    matches_by_prompt: dict[int, Sequence[tuple[int, int, str | None]]],
    winners: dict[int, int],
    scores: Sequence[float],
    n: int,
) -> Agreement:
    """How often the judge prefers what the verifier prefers. `scores` are the verifier's rule rewards
    (correctness as 1/0 is the special case); a comparison counts when its two samples score apart, and
    a prompt's pick counts when its samples do not all score the same (agreeing: the pick scores the
    best). `matches_by_prompt[p]`: (a, b, outcome "a"/"b"/None) per comparison; `winners[p]`: the pick."""
    out = Agreement()
    for p, matches in matches_by_prompt.items():
        group = scores[p * n : (p + 1) * n]
        for a, b, outcome in matches:
            if group[a] != group[b] and outcome is not None:
                out.pairs_total += 1
                out.pairs_agree += (outcome == "a") == (group[a] > group[b])
        if max(group) != min(group):
            out.picks_total += 1
            out.picks_correct += group[winners[p]] == max(group)
    return out
