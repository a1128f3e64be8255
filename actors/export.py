"""A learner checkpoint (either backend) as an HF model directory, or a LoRA checkpoint as its PEFT
adapter or merged into its base: `rrm-ray export`, no Ray needed."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from actors.backends.fsdp2 import DCP_DIR
from actors.backends.zero import DS_TAG, import_deepspeed
from actors.model_io import DTYPES, META_FILE, CheckpointError, read_meta, write_hf
from rrm_ray import lora


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


def export_checkpoint(
    checkpoint_dir: str | Path,
    model_path: str,
    out_dir: str | Path,
    dtype: str | None = None,
    merge: bool = False,
) -> Path:
    """`rrm-ray export`: a full-training checkpoint as an HF model directory; a LoRA checkpoint
    (`learner.lora.rank` > 0) as a PEFT adapter directory (adapter_config.json naming `model_path` as
    its base, adapter_model.safetensors, the tokenizer), or with `merge` as an HF model directory of the
    base with the adapter folded in (W + alpha/r * B @ A in fp32, then `dtype`)."""
    checkpoint_dir = Path(checkpoint_dir)
    meta = read_meta(checkpoint_dir)
    settings = meta.get("lora")
    if not settings:
        if merge:
            raise CheckpointError(
                f"{checkpoint_dir}: --merge folds a LoRA adapter into its base, but this checkpoint is of "
                "full training (learner.lora.rank=0): export it without --merge"
            )
        return export_checkpoint_to_hf(checkpoint_dir, model_path, out_dir, dtype)
    name = meta["dtype"] if dtype is None else dtype
    if name not in DTYPES:
        raise CheckpointError(f"export dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    out_dtype = DTYPES[name]
    adapter = read_adapter_state(checkpoint_dir, meta)
    config = lora.adapter_config(
        settings["rank"], settings["alpha"], settings["dropout"], settings["target_modules"], model_path
    )
    if merge:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).state_dict()
        merged = lora.merge_into(base, adapter, config)
        return write_hf({k: v.to(out_dtype) for k, v in merged.items()}, model_path, out_dtype, out_dir)
    from transformers import AutoTokenizer

    out = lora.write_adapter(out_dir, {k: v.to(out_dtype) for k, v in adapter.items()}, config)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    return out


def read_adapter_state(checkpoint_dir: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The adapter's fp32 masters in a LoRA checkpoint, by their PEFT file keys (`rrm_ray.lora`).

    FSDP2 checkpoints hold the trainable parameters only (the frozen base is `model_path`'s): their DCP
    metadata names and shapes them, so they load without building the model. DeepSpeed checkpoints
    exclude the frozen parameters too; its own reader returns the fp32 masters of the rest.
    """
    if meta["backend"] == "fsdp2":
        path = checkpoint_dir / DCP_DIR
        entries = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        model = {
            key.removeprefix("model."): torch.empty(tuple(m.size), dtype=m.properties.dtype)
            for key, m in entries.items()
            if key.startswith("model.") and hasattr(m, "size")
        }
        with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": model}, checkpoint_id=str(path), no_dist=True)
        sd = model
    elif meta["backend"] == "deepspeed":
        import_deepspeed("cuda" if torch.cuda.is_available() else "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(
            str(checkpoint_dir), tag=DS_TAG, exclude_frozen_parameters=True
        )
    else:
        raise CheckpointError(f"{checkpoint_dir}/{META_FILE}: unknown backend {meta['backend']!r}")
    adapter = {lora.file_key(k): v.float() for k, v in sd.items()}
    if None in adapter or not adapter:
        frozen = [k for k in sd if lora.file_key(k) is None][:5]
        raise CheckpointError(
            f"{checkpoint_dir}: a LoRA checkpoint should hold only adapter tensors (lora_A / lora_B), found "
            f"{len(adapter)} and others: {frozen}"
        )
    return adapter
