"""A learner checkpoint (either backend) as an HF model directory: `rrm-ray export`, no Ray needed."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from actors.backends.fsdp2 import DCP_DIR
from actors.backends.zero import DS_TAG, import_deepspeed
from actors.model_io import DTYPES, META_FILE, CheckpointError, read_meta, write_hf


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
