"""Token-budget micro-batches change how a mini-batch is cut, never the loss or its gradients.

A tiny random Llama runs the learner's micro-batch loop in one process (the same selection, trimming,
chunked log-prob forward, loss and global-token normalisation as `actors.learner`): once with fixed
micro-batches of `micro_batch_size` rows and once with the length-sorted budget plan, whose
micro-batches are not contiguous, differ in count and carry less padding.
"""

from __future__ import annotations

import pytest
import torch

from actors.model_io import install_logprob_forward
from rrm_ray import algo
from rrm_ray.batch import TrainBatch, build_batch, micro_batch_plan, padded_tokens

F64 = torch.float64


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    return install_logprob_forward(LlamaForCausalLM(config).to(F64))


def long_tailed_batch(n: int = 12, seed: int = 0) -> TrainBatch:
    """Responses of 2 to ~60 tokens, most short (a log-normal spread, as sampled lengths are)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n, generator=g) * 0.9 + 1.8).long().clamp(2, 60).tolist()
    prompts = [torch.randint(3, 97, (4,), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(3, 97, (k,), generator=g).tolist() for k in lengths]
    rollout = [(-4.0 + torch.rand(k, generator=g)).tolist() for k in lengths]
    advantages = torch.randn(n, generator=g).tolist()
    return build_batch(prompts, responses, rollout, advantages, pad_id=0)


def grpo_loss_and_grads(model, batch: TrainBatch, plan: list[list[int]]):
    model.zero_grad()
    total = torch.zeros((), dtype=F64)
    global_tokens = batch.num_tokens
    for rows in plan:
        mb = batch.select(rows).trimmed()
        lp, _ = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, logprob_temperature=1.0)
        old = lp.detach() + 0.05 * mb.rollout_logprobs.to(F64).sin()  # off-policy enough to clip some
        out = algo.policy_loss(lp, old, mb.advantages.to(F64), mb.loss_mask.to(F64), 0.2, 0.28)
        loss = out.loss_sum / global_tokens
        loss.backward()
        total += loss.detach()
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_budgeted_grpo_micro_batches_give_the_same_loss_and_gradients(model):
    batch = long_tailed_batch()
    fixed = micro_batch_plan(batch.lengths, 2, None)
    tokens = 2 * max(batch.lengths)  # the largest pass the fixed plan makes
    budget = micro_batch_plan(batch.lengths, 2, tokens)
    assert len(budget) < len(fixed)  # fewer, fuller passes, none larger, with less padding
    assert padded_tokens(batch.lengths, budget) < padded_tokens(batch.lengths, fixed)
    assert any(rows != sorted(rows) or rows[-1] - rows[0] >= len(rows) for rows in budget)  # not contiguous
    ref_loss, ref_grads = grpo_loss_and_grads(model, batch, fixed)
    for plan in (budget, micro_batch_plan(batch.lengths, 2, tokens, count=len(fixed) + 3)):
        loss, grads = grpo_loss_and_grads(model, batch, [p for p in plan if p])  # empty: zero-weight work
        torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=0)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], atol=1e-10, rtol=1e-8, msg=name)


def test_budgeted_dpo_micro_batches_keep_pairs_and_give_the_same_loss(model):
    batch = long_tailed_batch(n=8, seed=1)  # rows 2i, 2i+1: pair i's chosen and rejected
    ref = torch.randn(len(batch), generator=torch.Generator().manual_seed(2), dtype=F64)

    def dpo(plan: list[list[int]]):
        model.zero_grad()
        total = torch.zeros((), dtype=F64)
        for rows in plan:
            mb = batch.select(rows).trimmed()
            lp, _ = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, logprob_temperature=1.0)
            seq = algo.sequence_logps(lp, mb.loss_mask.to(F64))
            r = ref[rows]
            out = algo.dpo_loss(seq[0::2], seq[1::2], r[0::2], r[1::2], 0.1, 0.0)
            loss = out.losses.sum() / (len(batch) // 2)
            loss.backward()
            total += loss.detach()
        return total, [p.grad.clone() for p in model.parameters()]

    fixed = micro_batch_plan(batch.lengths, 2, None, unit=2)
    budget = micro_batch_plan(batch.lengths, 2, 3 * max(batch.lengths), unit=2)
    assert all(
        rows[i] % 2 == 0 and rows[i + 1] == rows[i] + 1 for rows in budget for i in range(0, len(rows), 2)
    )
    ref_loss, ref_grads = dpo(fixed)
    loss, grads = dpo(budget)
    torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8)
