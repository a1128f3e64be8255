"""Tests for rrm_ray.algo: hand-computed values (arithmetic in the comments) and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from rrm_ray.algo import (
    AlgoInputError,
    dpo_loss,
    group_advantages,
    informative_sequences,
    kl_k3,
    lr_at,
    masked_sum,
    policy_loss,
    sequence_logps,
    stats_to_means,
)
from rrm_ray.logprobs import entropy_from_logits, gather_logprobs

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# group_advantages

# 2 prompts x 3 samples.
# group 0 = [1, 2, 3]: mean 2, deviations [-1, 0, 1], sample var (1 + 0 + 1) / 2 = 1, std 1
# group 1 = [0, 0, 6]: mean 2, deviations [-2, -2, 4], sample var (4 + 4 + 16) / 2 = 12, std 2*sqrt(3)
S3 = 2 * math.sqrt(3)


@pytest.mark.parametrize(
    "rewards, scale_by_std, expected",
    [
        ([1, 2, 3, 0, 0, 6], True, [-1, 0, 1, -2 / S3, -2 / S3, 4 / S3]),
        ([1, 2, 3, 0, 0, 6], False, [-1, 0, 1, -2, -2, 4]),  # Dr. GRPO: mean subtraction only
        # constant group -> exactly 0; group 1 = [1, -1, 1]: mean 1/3, deviations [2/3, -4/3, 2/3],
        # var (4/9 + 16/9 + 4/9) / 2 = 4/3, std 2/sqrt(3) -> [1/sqrt(3), -2/sqrt(3), 1/sqrt(3)]
        ([0.1, 0.1, 0.1, 1, -1, 1], True, [0, 0, 0, 1 / math.sqrt(3), -2 / math.sqrt(3), 1 / math.sqrt(3)]),
    ],
)
def test_group_advantages_hand_values(rewards, scale_by_std, expected):
    adv = group_advantages(torch.tensor(rewards, dtype=F64), 3, scale_by_std=scale_by_std, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_group_advantages_eps_and_exact_zero_for_constant_groups():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3, eps=1.0)  # std 1 -> divide by 1 + 1 = 2
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.0, 0.5]))
    const = group_advantages(torch.full((6,), 0.1), 3)
    assert torch.equal(const, torch.zeros(6))  # exact, not just close
    assert torch.equal(group_advantages(torch.tensor([1.0, -1.0]), 1), torch.zeros(2))  # group_size 1


@pytest.mark.parametrize(
    "rewards, group_size, match",
    [
        (torch.zeros(7), 3, "7 entries, not a multiple of group_size=3"),
        (torch.zeros(6), 0, "group_size must be >= 1"),
        (torch.zeros(2, 3), 3, "must be 1-D"),
        (torch.tensor([0.0, float("nan"), 1.0]), 3, r"rewards\[1\] \(0-based\) is nan"),
    ],
)
def test_group_advantages_bad_input(rewards, group_size, match):
    with pytest.raises(AlgoInputError, match=match):
        group_advantages(rewards, group_size)


# ---------------------------------------------------------------------------------------------
# masked helpers


def test_masked_sum_mean_and_sequence_logps():
    x = torch.tensor([[1.0, 2.0, float("inf")], [4.0, float("nan"), 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_sum(x, m).item() == 13.0  # 1 + 2 + 4 + 6; inf/nan at padding ignored
    torch.testing.assert_close(sequence_logps(x, m), torch.tensor([3.0, 10.0]))
    with pytest.raises(AlgoInputError, match=r"mask has shape \(2,\), expected \(2, 3\)"):
        masked_sum(x, torch.ones(2))


# ---------------------------------------------------------------------------------------------
# gather_logprobs / entropy_from_logits


def _ref_logprobs(logits, tokens):
    return torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None]).squeeze(-1)


def _ref_entropy(logits):
    lp = torch.log_softmax(logits.double(), -1)
    return -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 7, 12, 1000])  # B*T = 12: 3, 5, 7 do not divide it
def test_gather_logprobs_and_entropy_match_log_softmax(chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 4, 17, generator=g, dtype=F64) * 3).requires_grad_()
    tokens = torch.randint(0, 17, (3, 4), generator=g)
    w = torch.randn(3, 4, generator=g, dtype=F64)  # arbitrary upstream gradient

    lp = gather_logprobs(logits, tokens, chunk_size)
    ent = entropy_from_logits(logits, chunk_size)
    assert lp.shape == ent.shape == (3, 4)
    (g_lp,) = torch.autograd.grad((lp * w).sum(), logits)
    (g_ent,) = torch.autograd.grad((ent * w).sum(), logits)

    ref_lp, ref_ent = _ref_logprobs(logits, tokens), _ref_entropy(logits)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    torch.testing.assert_close(g_lp, torch.autograd.grad((ref_lp * w).sum(), logits)[0])
    torch.testing.assert_close(g_ent, torch.autograd.grad((ref_ent * w).sum(), logits)[0])


def test_chunked_functions_pass_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g, dtype=F64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda x: gather_logprobs(x, tokens, 4), (logits,))
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, 4), (logits,))


def test_gather_logprobs_on_shifted_view_and_bf16():
    g = torch.Generator().manual_seed(2)
    full = torch.randn(2, 6, 9, generator=g, requires_grad=True)
    tokens = torch.randint(0, 9, (2, 5), generator=g)
    shifted = full[:, :-1]  # [2, 5, 9], not flattenable without a copy: walked per sequence
    lp = gather_logprobs(shifted, tokens, chunk_size=2)
    torch.testing.assert_close(lp, _ref_logprobs(shifted, tokens).float())
    torch.testing.assert_close(entropy_from_logits(shifted, 2), _ref_entropy(shifted).float())
    (grad,) = torch.autograd.grad(lp.sum(), full)
    (ref_grad,) = torch.autograd.grad(_ref_logprobs(shifted, tokens).sum(), full)
    torch.testing.assert_close(grad, ref_grad.float())
    assert grad[:, -1].abs().sum() == 0  # the dropped last position gets no gradient

    bf = full.detach().bfloat16()
    lp_bf = gather_logprobs(bf, torch.randint(0, 9, (2, 6), generator=g))
    assert lp_bf.dtype == torch.float32  # computed and returned in fp32


@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.tensor([[0, 9]]), r"tokens\[0, 1\] = 9 is outside the vocabulary \[0, 9\)"),
        (torch.tensor([[-100, 1]]), r"tokens\[0, 0\] = -100"),
        (torch.tensor([[0, 1, 2]]), r"tokens has shape \(1, 3\), expected \(1, 2\)"),
        (torch.tensor([[0.0, 1.0]]), "must be integer ids"),
    ],
)
def test_gather_logprobs_bad_tokens(tokens, match):
    with pytest.raises(AlgoInputError, match=match):
        gather_logprobs(torch.zeros(1, 2, 9), tokens)


# ---------------------------------------------------------------------------------------------
# kl_k3


def test_kl_k3():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(kl_k3(lp, lp), torch.zeros(3))
    assert (kl_k3(lp, lp + torch.tensor([0.3, -0.7, 2.0])) > 0).all()
    # d = ref - lp = log 2: exp(d) - d - 1 = 2 - 0.693147 - 1 = 0.306853
    torch.testing.assert_close(
        kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2)])), torch.tensor([0.306853])
    )
    # d = 100 clamps to 20: exp(20) - 21, finite
    big = kl_k3(torch.tensor([0.0], dtype=F64), torch.tensor([100.0], dtype=F64))
    torch.testing.assert_close(big, torch.tensor([math.exp(20) - 21], dtype=F64))


# ---------------------------------------------------------------------------------------------
# policy_loss

# old = 0 everywhere, so ratio = exp(logprobs). Row 0 has A = +1, row 1 has A = -2; row 1's last token is
# padding with a huge ratio (e^50) that must contribute nothing.
RATIOS = [[1.1, 1.25, 1.5, 0.5], [0.5, 0.9, 1.5, math.exp(50)]]
MASK = [[1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize(
    "clip_low, clip_high, expected_sum, n_low, n_high",
    [
        # clip range [0.8, 1.28]. per token -min(r*A, clip(r)*A):
        #   row 0 (A=+1): 1.1 -> -1.1; 1.25 -> -1.25; 1.5 -> -min(1.5, 1.28) = -1.28 (clipped high);
        #                 0.5 -> -min(0.5, 0.8) = -0.5 (A > 0 below the range: not clipped)   sum -4.13
        #   row 1 (A=-2): 0.5 -> -min(-1.0, -1.6) = 1.6 (clipped low); 0.9 -> 1.8;
        #                 1.5 -> -min(-3.0, -2.56) = 3.0 (A < 0 above the range: not clipped)  sum 6.4
        #   total 2.27
        (0.2, 0.28, 2.27, 1, 1),
        # symmetric [0.8, 1.2]: row 0 now also clips 1.25 -> -1.2, and 1.5 -> -1.2: -1.1-1.2-1.2-0.5 = -4.0
        #   row 1 unchanged 6.4 (1.5 -> -min(-3.0, -2.4) = 3.0); total 2.4
        (0.2, 0.2, 2.4, 1, 2),
        # clip_low 0.6 -> [0.4, 1.28]: row 1's 0.5 is inside now: -(0.5 * -2) = 1.0; row 1 = 1 + 1.8 + 3 = 5.8
        #   total -4.13 + 5.8 = 1.67
        (0.6, 0.28, 1.67, 0, 1),
    ],
)
def test_policy_loss_asymmetric_clip_hand_values(clip_low, clip_high, expected_sum, n_low, n_high):
    lp = torch.tensor(RATIOS, dtype=F64).log().requires_grad_()
    old = torch.zeros(2, 4, dtype=F64)
    out = policy_loss(lp, old, torch.tensor([1.0, -2.0], dtype=F64), torch.tensor(MASK), clip_low, clip_high)
    assert out.loss_sum.item() == pytest.approx(expected_sum, abs=1e-9)
    s = out.stats
    assert s["tokens"].item() == 7
    assert s["clipfrac_low_sum"].item() == n_low
    assert s["clipfrac_high_sum"].item() == n_high
    assert s["clipfrac_sum"].item() == n_low + n_high
    assert s["pg_loss_sum"].item() == pytest.approx(expected_sum, abs=1e-9)

    # d(-r*A)/d lp = -A*r for unclipped tokens, 0 for clipped and padded ones
    (grad,) = torch.autograd.grad(out.loss_sum, lp)
    if (clip_low, clip_high) == (0.2, 0.28):
        expected = [[-1.1, -1.25, 0.0, -0.5], [0.0, 1.8, 3.0, 0.0]]
        torch.testing.assert_close(grad, torch.tensor(expected, dtype=F64))


def test_policy_loss_token_advantages_equal_broadcast_sequence_advantages():
    lp = torch.tensor(RATIOS, dtype=F64).log()
    old, mask = torch.zeros(2, 4, dtype=F64), torch.tensor(MASK)
    per_seq = policy_loss(lp, old, torch.tensor([1.0, -2.0], dtype=F64), mask)
    per_tok = policy_loss(lp, old, torch.tensor([[1.0] * 4, [-2.0] * 4], dtype=F64), mask)
    assert per_seq.loss_sum.item() == per_tok.loss_sum.item()


def test_policy_loss_truncated_importance_sampling():
    # ratio 1 (lp == old), A = +1 -> per-token loss -1 before weighting.
    # old - rollout = log [0.5, 1.5, 5] -> w = min(., cap 2) = [0.5, 1.5, 2]; third token capped.
    # loss_sum = -(0.5 + 1.5 + 2) = -4; d loss / d lp = -A * r * w = [-0.5, -1.5, -2]
    lp = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=F64)
    rollout = -torch.tensor([[0.5, 1.5, 5.0]], dtype=F64).log()
    adv, mask = torch.ones(1, dtype=F64), torch.ones(1, 3)
    out = policy_loss(lp, old, adv, mask, rollout_logprobs=rollout, tis_cap=2.0)
    assert out.loss_sum.item() == pytest.approx(-4.0)
    assert out.stats["tis_weight_sum"].item() == pytest.approx(4.0)
    assert out.stats["tis_capped_sum"].item() == 1
    assert out.stats["tis_weight_max"].item() == pytest.approx(5.0)  # before the cap
    (grad,) = torch.autograd.grad(out.loss_sum, lp)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.5, -2.0]], dtype=F64))

    # rollout_logprobs without a cap: no weighting, only the mismatch stat
    plain = policy_loss(lp, old, adv, mask, rollout_logprobs=rollout)
    assert plain.loss_sum.item() == pytest.approx(-3.0)
    assert "tis_weight_sum" not in plain.stats
    # k3 of old against rollout, d = old - rollout = log w: sum (w - log w - 1)
    expected_kl = sum(w - math.log(w) - 1 for w in (0.5, 1.5, 5.0))
    assert plain.stats["rollout_kl_sum"].item() == pytest.approx(expected_kl)

    with pytest.raises(AlgoInputError, match=r"tis_cap=2\.0 needs rollout_logprobs"):
        policy_loss(lp, old, adv, mask, tis_cap=2.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(advantages=torch.ones(3)), r"advantages has shape \(3,\), expected \[B\]=\(2,\)"),
        (dict(mask=torch.ones(2, 3)), r"mask has shape \(2, 3\), expected \(2, 4\)"),
        (dict(clip_low=1.0), r"clip_low must be in \[0, 1\)"),
        (dict(clip_high=-0.1), "clip_high must be >= 0"),
    ],
)
def test_policy_loss_bad_input(kwargs, match):
    args = dict(
        logprobs=torch.zeros(2, 4),
        old_logprobs=torch.zeros(2, 4),
        advantages=torch.ones(2),
        mask=torch.ones(2, 4),
    )
    with pytest.raises(AlgoInputError, match=match):
        policy_loss(**{**args, **kwargs})


def test_policy_loss_sum_over_global_tokens_is_micro_batch_invariant():
    """Splitting 8 sequences of different lengths into 1, 2, 4 or 8 micro-batches (or ranks) and dividing
    each micro-batch's loss_sum by the global token count gives the same loss and the same gradients."""
    torch.manual_seed(0)
    b, t, h, v = 8, 7, 6, 11
    head = torch.nn.Linear(h, v, dtype=F64)
    hidden = torch.randn(b, t, h, dtype=F64)
    tokens = torch.randint(0, v, (b, t))
    lengths = torch.tensor([1, 7, 3, 5, 2, 7, 4, 6])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # right padding
    with torch.no_grad():
        old = gather_logprobs(head(hidden), tokens) + 0.3 * torch.randn(b, t, dtype=F64)  # some tokens clip
    adv = torch.randn(b, dtype=F64)
    global_tokens = mask.sum()

    def run(n_micro: int):
        head.zero_grad()
        total = torch.zeros((), dtype=F64)
        clipped = 0.0
        size = b // n_micro
        for i in range(0, b, size):
            sl = slice(i, i + size)
            lp = gather_logprobs(head(hidden[sl]), tokens[sl], chunk_size=5)
            out = policy_loss(lp, old[sl], adv[sl], mask[sl], clip_low=0.2, clip_high=0.28)
            loss = out.loss_sum / global_tokens
            loss.backward()
            total += loss.detach()
            clipped += out.stats["clipfrac_sum"].item()
        return total, head.weight.grad.clone(), head.bias.grad.clone(), clipped

    ref_loss, ref_w, ref_b, ref_clipped = run(1)
    assert ref_clipped > 0  # the clip is exercised
    for n_micro in (2, 4, 8):
        loss, gw, gb, clipped = run(n_micro)
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
        torch.testing.assert_close(gw, ref_w, atol=1e-6, rtol=0)
        torch.testing.assert_close(gb, ref_b, atol=1e-6, rtol=0)
        assert clipped == ref_clipped

    # why the sum: the mean of per-micro-batch means would differ with these uneven lengths
    lp = gather_logprobs(head(hidden), tokens).detach()
    per_token = [
        policy_loss(lp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1]) for i in range(b)
    ]
    mean_of_means = sum(o.loss_sum / o.stats["tokens"] for o in per_token) / b
    assert abs(mean_of_means - ref_loss) > 1e-3


