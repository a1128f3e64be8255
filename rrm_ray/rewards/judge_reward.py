"""The rule reward for training a judge (RRM) with RL: was the verdict right, in the right format?

Verdicts are read with ``rrm_ray.judge.verdict.parse_verdict`` by the job's ``judge.verdict_rule``,
the rule evaluation, tournaments and best-of-n use, so training rewards exactly what evaluation counts:

- ``release`` (default): the released RRMs' evaluation parser. An output earns +1 only if that parser
  reads the right verdict from it: a ``</think>`` (the parser prepends ``<think>`` itself), then, before
  any second ``</think>``, a last ``\\boxed{...}`` holding exactly ``Assistant 1`` / ``Assistant 2``.
  Anything it cannot read is malformed. Direct mode: the same box rule, no ``</think>`` needed.
- ``lenient``: RRM mode needs a complete thinking block, ``<think>`` then ``</think>`` (only
  ``</think>`` when the prompt already ended with ``<think>\\n``), and the verdict is the last complete
  box after the first ``</think>``, case and ``\\text{}`` wrappers ignored. Direct mode: no thinking
  block is needed; if a ``</think>`` does appear, boxes before it are ignored.

Malformed outputs (no thinking block in RRM mode, no parseable verdict in either mode) get
``format_fail_reward``; the paper uses -1 for both wrong and malformed, the defaults here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rrm_ray.judge.verdict import VERDICT_RULES, VerdictRule, has_think_format, parse_verdict

JudgeRewardMode = Literal["rrm", "direct"]


@dataclass(frozen=True)
class JudgeRewardResult:
    """``verdict`` is what the parser read (it may be set even when the format failed);
    ``correct`` is True only for a well-formed output whose verdict equals the label."""

    reward: float
    format_ok: bool
    verdict: Literal[1, 2] | None
    correct: bool


def judge_reward(
    output: str,
    label: Literal[1, 2],
    prompt_opened_think: bool,
    mode: JudgeRewardMode = "rrm",
    correct_reward: float = 1.0,
    wrong_reward: float = -1.0,
    format_fail_reward: float = -1.0,
    rule: VerdictRule = "release",
) -> JudgeRewardResult:
    """Score one judge generation against the pair's label (the position, 1 or 2, of the preferred
    response in the prompt the judge saw).

    Args:
        output: the generated text only (not the prompt).
        prompt_opened_think: True when the prompt ended with ``<think>\\n``, so the generation
            starts inside the thinking block. Ignored in direct mode and by the release rule (which
            prepends ``<think>`` to every output).
        rule: ``judge.verdict_rule``, "release" or "lenient".
    """
    if label not in (1, 2):
        raise ValueError(f"judge_reward: label must be 1 or 2, got {label!r}")
    if mode not in ("rrm", "direct"):
        raise ValueError(f"judge_reward: mode must be 'rrm' or 'direct', got {mode!r}")
    if not isinstance(output, str):
        raise TypeError(f"judge_reward: output must be str, got {type(output).__name__}")

    if rule not in VERDICT_RULES:
        raise ValueError(f"judge_reward: rule must be one of {VERDICT_RULES}, got {rule!r}")

    verdict = parse_verdict(output, rule, require_think_close=mode == "rrm")
    format_ok = verdict is not None
    if rule == "lenient" and mode == "rrm":
        format_ok = format_ok and has_think_format(output, prompt_opened_think)

    if not format_ok:
        return JudgeRewardResult(format_fail_reward, False, verdict, False)
    correct = verdict == label
    return JudgeRewardResult(correct_reward if correct else wrong_reward, True, verdict, correct)


def order_accuracy(prefix: str, labels: list[int], correct: list[bool]) -> dict[str, float]:
    """Verdict accuracy split by where the better answer was shown: `<prefix>/accuracy_better_first`
    (label 1) and `<prefix>/accuracy_better_second` (label 2). A judge that always names one position
    scores 1 on one and 0 on the other; a judge that reads the answers scores alike on both."""
    out = {}
    for label, name in ((1, "better_first"), (2, "better_second")):
        hits = [ok for lab, ok in zip(labels, correct, strict=True) if lab == label]
        if hits:
            out[f"{prefix}/accuracy_{name}"] = sum(hits) / len(hits)
    return out
