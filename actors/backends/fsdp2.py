"""The FSDP2 backend: `fully_shard` on each decoder layer and the root, fp32 sharded masters,
compute-dtype all-gathers and fp32 reduce-scatters, checkpoints through torch.distributed.checkpoint."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from accelerate import init_empty_weights
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from actors.backends.base import Backend, StepOutcome
from actors.lora_model import initial_adapter, trainable, wrap_lora
from actors.model_io import checkpoint_files, install_logprob_forward, load_hf_model, read_tensor
from rrm_ray import lora

if TYPE_CHECKING:
    from rrm_ray.config import LearnerConfig

DCP_DIR = "dcp"


def _params_to(
    module: torch.nn.Module, device: torch.device, dtype: torch.dtype, frozen_dtype: torch.dtype | None = None
) -> None:
    """Move and cast the not yet sharded parameters of `module`, in place; buffers keep their dtype
    (the rotary inv_freq stays fp32) and are moved by fully_shard. Parameters on the meta device (a
    rank that does not read the checkpoint) are only cast: they get their values from rank 0.
    `frozen_dtype`: the dtype of parameters that do not train (a LoRA policy's base), if not `dtype`."""

    for p in module.parameters():
        if not isinstance(p, DTensor):  # already sharded by an inner fully_shard
            to = dtype if frozen_dtype is None or p.requires_grad else frozen_dtype
            p.data = p.data.to(dtype=to) if p.is_meta else p.data.to(device=device, dtype=to)


def _load_from_rank0(
    model: torch.nn.Module, model_path: str, device: torch.device, adapter: dict[str, torch.Tensor]
) -> None:
    """Fill a sharded model built without weights (meta parameters, real buffers) from the checkpoint
    that rank 0 alone reads, one tensor at a time: rank 0 names the tensors, then for each torch's
    `set_model_state_dict(broadcast_from_rank0=True)` broadcasts it and every rank keeps its slice. No
    rank holds more than its shards and one full tensor: one copy of each tensor is read per job, not
    one per rank. Buffers are not in the checkpoint (the rotary inv_freq is computed in __init__): the
    real ones the empty-weights build made are put back after `to_empty` allocated the shards.
    A LoRA policy: a wrapped linear's checkpoint weight `...q_proj.weight` fills `...q_proj.base_layer.
    weight`, and rank 0's `adapter` (`actors.lora_model.initial_adapter`) the adapter's tensors."""
    rank0 = dist.get_rank() == 0
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)  # shards allocated, tied parameters still tied; values follow
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    files = checkpoint_files(model_path) if rank0 else {}
    held = set(model.state_dict()) if rank0 else set()
    names = [[(name, _held_as(name, held)) for name in files] + [(n, n) for n in adapter]]
    dist.broadcast_object_list(names, src=0)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    for name, key in names[0]:  # tensors the model does not hold (a tied lm_head saved anyway) are ignored
        value = (adapter[name] if name in adapter else read_tensor(files, name)) if rank0 else None
        set_model_state_dict(model, {key: value} if rank0 else {}, options=options)


def _held_as(name: str, held: set[str]) -> str:
    """A checkpoint tensor's name in the model: itself, or inside the LoRA layer that wraps its linear."""
    if name in held:
        return name
    module, _, leaf = name.rpartition(".")
    wrapped = f"{module}.base_layer.{leaf}"
    return wrapped if wrapped in held else name


class FSDP2Backend(Backend):
    """`fully_shard` on every decoder layer, then the root; torch AdamW over the DTensor shards.

    Trainable: fp32 sharded parameters (the masters) whatever the checkpoint's dtype, and under bf16 a
    `MixedPrecisionPolicy` that all-gathers them in bf16 for compute and reduce-scatters gradients in
    fp32. The model is built without weights, sharded, and filled from the checkpoint that rank 0 reads
    one tensor at a time (`_load_from_rank0`), so no rank, host or device, ever holds the full model.
    Frozen: the compute dtype only. `model` (benchmarks) replaces loading from `model_path`.
    LoRA (`learner.lora.rank` > 0): peft wraps the model before it is sharded; the frozen base is held
    in the compute dtype, the adapter in fp32 (FSDP2 asks uniform dtypes of the trainable parameters
    only), AdamW sees the adapter only, and checkpoints hold the adapter and its optimizer state.
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
        from_checkpoint = model is None
        if from_checkpoint:  # its structure only (meta parameters, real buffers); weights from rank 0
            with init_empty_weights():
                model = load_hf_model(model_path, dtype if frozen else "auto", device, grad_ckpt, True)
            model.tie_weights()  # built empty it comes untied, and tying inside the context re-creates
        else:
            if grad_ckpt:
                model.gradient_checkpointing_enable()
            install_logprob_forward(model)
        param_dtype = dtype if frozen else torch.float32
        adapter: dict[str, torch.Tensor] = {}
        frozen_dtype = None
        if cfg.lora.rank and not frozen:
            self.peft = wrap_lora(model, cfg.lora, dtype, torch.float32)
            adapter = initial_adapter(model, torch.initial_seed())
            frozen_dtype = dtype
        mixed = not frozen and dtype != torch.float32
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if mixed else None
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in model.model.layers:  # one FSDP unit per decoder layer, then the root
            _params_to(layer, device, param_dtype, frozen_dtype)
            fully_shard(layer, mesh=mesh, **({"mp_policy": mp} if mp else {}))
        _params_to(model, device, param_dtype, frozen_dtype)  # embeddings, final norm, lm_head
        fully_shard(model, mesh=mesh, **({"mp_policy": mp} if mp else {}))
        if from_checkpoint:
            _load_from_rank0(model, model_path, device, adapter)
        elif adapter:
            set_model_state_dict(model, adapter, options=StateDictOptions(full_state_dict=True, strict=False))
        self.model = model
        self.optimizer: torch.optim.Optimizer | None = None
        # Checkpoints of a LoRA policy leave the frozen base out (it is model.path's)
        adapter_only = self.peft is not None  # (not strict: the loaded state lacks the base, by design)
        self.state_options = StateDictOptions(ignore_frozen_params=adapter_only, strict=not adapter_only)
        if frozen:
            model.eval()
            model.requires_grad_(False)
        else:
            self.optimizer = torch.optim.AdamW(
                trainable(model),
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

    def weight_meta(self, adapter_only: bool = False) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(name, tuple(t.shape), t.dtype) for name, t in self.weights(adapter_only)]

    @torch.no_grad()
    def stream_weights(
        self, dtype: torch.dtype | None = None, adapter_only: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in self.weights(adapter_only):
            # DTensor.to(dtype) casts the local shard only (placements kept): the gather moves the
            # engine's dtype, not the fp32 masters.
            cast = dtype is not None and t.is_floating_point()
            local = t.detach().to(dtype) if cast else t.detach()
            yield name, local.full_tensor() if isinstance(local, DTensor) else local

    def _sharded_state(self) -> dict[str, Any]:

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=self.state_options)
        if self.peft is not None:  # a tied weight's second name escapes ignore_frozen_params
            model_sd = {k: v for k, v in model_sd.items() if lora.file_key(k) is not None}
        return {"model": model_sd, "optim": optim_sd}

    def save(self, directory: Path) -> None:

        dcp.save(self._sharded_state(), checkpoint_id=str(directory / DCP_DIR))

    def load(self, directory: Path) -> None:

        state = self._sharded_state()  # the shapes to load into (initialises empty AdamW state)
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=self.state_options,
        )