def test_stats_to_means():
    means = stats_to_means({"tokens": torch.tensor(4.0), "clipfrac_sum": torch.tensor(1.0), "n": 3})
    assert means == {"tokens": 4.0, "clipfrac": 0.25, "n": 3.0}


# ---------------------------------------------------------------------------------------------
# dpo_loss


# beta = 0.1
# pair 0: chosen pc - rc = -10 - (-11) = 1, rejected pr - rr = -12 - (-11) = -1, z = 0.1 * (1 - -1) = 0.2
#         loss = -logsigmoid(0.2) = log(1 + e^-0.2) = log(1.8187308) = 0.5981389
# pair 1: chosen -5 - (-3) = -2, rejected -4 - (-6) = 2, z = 0.1 * (-2 - 2) = -0.4
#         loss = log(1 + e^0.4) = log(2.4918247) = 0.9130153
# smoothing eps: -(1-eps) logsig(z) - eps logsig(-z), and -logsig(-z) = -logsig(z) + z,
#         so loss_eps = loss + eps * z: eps 0.1 -> 0.5981389 + 0.02 = 0.6181389, 0.9130153 - 0.04 = 0.8730153
@pytest.mark.parametrize(
    "label_smoothing, expected",
    [(0.0, [0.5981389, 0.9130153]), (0.1, [0.6181389, 0.8730153])],
)
def test_dpo_loss_hand_values(label_smoothing, expected):
    pc = torch.tensor([-10.0, -5.0], requires_grad=True)
    pr = torch.tensor([-12.0, -4.0])
    rc = torch.tensor([-11.0, -3.0])
    rr = torch.tensor([-11.0, -6.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=label_smoothing)
    torch.testing.assert_close(out.losses, torch.tensor(expected), atol=1e-6, rtol=0)
    # rewards beta * (policy - ref): chosen [0.1, -0.2], rejected [-0.1, 0.2], detached
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.1, -0.2]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.1, 0.2]))
    assert not out.chosen_rewards.requires_grad and out.losses.requires_grad
    losses, chosen, rejected = out  # unpacks like a tuple
    assert losses is out.losses and chosen is out.chosen_rewards and rejected is out.rejected_rewards


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.0), "beta must be > 0"),
        (dict(label_smoothing=0.5), r"label_smoothing must be in \[0, 0.5\)"),
    ],
)
def test_dpo_loss_bad_input(kwargs, match):
    x = torch.zeros(2)
    with pytest.raises(AlgoInputError, match=match):
        dpo_loss(x, x, x, x, **{"beta": 0.1, **kwargs})
    with pytest.raises(AlgoInputError, match=r"ref_rejected_logps has shape \(3,\)"):
        dpo_loss(x, x, x, torch.zeros(3), beta=0.1)


