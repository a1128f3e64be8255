"""The learner's LoRA wrap (`actors.lora_model`): dtypes, the adapter's start, the merged-sync source."""

from __future__ import annotations

import math

import torch

from actors.lora_model import adapter_off, initial_adapter, merged_meta, merged_weights, trainable, wrap_lora
from rrm_ray import lora
from rrm_ray.config import LoRAConfig

SHAPE = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny(dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, tie_word_embeddings=True, **SHAPE)).to(dtype)


def test_base_frozen_in_the_compute_dtype_adapter_trains_in_fp32():
    model = tiny(torch.bfloat16)
    wrap_lora(model, LoRAConfig(rank=4, alpha=8), torch.bfloat16, torch.float32)
    params = dict(model.named_parameters())
    train = {n for n, p in params.items() if p.requires_grad}
    assert train and all(lora.file_key(n) for n in train)  # the adapter's tensors, nothing else
    assert len(train) == 2 * 7 * SHAPE["num_hidden_layers"]  # A and B on every linear of each layer
    assert {params[n].dtype for n in train} == {torch.float32}
    assert {p.dtype for n, p in params.items() if n not in train} == {torch.bfloat16}
    assert len(trainable(model)) == len(train)


def test_the_adapter_starts_as_peft_starts_it_the_same_everywhere():
    """B zero (the policy is the base), A kaiming-uniform (a = sqrt 5: |A| <= 1/sqrt(in)), drawn from
    the seed alone: two models wrapped apart, after other RNG use, start alike."""
    a, b = tiny(), tiny()
    wrap_lora(a, LoRAConfig(rank=4, alpha=8), torch.float32, torch.float32)
    torch.manual_seed(123)
    wrap_lora(b, LoRAConfig(rank=4, alpha=8), torch.float32, torch.float32)
    start_a, start_b = initial_adapter(a, 7), initial_adapter(b, 7)
    assert start_a.keys() == start_b.keys() == {n for n, p in a.named_parameters() if p.requires_grad}
    for name, t in start_a.items():
        torch.testing.assert_close(t, start_b[name], atol=0, rtol=0)
        assert t.shape == dict(a.named_parameters())[name].shape and t.dtype == torch.float32
        if ".lora_B." in name:
            assert not t.any()
        else:
            assert 0 < float(t.abs().max()) <= 1 / math.sqrt(t.shape[1])
    other = initial_adapter(a, 8)
    assert any(not torch.equal(other[n], t) for n, t in start_a.items())


def test_the_reference_is_the_base_and_merged_weights_are_its_names():
    base = tiny()
    ids = torch.tensor([[1, 5, 9, 11, 3]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    peft_model = wrap_lora(base, LoRAConfig(rank=4, alpha=8), torch.float32, torch.float32)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)
        changed = base(input_ids=ids).logits
        with adapter_off(peft_model):
            off = base(input_ids=ids).logits
    assert (changed - expected).abs().max() > 1e-3
    torch.testing.assert_close(off, expected, atol=0, rtol=0)

    def stream(dtype):
        return iter(base.state_dict().items())

    meta = [(n, tuple(t.shape), t.dtype) for n, t in base.state_dict().items()]
    merged = list(merged_weights(stream, 2.0, torch.bfloat16))
    assert [(n, s) for n, s, _ in merged_meta(meta)] == [(n, tuple(t.shape)) for n, t in merged]
    assert {t.dtype for _, t in merged} == {torch.bfloat16}
