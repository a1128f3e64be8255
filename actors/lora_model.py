"""A LoRA policy on the learner (`learner.lora.rank` > 0): `peft` wraps the HF model before it is sharded.

`peft.get_peft_model` replaces each targeted linear of the HF model, in place, by a LoRA layer (the
frozen `base_layer` plus `lora_A` [r, in] and `lora_B` [out, r], B starting at zero so the policy starts
as the base) and freezes every other parameter. The backends then shard that same HF model as they
shard a full one (FSDP2: per decoder layer, then the root; DeepSpeed: the engine's module), so the
learner's parameter names are the HF model's (`model.layers.0.self_attn.q_proj.lora_A.default.weight`,
see `rrm_ray.lora` for the other spellings) and its forward is still the log-prob forward that
`actors.model_io.install_logprob_forward` put on the HF model.

Precision: the frozen base is held in the compute dtype (model.dtype; no fp32 master of it, as nothing
updates it), the adapter's trainable weights in fp32 (their masters: FSDP2 all-gathers them in the
compute dtype, DeepSpeed keeps fp32 master partitions of the module's low-precision copy).

The reference (KL penalty) is the same model with the adapter switched off (`adapter_off`): the base,
exactly, with no second copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from rrm_ray import lora

if TYPE_CHECKING:
    from rrm_ray.config import LoRAConfig


def wrap_lora(
    model: torch.nn.Module, lora: LoRAConfig, base_dtype: torch.dtype, adapter_dtype: torch.dtype | None
) -> Any:
    """Wrap `model` (in place) with a LoRA adapter; returns the `PeftModel` (its `disable_adapter`
    switches the adapter off). The frozen parameters are cast to `base_dtype`, the adapter's to
    `adapter_dtype` (None: left as peft made them, the base's dtype)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype=False: the adapter's dtype is set below, not by peft's own rule
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=False)
    for p in model.parameters():
        if hasattr(p, "ds_id"):  # a ZeRO-3 partition: already in the dtype its config gives it
            continue
        dtype = base_dtype if not p.requires_grad else adapter_dtype or p.dtype
        p.data = p.data.to(dtype)
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()  # frozen embeddings: checkpointed layers need inputs with grad
    return peft_model


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (the adapter's, when LoRA is on; else all)."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def adapter_off(peft_model: Any) -> Iterator[None]:
    """The base model inside: every LoRA layer skips its adapter (`PeftModel.disable_adapter`)."""
    with peft_model.disable_adapter():
        yield


def adapter_names(model: torch.nn.Module) -> list[str]:
    """The learner's names of the adapter's tensors (the trainable parameters), in model order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def initial_adapter(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The adapter's starting values by learner name, fp32 on CPU, the same on every rank and backend
    whatever the model's state (built empty, partitioned): peft's default init (`init_lora_weights=
    True`: A kaiming-uniform with a = sqrt(5), B zero, so the policy starts as the base), drawn from a
    generator of its own seeded with `seed`, in model order. Shapes are the full ones (ZeRO-3's
    `ds_shape`)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = tuple(getattr(p, "ds_shape", p.shape))
        t = torch.zeros(shape, dtype=torch.float32)
        if ".lora_A." in name:
            torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)
        out[name] = t
    return out


def adapter_only(names: list[str]) -> list[str]:
    """The adapter's names among a state dict's (learner spelling)."""
    return [n for n in names if lora.file_key(n) is not None]


def merged_meta(
    meta: list[tuple[str, tuple[int, ...], torch.dtype]],
) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """A LoRA model's weight list as the merged base's (`learner.lora.sync: merged`): the adapter's
    tensors left out, each wrapped linear's `base_layer.weight` under its base name."""
    return [(lora.base_key(n) or n, shape, dtype) for n, shape, dtype in meta if lora.file_key(n) is None]


def merged_weights(
    stream: Callable[[torch.dtype | None], Iterator[tuple[str, torch.Tensor]]],
    factor: float,
    dtype: torch.dtype | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged base's tensors, in `merged_meta` order: streamed in their own dtypes (the frozen base
    in the compute dtype, the adapter's fp32 masters), each wrapped linear merged in fp32 and rounded
    once to its base dtype (`rrm_ray.lora.merged_weight`), then cast to `dtype` (None: kept)."""
    for name, t in lora.merged_stream(stream(None), factor):
        yield name, t.to(dtype) if dtype is not None and t.is_floating_point() else t