# ---------------------------------------------------------------------------------------------
# lr_at


# base 1.0, warmup 4, total 14, min ratio 0.1 -> decay over steps 4..14 (10 steps)
#   warmup: step s -> (s + 1) / 4: 0.25 at 0, 1.0 at 3
#   step 6: progress 0.2; linear 0.1 + 0.9 * 0.8 = 0.82
#           cosine 0.1 + 0.9 * 0.5 * (1 + cos(0.2 pi)) = 0.1 + 0.45 * 1.8090170 = 0.9140576
#   step 9: progress 0.5; both 0.1 + 0.9 * 0.5 = 0.55
#   step 14 (end) and beyond: 0.1
@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("cosine", 0, 0.25),
        ("cosine", 3, 1.0),
        ("cosine", 4, 1.0),
        ("cosine", 6, 0.1 + 0.9 * 0.5 * (1 + math.cos(0.2 * math.pi))),
        ("cosine", 9, 0.55),
        ("cosine", 14, 0.1),
        ("cosine", 20, 0.1),
        ("linear", 0, 0.25),
        ("linear", 4, 1.0),
        ("linear", 6, 0.82),
        ("linear", 9, 0.55),
        ("linear", 14, 0.1),
        ("constant", 1, 0.5),
        ("constant", 4, 1.0),
        ("constant", 14, 1.0),
    ],
)
def test_lr_at(schedule, step, expected):
    assert lr_at(step, 1.0, 4, 14, schedule, min_lr_ratio=0.1) == pytest.approx(expected)


