"""The pure LoRA pieces against the real `peft` (and vLLM's adapter reader): names, the PEFT files,
the merge, the adapter's size."""

from __future__ import annotations

import json

import pytest
import torch

from rrm_ray import lora

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPE = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def peft_model():
    """A tiny Llama with a rank-4 adapter on every linear, B randomised (peft starts it at zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=97, tie_word_embeddings=True, **SHAPE))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model.eval()


def test_vllm_max_lora_rank_rounds_up_to_what_vllm_serves():
    assert [lora.vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 33, 512)] == [1, 8, 8, 16, 16, 64, 512]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        lora.vllm_max_lora_rank(513)


def test_names_of_the_three_spellings(peft_model):
    from peft import get_peft_model_state_dict

    names = [n for n, _ in peft_model.named_parameters()]
    adapter = {lora.file_key(n) for n in names} - {None}
    assert adapter == set(get_peft_model_state_dict(peft_model))  # what peft writes
    assert len(adapter) == 2 * len(TARGETS) * SHAPE["num_hidden_layers"]
    from transformers import LlamaConfig, LlamaForCausalLM

    base = {lora.base_key(n) for n in peft_model.state_dict()} - {None}
    plain = LlamaForCausalLM(LlamaConfig(vocab_size=97, tie_word_embeddings=True, **SHAPE))
    assert base == set(plain.state_dict())  # the HF names of the base model
    assert lora.base_key("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight") is None
    inner = {lora.file_key(n) for n, _ in peft_model.get_base_model().named_parameters()} - {None}
    assert inner == adapter  # the HF model PEFT wrapped in place names them without the prefix
    assert lora.module_of("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight") == (
        "model.layers.1.self_attn.v_proj",
        "lora_A",
    )
    with pytest.raises(lora.AdapterError, match="not a LoRA tensor key"):
        lora.module_of("model.layers.0.self_attn.v_proj.weight")


def test_adapter_config_is_peft_own_and_numel_is_its_count(peft_model):
    from peft import LoraConfig

    ours = lora.adapter_config(4, 8.0, 0.0, TARGETS, "base-dir")
    theirs = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM").to_dict()
    for key, value in ours.items():
        if key in ("target_modules", "peft_type", "base_model_name_or_path", "inference_mode"):
            continue
        assert theirs[key] == value, key
    assert set(theirs["target_modules"]) == set(ours["target_modules"])
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora.adapter_numel(SHAPE, 4, TARGETS) == trainable
    assert lora.adapter_numel(SHAPE, 4, ["q_proj", "lm_head"]) is None  # not a decoder linear
    assert lora.scale(ours) == 2.0


def test_written_adapter_loads_in_peft_and_vllm_and_merges_as_peft_does(peft_model, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import LlamaConfig, LlamaForCausalLM

    tensors = {k: v.clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    config = lora.adapter_config(4, 8, 0.0, TARGETS, "base-dir")
    out = lora.write_adapter(tmp_path / "adapter", tensors, config)
    assert not (tmp_path / "adapter.partial").exists()
    again, read_config = lora.read_adapter(out)
    assert read_config == json.loads(json.dumps(config)) and again.keys() == tensors.keys()

    torch.manual_seed(0)  # the same random base as the fixture's
    base = LlamaForCausalLM(LlamaConfig(vocab_size=97, tie_word_embeddings=True, **SHAPE)).eval()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)
        merged = lora.merge_into(base_sd, again, read_config)
        plain = LlamaForCausalLM(LlamaConfig(vocab_size=97, tie_word_embeddings=True, **SHAPE)).eval()
        plain.load_state_dict(merged)
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)

    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    helper = PEFTHelper.from_local_dir(str(out), max_position_embeddings=None)
    helper.validate_legal(LoRAConfig(max_lora_rank=lora.vllm_max_lora_rank(4)))
    assert helper.r == 4 and helper.vllm_lora_scaling_factor == 2.0


def test_merge_rounds_once_and_rejects_half_adapters():
    w = torch.randn(6, 5, dtype=torch.bfloat16)
    a, b = torch.randn(2, 5), torch.randn(6, 2)
    merged = lora.merged_weight(w, a, b, 0.5)
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged, (w.float() + 0.5 * b @ a).to(torch.bfloat16), atol=0, rtol=0)
    with pytest.raises(lora.AdapterError, match="do not fit"):
        lora.merged_weight(w, a.T, b, 1.0)
    only_a = {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": a}
    with pytest.raises(lora.AdapterError, match="needs lora_A and lora_B"):
        lora.merge_into({"model.layers.0.mlp.up_proj.weight": w}, only_a, {"r": 2, "lora_alpha": 2})


def test_read_adapter_names_what_is_missing(tmp_path):
    with pytest.raises(lora.AdapterError, match=r"no adapter_config\.json"):
        lora.read_adapter(tmp_path)
    (tmp_path / lora.ADAPTER_CONFIG).write_text(json.dumps({"r": 4}))
    (tmp_path / lora.ADAPTER_WEIGHTS).write_bytes(b"")
    with pytest.raises(lora.AdapterError, match=r"missing \['lora_alpha', 'target_modules'\]"):
        lora.read_adapter(tmp_path)


def test_merged_stream_is_the_merged_base_in_base_names(peft_model):
    inner = peft_model.get_base_model()
    config = {"r": 4, "lora_alpha": 8}
    stream = list(lora.merged_stream(inner.state_dict().items(), lora.scale(config)))
    names = [n for n, _ in stream]
    assert len(names) == len(set(names))
    from peft import get_peft_model_state_dict

    base = {lora.base_key(n): t for n, t in inner.state_dict().items() if lora.base_key(n)}
    expected = lora.merge_into(base, get_peft_model_state_dict(peft_model), config)
    assert names == list(expected)  # the base's names, in model order, nothing of the adapter's
    for name, t in stream:
        torch.testing.assert_close(t, expected[name], atol=0, rtol=0)
    half = [(n, t) for n, t in inner.state_dict().items() if "q_proj.lora_B" not in n]
    with pytest.raises(lora.AdapterError, match="without their base weight, A and B"):
        list(lora.merged_stream(half, 2.0))
