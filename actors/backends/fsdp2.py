"""The FSDP2 backend: `fully_shard` on each decoder layer and the root, fp32 sharded masters,
compute-dtype all-gathers and fp32 reduce-scatters, checkpoints through torch.distributed.checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from actors.backends.base import Backend, StepOutcome
from actors.model_io import install_logprob_forward, load_hf_model

if TYPE_CHECKING:
    from rrm_ray.config import LearnerConfig

DCP_DIR = "dcp"


def _params_to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move and cast the not yet sharded parameters of `module`, in place; buffers keep their dtype
    (the rotary inv_freq stays fp32) and are moved by fully_shard."""

    for p in module.parameters():
        if not isinstance(p, DTensor):  # already sharded by an inner fully_shard
            p.data = p.data.to(device=device, dtype=dtype)


class FSDP2Backend(Backend):
    """`fully_shard` on every decoder layer, then the root; torch AdamW over the DTensor shards.

    Trainable: fp32 sharded parameters (the masters) whatever the checkpoint's dtype, and under bf16 a
    `MixedPrecisionPolicy` that all-gathers them in bf16 for compute and reduce-scatters gradients in
    fp32. The model is loaded on CPU in the checkpoint's dtype and each unit is upcast on its way to the
    device just before it is sharded, so no device ever holds the full fp32 model. Frozen: the compute
    dtype only. `model` (benchmarks) replaces loading from `model_path`.
    """

    name = "fsdp2"

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        device: torch.device,
        cfg: LearnerConfig,
        frozen: bool,
        model: torch.nn.Module | None = None,
    ) -> None:

        if dtype == torch.float16 and not frozen:
            raise ValueError("FSDP2 trains in float32 or bfloat16 (no loss scaler); float16 needs deepspeed")
        grad_ckpt = cfg.gradient_checkpointing and not frozen
        if model is None:
            cpu = torch.device("cpu")
            model = load_hf_model(model_path, dtype if frozen else "auto", cpu, grad_ckpt)
        else:
            if grad_ckpt:
                model.gradient_checkpointing_enable()
            install_logprob_forward(model)
        param_dtype = dtype if frozen else torch.float32
        mixed = not frozen and dtype != torch.float32
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if mixed else None
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in model.model.layers:  # one FSDP unit per decoder layer, then the root
            _params_to(layer, device, param_dtype)
            fully_shard(layer, mesh=mesh, **({"mp_policy": mp} if mp else {}))
        _params_to(model, device, param_dtype)  # embeddings, final norm, lm_head
        fully_shard(model, mesh=mesh, **({"mp_policy": mp} if mp else {}))
        self.model = model
        self.optimizer: torch.optim.Optimizer | None = None
        if frozen:
            model.eval()
            model.requires_grad_(False)
        else:
            self.optimizer = torch.optim.AdamW(
                model.parameters(),
                lr=cfg.lr,
                betas=(cfg.adam_beta1, cfg.adam_beta2),
                weight_decay=cfg.weight_decay,
            )

    def clip_and_step(self, max_norm: float) -> StepOutcome:
        limit = max_norm if max_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = float(norm)  # the same all-reduced number on every rank, so all ranks skip together
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.zero_grad()
        return StepOutcome(norm, applied)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """One parameter at a time (all-gather, cast, copy to CPU on rank 0): the peak is one full
        tensor on the device, not the whole model in fp32."""

        rank0 = dist.get_rank() == 0
        out: dict[str, torch.Tensor] = {}
        gathered: dict[int, torch.Tensor] = {}  # tied names share one tensor: gather it once
        for name, t in self.model.state_dict(keep_vars=True).items():
            if id(t) not in gathered:
                full = t.full_tensor() if isinstance(t, DTensor) else t
                gathered[id(t)] = full.detach().to("cpu", dtype or full.dtype, copy=True) if rank0 else None
                del full
            if rank0:
                out[name] = gathered[id(t)]
        return out

    def _sharded_state(self) -> dict[str, Any]:

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, directory: Path) -> None:

        dcp.save(self._sharded_state(), checkpoint_id=str(directory / DCP_DIR))

    def load(self, directory: Path) -> None:

        state = self._sharded_state()  # the shapes to load into (initialises empty AdamW state)
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
