"""`logprobs.head_logprobs` (chunked, from hidden states, recomputed in backward) equals the full-logits path,
values and gradients, and the HF forward `install_logprob_forward` adds gives the model's own numbers."""

from __future__ import annotations

import pytest
import torch

from rrm_ray.algo import AlgoInputError
from rrm_ray.logprobs import head_logprobs

F32 = torch.float32
# The chunked function computes the same formulas as the full path, blocked differently and with its own
# backward, so fp32 results differ by rounding only. Measured over 20 seeds, max |chunked - full| /
# max(1, max |full|): log-probs and their gradients <= 2.9e-7, entropy 5.3e-7, entropy gradients 1.04e-6
# (one to a few ulps of the tensor's scale). Asserted with about 2x margin.
TOL = 2e-6


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    assert got.shape == ref.shape and diff <= TOL * scale, (diff, scale)


def _full(hidden, weight, bias, tokens, temperature, textbook=False):
    """The unchunked reference: the whole [B, T, V] logits in one go, the same formulas (entropy as
    lse - E_p[x]); `textbook`: entropy as -sum p log p (equal up to rounding)."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    if textbook:
        logp = torch.log_softmax(logits, -1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    lse = torch.logsumexp(logits, -1)
    lp = logits.gather(-1, tokens[..., None]).squeeze(-1) - lse
    return lp, lse - (torch.softmax(logits, -1) * logits).sum(-1)


def _inputs(seed: int, b=3, t=7, h=16, v=50, dtype=F32, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=dtype) * 0.25).requires_grad_()
    b_ = (torch.randn(v, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    tokens = torch.randint(0, v, (b, t), generator=g)
    upstream = torch.randn(b, t, generator=g, dtype=F32)  # arbitrary upstream gradient
    return hidden, weight, b_, tokens, upstream


def _grads(out, upstream, *leaves):
    leaves = [x for x in leaves if x is not None]
    return torch.autograd.grad((out * upstream).sum(), leaves, retain_graph=True)


@pytest.mark.parametrize("chunk", [1, 4, 5, 21, 1000])  # B*T = 21: 4 and 5 do not divide it
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_entropy_and_grads_equal_the_full_softmax_fp32(chunk, temperature):
    hidden, weight, bias, tokens, w = _inputs(0)
    lp, ent = head_logprobs(hidden, weight, tokens, temperature, chunk, bias=bias, with_entropy=True)
    ref_lp, ref_ent = _full(hidden, weight, bias, tokens, temperature)
    assert lp.dtype == F32 and lp.shape == ent.shape == tokens.shape
    _close(lp.detach(), ref_lp.detach())
    _close(ent, ref_ent.detach())
    assert not ent.requires_grad  # detached unless entropy_grad
    grads = _grads(lp, w, hidden, weight, bias), _grads(ref_lp, w, hidden, weight, bias)
    for got, ref in zip(*grads, strict=True):
        _close(got, ref)

    _, ent_g = head_logprobs(
        hidden, weight, tokens, temperature, chunk, bias=bias, with_entropy=True, entropy_grad=True
    )
    grads = _grads(ent_g, w, hidden, weight, bias), _grads(ref_ent, w, hidden, weight, bias)
    for got, ref in zip(*grads, strict=True):
        _close(got, ref)
    textbook = _full(hidden, weight, bias, tokens, temperature, textbook=True)
    torch.testing.assert_close((lp, ent), textbook, rtol=1e-5, atol=1e-6)
    grads = _grads(lp, w, hidden, weight, bias), _grads(textbook[0], w, hidden, weight, bias)
    for got, ref in zip(*grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_no_vocabulary_sized_tensor_is_kept_for_backward():
    """Autograd keeps nothing with a V dimension for backward (the full path does), and without grad
    the same numbers come out."""
    hidden, weight, _, tokens, _ = _inputs(1, b=2, t=5, v=50, bias=False)

    def saved_shapes(fn) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return shapes

    vocab_sized = [s for s in saved_shapes(lambda: head_logprobs(hidden, weight, tokens, chunk_tokens=3))
                   if s and s[-1] == 50 and s != tuple(weight.shape)]  # fmt: skip
    assert vocab_sized == []
    assert any(s[-1] == 50 for s in saved_shapes(lambda: _full(hidden, weight, None, tokens, 1.0)) if s)
    lp, _ = head_logprobs(hidden, weight, tokens, chunk_tokens=3)
    with torch.no_grad():
        lp2, _ = head_logprobs(hidden, weight, tokens, chunk_tokens=3)
    torch.testing.assert_close(lp2, lp.detach())


def test_bf16_inputs_compute_in_fp32_and_match_the_upcast_reference():
    hidden, weight, _, tokens, _ = _inputs(2, dtype=torch.bfloat16, bias=False)
    lp, ent = head_logprobs(hidden, weight, tokens, 1.0, 4, with_entropy=True)
    ref_lp, ref_ent = _full(hidden, weight, None, tokens, 1.0)  # bf16 projection, fp32 softmax
    assert lp.dtype == F32
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    (g,) = torch.autograd.grad(lp.sum(), weight)
    assert g.dtype == torch.bfloat16


def test_empty_and_bad_inputs():
    hidden = torch.zeros(2, 0, 4)
    lp, ent = head_logprobs(hidden, torch.zeros(9, 4), torch.zeros(2, 0, dtype=torch.long), with_entropy=True)
    assert lp.shape == ent.shape == (2, 0)
    h, w = torch.zeros(1, 2, 4), torch.zeros(9, 4)
    with pytest.raises(AlgoInputError, match=r"token ids span \[0, 9\], outside the vocabulary \[0, 9\)"):
        head_logprobs(h, w, torch.tensor([[0, 9]]))
    with pytest.raises(AlgoInputError, match=r"weight must be \[V, H=4\]"):
        head_logprobs(h, torch.zeros(9, 5), torch.tensor([[0, 1]]))
    with pytest.raises(AlgoInputError, match="chunk_tokens must be >= 1"):
        head_logprobs(h, w, torch.tensor([[0, 1]]), chunk_tokens=0)
    with pytest.raises(AlgoInputError, match="must be integer ids"):
        head_logprobs(h, w, torch.tensor([[0.0, 1.0]]))


def test_installed_forward_matches_the_hf_logits_path():
    """`install_logprob_forward`: the learner's forward gives log_softmax(HF logits / T) and its grads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from actors.model_io import install_logprob_forward

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    install_logprob_forward(model)
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    lp, ent = model(input_ids=ids, attention_mask=mask, logprob_temperature=0.8, logprob_chunk=4,
                    logprob_entropy=True)  # fmt: skip
    (g,) = torch.autograd.grad(lp[mask[:, 1:].bool()].sum(), model.model.embed_tokens.weight)

    logits = model(input_ids=ids, attention_mask=mask).logits  # the untouched HF forward
    logp = torch.log_softmax(logits[:, :-1].float() / 0.8, -1)
    ref = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    (g_ref,) = torch.autograd.grad(ref[mask[:, 1:].bool()].sum(), model.model.embed_tokens.weight)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6)
