"""The records that cross layers: what an engine sampled, what the rule actor scored, and a batch's
rewards. Plain dataclasses (picklable, no Ray), shared by actors, clients and jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a StepRewards holds a tensor; the rule actor, which never builds one, skips torch
    import torch


@dataclass
class Completion:
    """One sampled response, with what the learner needs to score and train on it."""

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]  # vLLM's log-probs of the sampled tokens (for the TIS correction)
    text: str
    finish_reason: str
    # Judge training with a thinking budget: 0 on tokens the engine appended (loss-masked), else None
    response_mask: list[int] | None = None
    forced_close: bool = False


@dataclass
class ScoredBatch:
    """Per item: the rule reward and whether the accuracy rule calls it correct; both None for items
    without a reference answer (those are left to the judge). Timeouts/errors are counted."""

    rewards: list[float | None]
    correct: list[bool | None]
    timeouts: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: list[ScoredBatch]) -> ScoredBatch:
        """Batches scored separately (the streamed groups), as one, in the order given."""
        return cls(
            [r for p in parts for r in p.rewards],
            [c for p in parts for c in p.correct],
            sum(p.timeouts for p in parts),
            sum(p.errors for p in parts),
            [m for p in parts for m in p.error_messages],
        )


@dataclass
class StepRewards:
    """One batch's rewards: per sample (`per_sample`, [N]), the rule actor's scores, and the judge's
    results by prompt index with their metrics and MLflow tables (empty without a judge)."""

    per_sample: torch.Tensor
    rule: ScoredBatch
    judged: dict[int, Any]
    judge_metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
