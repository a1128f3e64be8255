"""What every learner backend offers the learner actor (see `actors.backends`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch


class StepOutcome(NamedTuple):
    """What one optimizer step did: the gradient norm before clipping, and whether AdamW was applied
    (False: the norm was inf/nan, so the gradients were dropped and the weights left as they were)."""

    grad_norm: float
    applied: bool


class Backend:
    """One rank's share of the policy (or of a frozen reference when `optimizer` is absent)."""

    name = ""
    model: Any

    def start_micro_batch(self, last: bool) -> None:
        """Called before each forward of a gradient accumulation; `last` on the final micro-batch."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_and_step(self, max_norm: float) -> StepOutcome:
        raise NotImplementedError

    def zero_grad(self) -> None:
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        raise NotImplementedError

    def full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Collective: rank 0 gets every weight, full and on CPU, in `dtype` (None: the master weights'
        own dtype, fp32 under mixed precision); the other ranks get {}. Tied names are both present."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError
