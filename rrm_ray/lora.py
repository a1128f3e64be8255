"""LoRA adapters, the pure part: PEFT's file format, the names an adapter's tensors carry on the
learner, in PEFT files and in vLLM, the merge, the adapter's size, and one name per synced version.

Names. `peft.get_peft_model` wraps each targeted linear `...q_proj` of the HF model into a LoRA layer
whose frozen weight becomes `...q_proj.base_layer.weight` and whose adapter is `...q_proj.lora_A.
<adapter>.weight` [r, in] and `...q_proj.lora_B.<adapter>.weight` [out, r]; everything sits under
`base_model.model.`. Three spellings follow from that:

    learner (PeftModel)   base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
                          (the HF model inside, which the learner shards: without `base_model.model.`)
    PEFT file / vLLM      base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    base (HF, merged)     model.layers.0.self_attn.q_proj.weight        (from ...q_proj.base_layer.weight)

A PEFT adapter directory is `adapter_config.json` (the `LoraConfig` fields) and
`adapter_model.safetensors` (the keys above). vLLM 0.32 reads the same directory (`LoRARequest` takes a
path only); it needs `r`, `lora_alpha`, `target_modules`, refuses `bias != "none"`, DoRA and
`modules_to_save`, and serves ranks up to `max_lora_rank`, one of `VLLM_MAX_LORA_RANKS`.

The adapter changes a linear's output by `alpha / r * B (A x)`; merged, the weight is
`W + alpha / r * B @ A` (`merged_weight`, computed in fp32 and rounded once to the output dtype).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the tensor functions only call tensors' methods: config checks and `plan` stay torch-free
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
DEFAULT_ADAPTER = "default"  # peft's name for the one adapter of get_peft_model

_LEARNER_LORA = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")
_FILE_LORA = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])\.weight$")


class AdapterError(ValueError):
    """An adapter directory or tensor set is not the LoRA adapter expected (names the file and key)."""


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that serves an adapter of `rank`."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_MAX_LORA_RANKS[-1]}")


def adapter_config(
    rank: int, alpha: float, dropout: float, target_modules: Iterable[str], base_model: str
) -> dict[str, Any]:
    """`adapter_config.json` of a plain LoRA adapter, as `peft.LoraConfig(...).to_dict()` writes it
    for these settings (no bias, no DoRA, no rsLoRA, no modules_to_save), which vLLM also accepts."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": int(rank),
        "lora_alpha": int(alpha) if float(alpha).is_integer() else float(alpha),
        "lora_dropout": float(dropout),
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def scale(config: Mapping[str, Any]) -> float:
    """alpha / r: the factor on B A x (no rsLoRA)."""
    return float(config["lora_alpha"]) / int(config["r"])


def file_key(name: str) -> str | None:
    """A learner parameter's key in `adapter_model.safetensors` (its adapter name dropped, under
    `base_model.model.`); None for a parameter that is not an adapter's. The learner shards the HF model
    PEFT wrapped in place, so its names may lack the prefix."""
    m = _LEARNER_LORA.match(name)
    if m is None:
        return None
    return f"{PEFT_PREFIX}{m['module'].removeprefix(PEFT_PREFIX)}.{m['part']}.weight"


def base_key(name: str) -> str | None:
    """A PEFT model's (or file's) parameter name as the base model spells it; None for an adapter's."""
    if _LEARNER_LORA.match(name) or _FILE_LORA.match(name):
        return None
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def module_of(key: str) -> tuple[str, str]:
    """A file key's module in base spelling and its part: (`model.layers.0.self_attn.q_proj`, `lora_A`)."""
    m = _FILE_LORA.match(key)
    if m is None:
        raise AdapterError(f"{key!r} is not a LoRA tensor key (<module>.lora_A.weight or .lora_B.weight)")
    return m["module"].removeprefix(PEFT_PREFIX), m["part"]


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """W + factor * B @ A, computed in fp32 and returned in W's dtype (one rounding).
    weight [out, in], a [r, in], b [out, r]."""
    if a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0] or a.shape[0] != b.shape[1]:
        raise AdapterError(
            f"merged_weight: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit W {tuple(weight.shape)}"
        )
    merged = weight.float() + factor * (b.float() @ a.float())
    return merged.to(weight.dtype)


def merge_into(
    base: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The base state dict (HF names) with every adapter (file keys) merged into its linear's weight.
    Raises AdapterError for an adapter whose module has no weight in `base` or lacks A or B."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in adapter.items():
        module, part = module_of(key)
        pairs.setdefault(module, {})[part] = t
    out = dict(base)
    factor = scale(config)
    for module, parts in sorted(pairs.items()):
        name = f"{module}.weight"
        if name not in base or set(parts) != {"lora_A", "lora_B"}:
            raise AdapterError(
                f"adapter module {module}: needs lora_A and lora_B and a base weight {name}; got "
                f"{sorted(parts)}, base weight {'present' if name in base else 'missing'}"
            )
        out[name] = merged_weight(base[name], parts["lora_A"], parts["lora_B"], factor)
    return out


def merged_stream(
    named: Iterable[tuple[str, torch.Tensor]], factor: float
) -> Iterator[tuple[str, torch.Tensor]]:
    """A LoRA model's tensors (learner names, in model order: a wrapped linear's `base_layer.weight`,
    then its `lora_A`, then its `lora_B`) as the base model's, each wrapped linear's weight merged
    (`merged_weight`, in the base weight's dtype) and the adapter's tensors left out: the merged-weights
    sync (`learner.lora.sync: merged`). At most one wrapped linear's three tensors are held at a time."""
    held: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in named:
        m = _LEARNER_LORA.match(name)
        if m is None and ".base_layer." not in name:
            yield base_key(name) or name, t
            continue
        module = m["module"] if m else name.split(".base_layer.")[0]
        parts = held.setdefault(module, {})
        parts[m["part"] if m else "base"] = t
        if len(parts) == 3:
            del held[module]
            yield (
                f"{module.removeprefix(PEFT_PREFIX)}.weight",
                merged_weight(parts["base"], parts["lora_A"], parts["lora_B"], factor),
            )
    if held:
        raise AdapterError(
            f"merged_stream: wrapped linears without their base weight, A and B: {sorted(held)}"
        )


def adapter_numel(shape: Mapping[str, Any], rank: int, target_modules: Iterable[str]) -> int | None:
    """Parameters of a rank-`rank` adapter on `target_modules` of every decoder layer, from an HF
    config's fields (a dense Llama/Qwen-style decoder; None if a field is missing or a target is not
    one of its linears): r * (in + out) per targeted linear."""
    try:
        h, inter, layers = (int(shape[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
        heads = int(shape["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(shape.get("head_dim") or h // heads)
    q, kv = heads * head_dim, int(shape.get("num_key_value_heads") or heads) * head_dim
    sizes = {
        "q_proj": h + q,
        "k_proj": h + kv,
        "v_proj": h + kv,
        "o_proj": q + h,
        "gate_proj": h + inter,
        "up_proj": h + inter,
        "down_proj": inter + h,
    }
    targets = list(target_modules)
    if any(t not in sizes for t in targets):
        return None
    return layers * rank * sum(sizes[t] for t in targets)


def version_name(tag: str, version: int) -> str:
    """The adapter's name (and folder) for one sync of policy `version`. `tag` is fresh per sync: vLLM's
    prefix cache keys KV blocks on (lora_name, lora_path), so a name must never come back with other
    weights (a learner rolled back to a checkpoint re-reaches the same version with other weights)."""
    return f"policy-v{version}-{tag}"


def write_adapter(
    directory: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> Path:
    """Write a PEFT adapter directory (file keys, contiguous CPU tensors), atomically: a reader sees the
    whole directory or none (written beside it, then renamed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    for key in tensors:
        module_of(key)  # every key is a LoRA tensor's
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, str(tmp / ADAPTER_WEIGHTS))
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def read_adapter(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An adapter directory's tensors (file keys) and config; AdapterError names what is missing."""
    directory = Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise AdapterError(f"{directory}: no {name}; not a PEFT LoRA adapter directory")
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(
            f"{directory / ADAPTER_CONFIG}: a LoRA config needs r, lora_alpha and target_modules "
            f"(missing {missing}) and peft_type LORA (got {config.get('peft_type')!r})"
        )
    from safetensors.torch import load_file

    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    for key in tensors:
        module_of(key)
    return tensors, config
