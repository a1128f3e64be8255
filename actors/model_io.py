"""The learner's model on disk and in memory: load an HF checkpoint, give its forward the chunked
log-prob head, write an HF directory, and read a learner checkpoint's metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from rrm_ray.logprobs import head_logprobs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
META_FILE = "learner_meta.json"


class CheckpointError(ValueError):
    """A learner checkpoint is missing, incomplete or does not fit this learner."""


def load_hf_model(
    model_path: str,
    dtype: torch.dtype | str,
    device: torch.device,
    grad_ckpt: bool,
    structure_only: bool = False,
):
    """An HF causal LM in `dtype` ("auto": the checkpoint's own) on `device`, with the log-prob forward.
    `structure_only`: built from the config alone, no weight file read and nothing initialised (a
    sharded model filled from rank 0's reads), in whatever context the caller set (accelerate's
    `init_empty_weights`; ZeRO-3's `zero.Init`); the caller then calls `model.tie_weights()`."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    if structure_only:
        config = AutoConfig.from_pretrained(model_path)
        auto = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        auto = getattr(torch, auto) if isinstance(auto, str) else auto
        # No initialisation: the weights are loaded right after, and initialising a ZeRO-3 partition
        # (empty on most ranks) would fail. The caller ties the embeddings once out of its context.
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=auto if dtype == "auto" else dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    install_logprob_forward(model)
    return model


def checkpoint_files(model_path: str) -> dict[str, Path]:
    """Tensor name -> the safetensors file of an HF directory that holds it (one file, or the shards
    an index names)."""
    root = Path(model_path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return {name: root / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = root / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{model_path}: no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), "pt") as f:
        return dict.fromkeys(f.keys(), single)


def read_tensor(files: dict[str, Path], name: str) -> torch.Tensor:
    """One tensor of a checkpoint (memory-mapped: only it is read)."""
    if name not in files:
        raise CheckpointError(f"weight {name!r} is not in the checkpoint ({len(files)} tensors)")
    with safe_open(str(files[name]), "pt") as f:
        return f.get_tensor(name)


def install_logprob_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Give an HF causal LM a forward that returns token log-probs without building the logits.

    `model(input_ids=, attention_mask=, logprob_temperature=T, logprob_chunk=C, logprob_entropy=E)`
    returns (log-probs [B, L-1] of input_ids[:, 1:], entropy [B, L-1] or None), computed from the
    decoder's hidden states by `rrm_ray.logprobs.head_logprobs` in chunks of C rows (fp32 softmax, at most
    two [C, V] fp32 blocks at a time, recomputed in backward). Without `logprob_temperature` it is the
    HF forward.

    Why through `forward` and the head's own `forward`: FSDP2 unshards the root's parameters (embedding,
    final norm, lm_head) around the root module's call, and ZeRO-3 gathers each module's parameters
    around that module's call (and again before its backward). So the projection must run inside
    `lm_head(...)`, itself inside `model(...)`, to see full weights on both backends. The decoder's
    layers keep their own FSDP units / ZeRO hooks. Instance attributes, so the class (and FSDP2's
    dynamic subclass of it) is untouched.
    """

    head, decoder = model.get_output_embeddings(), model.get_decoder()
    head_forward, hf_forward = head.forward, model.forward

    def head_call(hidden, targets=None, temperature=1.0, chunk=1024, entropy=False):
        if targets is None:
            return head_forward(hidden)
        return head_logprobs(
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
