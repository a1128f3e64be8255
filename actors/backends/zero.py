"""The DeepSpeed ZeRO-2/3 backend over torch AdamW (DeepSpeed is imported when a backend is built)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from actors.backends.base import Backend, StepOutcome
from actors.lora_model import initial_adapter, trainable, wrap_lora
from actors.model_io import CheckpointError, checkpoint_files, load_hf_model, read_tensor

if TYPE_CHECKING:
    from rrm_ray.config import LearnerConfig

DS_TAG = "deepspeed"


def ds_config(cfg: LearnerConfig, dtype: torch.dtype, device: torch.device, frozen: bool) -> dict:
    """The DeepSpeed config for our learner dict (see the module docstring for the scaling choices)."""
    stage = cfg.zero_stage
    offload_opt, offload_params = cfg.offload_optimizer, cfg.offload_params
    if stage not in (2, 3):
        raise ValueError(f"learner.zero_stage must be 2 or 3, got {stage}")
    if offload_params and stage != 3:
        raise ValueError("learner.offload_params needs learner.zero_stage=3 (ZeRO-2 keeps full parameters)")
    if (offload_opt or offload_params) and device.type == "cpu":
        raise ValueError("learner.offload_optimizer/offload_params move state off the GPU: cuda only")
    zero: dict[str, Any] = {"stage": stage}
    if offload_opt:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: we feed the engine ourselves
        "gradient_accumulation_steps": 1,  # never rescale the loss; the learner marks boundaries
        "zero_optimization": zero,
        # bf16/fp16: the ZeRO optimizer keeps fp32 master partitions (bf16_master_weights_and_grads
        # stays off) and skips a step whose gradients overflowed; fp16 adds dynamic loss scaling.
        "bf16": {"enabled": dtype == torch.bfloat16, "check_grad_overflow": True},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if dtype != torch.float32 and not frozen:  # accumulate and reduce micro-batch gradients in fp32
        config["data_types"] = {"grad_accum_dtype": "fp32"}
        config["communication_data_type"] = "fp32"
    if not frozen:
        config["gradient_clipping"] = float(cfg.grad_clip)
        config["zero_force_ds_cpu_optimizer"] = False  # torch AdamW also with optimizer offload
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": [cfg.adam_beta1, cfg.adam_beta2],
                "eps": 1e-8,  # torch.optim.AdamW's default, as the FSDP2 backend uses
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
            },
        }
    return config


def import_deepspeed(device_type: str):
    """Import DeepSpeed, choosing its CPU accelerator first when there is no GPU (read at import)."""
    if device_type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    return deepspeed


class DeepSpeedBackend(Backend):
    """A DeepSpeed engine with ZeRO stage 2 or 3 over torch AdamW; a frozen one has no optimizer.

    LoRA (`learner.lora.rank` > 0): peft wraps the loaded model before `deepspeed.initialize` (ZeRO-3:
    the base is already partitioned; the adapter's new parameters are partitioned by the engine), the
    frozen base stays in the compute dtype, AdamW sees the adapter only, and checkpoints exclude the
    frozen parameters."""

    name = "deepspeed"

    def __init__(
        self, model_path: str, dtype: torch.dtype, device: torch.device, cfg: LearnerConfig, frozen: bool
    ) -> None:
        os.environ.setdefault("LOCAL_RANK", "0")  # Ray shows each rank exactly its own device
        deepspeed = import_deepspeed(device.type)
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        self.deepspeed = deepspeed
        config = ds_config(cfg, dtype, device, frozen)
        self.stage = config["zero_optimization"]["stage"]
        grad_ckpt = cfg.gradient_checkpointing and not frozen
        if self.stage == 3:
            model = self._load_partitioned(model_path, dtype, config, grad_ckpt)
        else:  # ZeRO-2 replicates the parameters on every rank: each reads them
            model = load_hf_model(model_path, dtype, device, grad_ckpt)
        if frozen:
            model.eval()
            model.requires_grad_(False)
        elif cfg.lora.rank:
            self.peft = wrap_lora(model, cfg.lora, dtype, torch.float32)
            with torch.no_grad():  # the same start as FSDP2's (peft's init, from a generator of our own)
                named = dict(model.named_parameters())
                for name, value in initial_adapter(model, torch.initial_seed()).items():
                    named[name].copy_(value)
        if frozen and self.stage < 3:  # nothing to shard without an optimizer: a plain replica
            self.model, self.engine = model, None
            return
        params = None if frozen else trainable(model)
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
        self.model = self.engine
        if frozen:
            self.engine.eval()

    def _load_partitioned(
        self, model_path: str, dtype: torch.dtype, config: dict, grad_ckpt: bool
    ) -> torch.nn.Module:
        """ZeRO-3's own way in: the model is built under `zero.Init`, so each rank holds only its
        partition of every parameter from the start, and rank 0 alone reads the checkpoint, one tensor
        at a time (safetensors, memory-mapped), copying it in while that parameter is gathered; every
        other rank keeps its slice. No rank ever holds the whole model."""
        # Import the model code (torch._dynamo among it) before zero.Init patches tensor construction:
        # imported under the patch, torch._dynamo's tensor polyfills fail their signature check.
        from transformers import GenerationMixin  # noqa: F401

        deepspeed = self.deepspeed
        # The partitions' dtype comes from the config's bf16/fp16 sections (float32 when neither): an
        # explicit `dtype` would be ignored off-GPU (deepspeed 0.19 `Init._set_dtype` picks bf16 there).
        with deepspeed.zero.Init(config_dict_or_path=config):
            model = load_hf_model(model_path, dtype, torch.device("cpu"), grad_ckpt, structure_only=True)
        model.tie_weights()
        rank0 = dist.get_rank() == 0
        files = checkpoint_files(model_path) if rank0 else {}
        for name, param in model.named_parameters():  # tied parameters come once, under their first name
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if rank0:
                    param.data.copy_(read_tensor(files, name))
        return model

    def start_micro_batch(self, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def clip_and_step(self, max_norm: float) -> StepOutcome:
        self.engine.optimizer.clip_grad = max(max_norm, 0.0)  # ZeRO-2/3 clip inside their step()
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()  # also zeroes the gradients; skips the update when their norm is inf/nan
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return StepOutcome(norm, math.isfinite(norm))  # ZeRO reports a skipped step's norm as inf

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _has_masters(self) -> bool:
        """bf16/fp16 training: the module holds low-precision copies, the optimizer the fp32 masters."""
        return (
            self.engine is not None
            and self.engine.optimizer is not None
            and (self.engine.bfloat16_enabled() or self.engine.fp16_enabled())
        )

    def module(self) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else self.model

    def weight_meta(self, adapter_only: bool = False) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [
            (name, tuple(getattr(t, "ds_shape", t.shape)), t.dtype) for name, t in self.weights(adapter_only)
        ]

    @torch.no_grad()
    def stream_weights(
        self, dtype: torch.dtype | None = None, adapter_only: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """None under bf16/fp16 training: the fp32 masters (DeepSpeed all-reduces each parameter's
        master); otherwise the module's weights (ZeRO-3 gathers one parameter at a time), cast after
        the gather (ZeRO's partitions are the module's dtype already)."""
        from deepspeed.utils import safe_get_full_fp32_param

        masters = dtype is None and self._has_masters()
        for name, t in self.weights(adapter_only):
            to = dtype if dtype is not None and t.is_floating_point() else t.dtype
            if masters and isinstance(t, torch.nn.Parameter) and t.requires_grad:
                yield name, safe_get_full_fp32_param(t)
            elif self.stage >= 3 and hasattr(t, "ds_id"):
                with self.deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                    yield name, t.detach().to(to, copy=True)
            else:  # ZeRO-2 parameters and every buffer are full on every rank
                yield name, t.detach().to(to)

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(
            str(directory),
            tag=DS_TAG,
            client_state={},
            save_latest=True,
            exclude_frozen_parameters=self.peft is not None,  # a LoRA base is model.path's
        )

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory),
            tag=DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            load_module_strict=self.peft is None,  # a LoRA checkpoint holds the adapter only
        )
        if path is None:
            raise CheckpointError(f"{directory}: DeepSpeed found no checkpoint under tag {DS_TAG!r}")