def test_lr_at_no_warmup_and_bad_input():
    assert lr_at(0, 3e-6, 0, 10, "cosine") == pytest.approx(3e-6)
    assert lr_at(10, 3e-6, 0, 10, "linear") == 0.0
    with pytest.raises(AlgoInputError, match="schedule must be 'constant', 'cosine' or 'linear', got 'exp'"):
        lr_at(0, 1.0, 0, 10, "exp")  # type: ignore[arg-type]
    with pytest.raises(AlgoInputError, match=r"warmup_steps must be in \[0, total_steps=10\], got 11"):
        lr_at(0, 1.0, 11, 10, "cosine")


def test_informative_sequences_keeps_whole_groups_whose_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.5, 0.0, 2.0])
    assert informative_sequences(rewards, 3) == [6, 7, 8]
    assert informative_sequences(rewards[:6], 3) == []
    assert informative_sequences(torch.tensor([1.0, -1.0, -1.0, -1.0]), 2) == [0, 1]


def test_order_balanced_constant_verdict_gets_zero_advantages():
    # One pair in both orders, 4 samples each: the first half's better answer is first (label 1), the
    # second half's is second. A judge that always answers "Assistant 2" is wrong on the first half
    # and right on the second: its rewards differ, yet every advantage is exactly zero.
    always_second = torch.tensor([-1.0] * 4 + [1.0] * 4 + [-1.0] * 4 + [1.0] * 4)
    for scale in (True, False):
        adv = group_advantages(always_second, 8, scale_by_std=scale, subgroups=2)
        assert torch.equal(adv, torch.zeros(16))
        # without order balancing the same rewards would teach the position
        assert group_advantages(always_second, 8, scale_by_std=scale).abs().sum() > 0
    assert informative_sequences(always_second, 8, subgroups=2) == []
    assert informative_sequences(always_second, 8) == list(range(16))


def test_order_balanced_advantages_center_each_order_on_its_own_mean():
    rewards = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0])  # both orders mixed
    adv = group_advantages(rewards, 8, scale_by_std=False, subgroups=2)
    assert torch.allclose(adv[:4], rewards[:4] - rewards[:4].mean())
    assert torch.allclose(adv[4:], rewards[4:] - rewards[4:].mean())
    scaled = group_advantages(rewards, 8, subgroups=2)
    assert torch.allclose(scaled, adv / (rewards.std() + 1e-6))  # the whole group's std scales both halves
    assert informative_sequences(rewards, 8, subgroups=2) == list(range(8))
    with pytest.raises(AlgoInputError, match="subgroups"):
        group_advantages(rewards, 8, subgroups=3)


def test_informative_sequences_rejects_ragged_groups():
    with pytest.raises(AlgoInputError, match="do not split into groups of 4"):
        informative_sequences(torch.tensor([1.0, 2.0, 3.0]), 4)
