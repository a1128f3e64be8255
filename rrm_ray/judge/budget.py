"""Budget forcing for thinking judges: cap the thinking, then make the judge decide.

A judge in RRM mode thinks inside ``<think> ... </think>`` and then writes its verdict. A small or
untrained judge may think until the token limit without ever closing the block, and so never
reaches a verdict. With ``judge.think_budget = B`` generation runs in two phases:

1. think: at most B tokens, stopping early at ``</think>``;
2. decide: if the judge did not close the block itself, the engine appends ``FORCED_CLOSE``; then
   generation continues from there for the rest of the token allowance.

In judge training the appended tokens are not the policy's actions: they carry loss mask 0, the
way tool outputs are masked in multi-turn RL. Everything here is plain token and text logic; the
engines (``actors.rollout``) run the two phases.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

THINK_CLOSE = "</think>"
FORCED_CLOSE = "\n</think>\n"


@dataclass(frozen=True)
class ThoughtPrefix:
    """The response so far after the thinking phase: what phase 2 continues from."""

    token_ids: list[int]
    logprobs: list[float]  # the sampled tokens' log-probs; 0.0 for appended tokens
    mask: list[int]  # 1: sampled by the model, 0: appended by the engine
    text: str
    forced: bool  # True when the engine closed the thinking

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def closed_by_model(text: str) -> bool:
    return THINK_CLOSE in text


def close_thinking(
    text: str,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    close_ids: Sequence[int],
    eos_ids: Collection[int] = (),
) -> ThoughtPrefix:
    """The thinking phase's output, closed by the engine if the model did not close it.

    A thought that ended with an end-of-sequence token has that token dropped before the close is
    appended (the sequence goes on, so it must not contain an EOS in the middle).
    """
    if len(token_ids) != len(logprobs):
        raise ValueError(f"close_thinking: {len(token_ids)} tokens but {len(logprobs)} log-probs")
    ids, lps = list(token_ids), [float(x) for x in logprobs]
    if closed_by_model(text):
        return ThoughtPrefix(ids, lps, [1] * len(ids), text, forced=False)
    while ids and ids[-1] in eos_ids:
        ids.pop()
        lps.pop()
    return ThoughtPrefix(
        ids + list(close_ids),
        lps + [0.0] * len(close_ids),
        [1] * len(ids) + [0] * len(close_ids),
        text + FORCED_CLOSE,
        forced=True,
    )


def close_thinking_text(text: str) -> str:
    """Text-only form for judging (no training): the thought, closed if the model did not."""
    return text if closed_by_model(text) else text + FORCED_CLOSE


def verdict_allowance(max_tokens: int, prefix_tokens: int) -> int:
    """Tokens left for phase 2 out of the whole response's ``max_tokens`` (at least one)."""
    return max(1, max_tokens - prefix_tokens)
