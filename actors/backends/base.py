"""What every learner backend offers the learner actor (see `actors.backends`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from rrm_ray import lora


class StepOutcome(NamedTuple):
    """What one optimizer step did: the gradient norm before clipping, and whether AdamW was applied
    (False: the norm was inf/nan, so the gradients were dropped and the weights left as they were)."""

    grad_norm: float
    applied: bool


class Backend:
    """One rank's share of the policy (or of a frozen reference when `optimizer` is absent)."""

    name = ""
    model: Any
    # The PeftModel around `module()` when `learner.lora.rank` > 0 (`actors.lora_model`): its
    # `disable_adapter` gives the reference; None: full training.
    peft: Any = None

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

    def module(self) -> torch.nn.Module:
        """The HF module whose state dict names the weights (FSDP2's is the model itself)."""
        return self.model

    def weights(self, adapter_only: bool = False) -> list[tuple[str, torch.Tensor]]:
        """The state dict's tensors as this rank holds them (shards, partitions or full), tied names once;
        `adapter_only`: a LoRA policy's adapter tensors alone (`lora_A` / `lora_B`)."""
        named = self._named_state()[0].items()
        return [(n, t) for n, t in named if not adapter_only or lora.file_key(n) is not None]

    def _named_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(first name -> tensor, alias -> first name) over `module().state_dict(keep_vars=True)`."""
        first: dict[int, str] = {}
        unique: dict[str, torch.Tensor] = {}
        aliases: dict[str, str] = {}
        for name, t in self.module().state_dict(keep_vars=True).items():
            if id(t) in first:
                aliases[name] = first[id(t)]
            else:
                first[id(t)] = name
                unique[name] = t
        return unique, aliases

    def weight_meta(self, adapter_only: bool = False) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """Every weight's name, full shape and own dtype, in `stream_weights` order, without gathering
        anything. Tied weights appear once (under their first name). `adapter_only`: see `weights`."""
        raise NotImplementedError

    def stream_weights(
        self, dtype: torch.dtype | None = None, adapter_only: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Collective, in lockstep on every rank: each weight in turn, full, on this rank's device, in
        `dtype` if it is a floating tensor (None, and every integer buffer: its own dtype; the masters
        are fp32 under mixed precision), cast BEFORE it is
        gathered where the shards allow it (half the bytes of an fp32 gather for a bf16 engine). A
        tensor is this rank's only until the next one is asked for: no rank ever holds the whole model
        in full. Tied weights come once, as in `weight_shapes`. `adapter_only`: see `weights` (a LoRA
        adapter-only sync gathers nothing of the frozen base)."""
        raise NotImplementedError

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Collective: rank 0 gets a LoRA policy's adapter, full fp32 (the masters) on CPU, by PEFT file
        key (`rrm_ray.lora.file_key`); the other ranks get {}."""
        rank0 = dist.get_rank() == 0
        out: dict[str, torch.Tensor] = {}
        for name, full in self.stream_weights(None, adapter_only=True):
            if rank0:
                out[lora.file_key(name)] = full.detach().to("cpu", torch.float32, copy=True)
        return out

    def full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Collective: rank 0 gets every weight, full and on CPU, in `dtype` (see `stream_weights`);
        the other ranks get {}. Tied names are both present. For writing an HF directory; weight syncs
        stream instead."""
        rank0 = dist.get_rank() == 0
        out: dict[str, torch.Tensor] = {}
        for name, full in self.stream_weights(dtype):
            if rank0:
                out[name] = full.detach().to("cpu", copy=True)
        if rank0:
            out.update({alias: out[name] for alias, name in self._named_state()[1].items()})
        return out

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError
