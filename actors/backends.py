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
scaler here, so float16 needs DeepSpeed (validated in `rrm_ray.config`).

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

`export_checkpoint_to_hf` turns either into an HF model directory without Ray or a process group.
This module imports only torch at the top (DeepSpeed lazily): `bench/gpu/learner_step.py` uses it on a
machine that has torch and transformers only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
META_FILE = "learner_meta.json"
DCP_DIR = "dcp"
DS_TAG = "deepspeed"
GATHER_NUMEL = 1 << 26  # ZeRO-3 export gathers at most this many elements at once


class CheckpointError(ValueError):
    """A learner checkpoint is missing, incomplete or does not fit this learner."""


def load_hf_model(model_path: str, dtype: torch.dtype | str, device: torch.device, grad_ckpt: bool):
    """An HF causal LM in `dtype` ("auto": the checkpoint's own) on `device`, with the log-prob forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    install_logprob_forward(model)
    return model


def install_logprob_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Give an HF causal LM a forward that returns token log-probs without building the logits.

    `model(input_ids=, attention_mask=, logprob_temperature=T, logprob_chunk=C, logprob_entropy=E)`
    returns (log-probs [B, L-1] of input_ids[:, 1:], entropy [B, L-1] or None), computed from the
    decoder's hidden states by `rrm_ray.algo.head_logprobs` in chunks of C rows (fp32 softmax, at most
    two [C, V] fp32 blocks at a time, recomputed in backward). Without `logprob_temperature` it is the
    HF forward.

    Why through `forward` and the head's own `forward`: FSDP2 unshards the root's parameters (embedding,
    final norm, lm_head) around the root module's call, and ZeRO-3 gathers each module's parameters
    around that module's call (and again before its backward). So the projection must run inside
    `lm_head(...)`, itself inside `model(...)`, to see full weights on both backends. The decoder's
    layers keep their own FSDP units / ZeRO hooks. Instance attributes, so the class (and FSDP2's
    dynamic subclass of it) is untouched.
    """
    from rrm_ray import algo

    head, decoder = model.get_output_embeddings(), model.get_decoder()
    head_forward, hf_forward = head.forward, model.forward

    def head_call(hidden, targets=None, temperature=1.0, chunk=1024, entropy=False):
        if targets is None:
            return head_forward(hidden)
        return algo.head_logprobs(
            hidden, head.weight, targets, temperature, chunk, bias=head.bias, with_entropy=entropy
        )

    def forward(*args, logprob_temperature=None, logprob_chunk=1024, logprob_entropy=False, **kwargs):
        if logprob_temperature is None:
            return hf_forward(*args, **kwargs)
        input_ids = kwargs["input_ids"]
        hidden = decoder(
            input_ids=input_ids, attention_mask=kwargs.get("attention_mask"), use_cache=False
        ).last_hidden_state  # [B, L, H]
        logprobs, entropy = head(
            hidden[:, :-1],
            targets=input_ids[:, 1:],
            temperature=logprob_temperature,
            chunk=logprob_chunk,
            entropy=logprob_entropy,
        )
        # head_logprobs returns views ([B*L] -> [B, L]); FSDP2 warns about module outputs that are views.
        return logprobs.clone(), (None if entropy is None else entropy.clone())

    head.forward = head_call
    model.forward = forward
    return model


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


# -- FSDP2 ------------------------------------------------------------------------------------------------


def _params_to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move and cast the not yet sharded parameters of `module`, in place; buffers keep their dtype
    (the rotary inv_freq stays fp32) and are moved by fully_shard."""
    from torch.distributed.tensor import DTensor

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
        cfg: dict[str, Any],
        frozen: bool,
        model: torch.nn.Module | None = None,
    ) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if dtype == torch.float16 and not frozen:
            raise ValueError("FSDP2 trains in float32 or bfloat16 (no loss scaler); float16 needs deepspeed")
        grad_ckpt = cfg["gradient_checkpointing"] and not frozen
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
                lr=cfg["lr"],
                betas=(cfg["adam_beta1"], cfg["adam_beta2"]),
                weight_decay=cfg["weight_decay"],
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
        from torch.distributed.tensor import DTensor

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
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(), checkpoint_id=str(directory / DCP_DIR))

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._sharded_state()  # the shapes to load into (initialises empty AdamW state)
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )


# -- DeepSpeed --------------------------------------------------------------------------------------------


def ds_config(cfg: dict[str, Any], dtype: torch.dtype, device: torch.device, frozen: bool) -> dict:
    """The DeepSpeed config for our learner dict (see the module docstring for the scaling choices)."""
    stage = int(cfg.get("zero_stage", 3))
    offload_opt, offload_params = bool(cfg.get("offload_optimizer")), bool(cfg.get("offload_params"))
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
        config["gradient_clipping"] = float(cfg["grad_clip"])
        config["zero_force_ds_cpu_optimizer"] = False  # torch AdamW also with optimizer offload
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg["lr"],
                "betas": [cfg["adam_beta1"], cfg["adam_beta2"]],
                "eps": 1e-8,  # torch.optim.AdamW's default, as the FSDP2 backend uses
                "weight_decay": cfg["weight_decay"],
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
    """A DeepSpeed engine with ZeRO stage 2 or 3 over torch AdamW; a frozen one has no optimizer."""

    name = "deepspeed"

    def __init__(
        self, model_path: str, dtype: torch.dtype, device: torch.device, cfg: dict[str, Any], frozen: bool
    ) -> None:
        os.environ.setdefault("LOCAL_RANK", "0")  # Ray shows each rank exactly its own device
        deepspeed = import_deepspeed(device.type)
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        self.deepspeed = deepspeed
        model = load_hf_model(model_path, dtype, device, cfg["gradient_checkpointing"] and not frozen)
        config = ds_config(cfg, dtype, device, frozen)
        self.stage = config["zero_optimization"]["stage"]
        if frozen:
            model.eval()
            model.requires_grad_(False)
        if frozen and self.stage < 3:  # nothing to shard without an optimizer: a plain replica
            self.model, self.engine = model, None
            return
        params = None if frozen else model.parameters()
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
        self.model = self.engine
        if frozen:
            self.engine.eval()

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

    def full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        if dtype is None and self._has_masters():
            return self._full_masters()
        sd = self._full_module_state()
        return {k: v.to(dtype) for k, v in sd.items()} if dtype is not None else sd

    def _full_masters(self) -> dict[str, torch.Tensor]:
        """The fp32 master weights, one parameter at a time (collective: DeepSpeed all-reduces each)."""
        from deepspeed.utils import safe_get_full_fp32_param

        rank0 = dist.get_rank() == 0
        out: dict[str, torch.Tensor] = {}
        gathered: dict[int, torch.Tensor | None] = {}
        for name, t in self.engine.module.state_dict(keep_vars=True).items():
            if id(t) not in gathered:
                master = safe_get_full_fp32_param(t) if isinstance(t, torch.nn.Parameter) else None
                full = master if master is not None else t  # buffers: as they are
                gathered[id(t)] = full.detach().to("cpu", copy=True) if rank0 else None
            if rank0:
                out[name] = gathered[id(t)]
        return out

    def _full_module_state(self) -> dict[str, torch.Tensor]:
        module = self.engine.module if self.engine is not None else self.model
        rank0 = dist.get_rank() == 0
        if self.stage < 3:  # ZeRO-2 keeps full parameters on every rank
            if not rank0:
                return {}
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        # ZeRO-3: gather parameters a bounded group at a time; tied names share one gathered copy.
        entries = module.state_dict(keep_vars=True)
        unique: dict[int, torch.Tensor] = {}
        for t in entries.values():
            unique.setdefault(id(t), t)
        copies: dict[int, torch.Tensor] = {}
        group: list[torch.Tensor] = []
        numel = 0
        tensors = list(unique.values())
        for i, t in enumerate(tensors):
            group.append(t)
            numel += getattr(t, "ds_numel", t.numel())
            if numel >= GATHER_NUMEL or i == len(tensors) - 1:
                params = [p for p in group if hasattr(p, "ds_id")]
                with self.deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    if rank0:
                        for p in group:
                            copies[id(p)] = p.detach().to("cpu", copy=True)
                group, numel = [], 0
        return {k: copies[id(t)] for k, t in entries.items()} if rank0 else {}

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=DS_TAG, client_state={}, save_latest=True)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise CheckpointError(f"{directory}: DeepSpeed found no checkpoint under tag {DS_TAG!r}")


BACKENDS: dict[str, type[Backend]] = {"fsdp2": FSDP2Backend, "deepspeed": DeepSpeedBackend}


def build_backend(
    name: str, model_path: str, dtype: torch.dtype, device: torch.device, cfg: dict, frozen: bool = False
) -> Backend:
    """Build one rank's backend; the process group must already be initialised."""
    if name not in BACKENDS:
        raise ValueError(f"learner.backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name](model_path, dtype, device, cfg, frozen)


# -- checkpoint metadata and HF export (no process group needed) ------------------------------------------


def read_meta(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no {META_FILE}; not a (complete) learner checkpoint")
    return json.loads(path.read_text())


def write_hf(
    state_dict: dict[str, torch.Tensor],
    model_path: str,
    dtype: torch.dtype,
    out_dir: str | Path,
    tokenizer_dir: str | None = None,
) -> Path:
    """Write an HF model directory: safetensors, plus config, generation config and tokenizer copied
    from model_path (the tokenizer from tokenizer_dir if given).

    Written to `out_dir.partial` and renamed, so a reader never sees half a model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir)
    config = AutoConfig.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"state dict does not fit {model_path}: missing {missing}, unexpected {unexpected}"
        )
    if tied:
        model.tie_weights()
    if Path(model_path, "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_path)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir or model_path).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def export_checkpoint_to_hf(
    checkpoint_dir: str | Path, model_path: str, out_dir: str | Path, dtype: str | None = None
) -> Path:
    """Turn a learner checkpoint (either backend) into an HF model directory; no Ray, no process group.

    `model_path` is the HF directory the run started from: its config and tokenizer are copied.
    The checkpoint holds the master weights (fp32 under mixed precision); they are written in `dtype`
    (float32 | bfloat16 | float16), by default the run's model dtype recorded in the checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    meta = read_meta(checkpoint_dir)
    name = meta["dtype"] if dtype is None else dtype
    if name not in DTYPES:
        raise CheckpointError(f"export dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    out_dtype = DTYPES[name]
    if meta["backend"] == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from transformers import AutoConfig, AutoModelForCausalLM

        # The dtype the shards were saved in: fp32 masters (format 2), the run's dtype before that.
        master = DTYPES[meta.get("master_dtype", meta["dtype"])]
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=master)
        state = {"model": model.state_dict()}
        with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(checkpoint_dir / DCP_DIR), no_dist=True)
        sd = state["model"]
    elif meta["backend"] == "deepspeed":
        import_deepspeed("cuda" if torch.cuda.is_available() else "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=DS_TAG)
    else:
        raise CheckpointError(f"{checkpoint_dir}/{META_FILE}: unknown backend {meta['backend']!r}")
    sd = {k: v.to(out_dtype) for k, v in sd.items()}
    return write_hf(sd, model_path, out_dtype, out_dir)
