"""Learner backends: who owns one rank's sharded model and optimizer (FSDP2 or DeepSpeed ZeRO-2/3).

The learner actor (`actors/learner.py`) runs the algorithm (forward passes, losses, normalisation);
a backend owns the parameters and the optimizer and offers the few operations the algorithm needs:

    backend.model(input_ids=..., attention_mask=...,    forward (FSDP2 module or DeepSpeed engine) that
                  logprob_temperature=T, ...)           returns token log-probs, see `install_logprob_forward`
    backend.start_micro_batch(last)                     before each forward of an accumulation
    backend.backward(loss)                              accumulate gradients
    backend.clip_and_step(max_norm) -> StepOutcome      clip to max_norm, AdamW step (skipped when the
                                                        gradient norm is inf/nan), zero the grads
    backend.full_state_dict(dtype=None)                 collective; rank 0 gets full CPU tensors
    backend.save(dir) / backend.load(dir)               collective; model shards + optimizer state

Mixed precision (model.dtype bfloat16 or float16), as the peers do it: fp32 master weights and AdamW
state, low-precision compute, fp32 gradient reduction. FSDP2 keeps its sharded parameters in fp32 and
all-gathers them in the compute dtype (`MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)`);
DeepSpeed runs the module in bf16/fp16 and keeps fp32 master partitions in its ZeRO optimizer (its
"bf16"/"fp16" sections; gradients accumulated and reduced in fp32). Training bf16 weights directly
would round away any update smaller than half a bf16 ulp (|w| * 2**-8): at lr 1e-6 almost all of them.
Frozen copies (the reference) have no optimizer and hold the compute dtype only. FSDP2 has no loss
scaler here, so float16 needs DeepSpeed (validated in `rrm_ray.validation`).

Loss scaling, the same for both backends: each rank's gradient is AVERAGED over ranks (FSDP2's
reduce-scatter and ZeRO's reduce both divide by the world size), so the learner multiplies its globally
normalised loss by the world size. DeepSpeed would additionally divide every loss by its
`gradient_accumulation_steps`; we configure that to 1 and mark the accumulation boundary ourselves
(`set_gradient_accumulation_boundary`), so the engine neither rescales the loss nor steps early, however
many micro-batches a mini-batch has. AdamW is torch's own on both sides (DeepSpeed: `torch_adam`), with
the same lr, betas, eps and weight decay on every parameter; clipping uses the same coefficient
max_norm / (norm + 1e-6). A non-finite gradient norm skips the update on every rank (FSDP2: ours;
ZeRO: its own overflow check) and is reported in `StepOutcome`.

Checkpoint files written into `dir` by `save` (all ranks must call it; `dir` on a filesystem they share):

    fsdp2:      dir/dcp/.metadata, dir/dcp/__{rank}_0.distcp    torch.distributed.checkpoint of
                                                                {"model": ..., "optim": ...}, the
                                                                fp32 masters and AdamW state
    deepspeed:  dir/deepspeed/zero_pp_rank_{r}_mp_rank_00_optim_states.pt   each rank's fp32 master
                                                                            weights + AdamW shard
                dir/deepspeed/zero_pp_rank_{r}_mp_rank_00_model_states.pt   ZeRO-3, each rank
                dir/deepspeed/mp_rank_00_model_states.pt                    ZeRO-2, rank 0: full module
                dir/latest, dir/zero_to_fp32.py                 DeepSpeed's own tag pointer and script

`actors.export.export_checkpoint_to_hf` turns either into an HF model directory without Ray or a
process group. These modules import only torch at the top (DeepSpeed lazily, and the config schema
for type hints only): `bench/gpu/learner_step.py` uses them on a machine that has torch and
transformers only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from actors.backends.base import Backend, StepOutcome
from actors.backends.fsdp2 import FSDP2Backend
from actors.backends.zero import DeepSpeedBackend

if TYPE_CHECKING:
    from rrm_ray.config import LearnerConfig

__all__ = ["BACKENDS", "Backend", "DeepSpeedBackend", "FSDP2Backend", "StepOutcome", "build_backend"]

BACKENDS: dict[str, type[Backend]] = {"fsdp2": FSDP2Backend, "deepspeed": DeepSpeedBackend}


def build_backend(
    name: str,
    model_path: str,
    dtype: torch.dtype,
    device: torch.device,
    cfg: LearnerConfig,
    frozen: bool = False,
) -> Backend:
    """Build one rank's backend; the process group must already be initialised."""
    if name not in BACKENDS:
        raise ValueError(f"learner.backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name](model_path, dtype, device, cfg, frozen)
