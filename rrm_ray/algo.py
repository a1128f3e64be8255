"""RL algorithm math as pure torch functions: advantages, log-probs, losses, LR schedule.

Nothing here knows about Ray, vLLM or how the model is sharded; the learner actor calls these on
its micro-batches. Shapes: B = sequences in a micro-batch, T = response tokens (right-padded),
V = vocabulary, N = all sampled responses of a step (prompts x group_size).

Token-mean normalisation across micro-batches and ranks
-------------------------------------------------------
`policy_loss` returns the SUM of per-token losses over valid tokens, never a mean. The caller divides
by the number of valid response tokens in the whole step batch (all micro-batches on all ranks):

    global_tokens = mask_of_whole_step.sum()            # per rank, then all_reduce(SUM) across ranks
    for mb in micro_batches:                            # gradient accumulation
        out = policy_loss(lp, old_lp, adv, mb.mask)
        (out.loss_sum / global_tokens * world_size).backward()   # x world_size: DDP/FSDP average grads

A per-micro-batch mean would weight a token in a short micro-batch more than one in a long one, so the
loss would change with the micro-batch size and the number of ranks; the sum over a global count does
not. Stats come back as sums plus a token count for the same reason: sum them (all_reduce SUM), then
call `stats_to_means`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0  # |log ratio| bound in kl_k3: exp(20) ~ 4.9e8 stays finite and tame in fp32


class AlgoInputError(ValueError):
    """Bad argument to an algorithm function; the message names the function, argument and expectation."""


def check_input(cond: bool, msg: str) -> None:
    """Raise AlgoInputError(msg) unless cond: shapes and values are checked before any math."""
    if not cond:
        raise AlgoInputError(msg)


def _check_same_shape(fn: str, **tensors: Tensor) -> None:
    names = list(tensors)
    ref = tensors[names[0]].shape
    for name in names[1:]:
        shape = tensors[name].shape
        check_input(
            shape == ref,
            f"{fn}: {name} has shape {tuple(shape)}, expected {tuple(ref)} (the shape of {names[0]})",
        )


# ----------------------------------------------------------------------------------------------
# masked reductions


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is non-zero. x, mask: same shape, e.g. [B, T] -> scalar, or summed over `dim`.

    Uses `where` rather than `x * mask`, so garbage (inf/nan) at padded positions cannot leak in.
    """
    _check_same_shape("masked_sum", x=x, mask=mask)
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


# ----------------------------------------------------------------------------------------------
# advantages


def informative_sequences(rewards: Tensor, group_size: int, subgroups: int = 1) -> list[int]:
    """Indices of the sequences whose group has a non-zero advantage somewhere (DAPO's group filter).

    A group that is all right or all wrong has zero advantage everywhere; without a KL term its
    sequences add nothing to the gradient, only to the update's compute. With `subgroups` > 1 (order-
    balanced judge training, see `group_advantages`) a group is flat when each of its subgroups is.
    """
    check_input(
        rewards.dim() == 1, f"informative_sequences: rewards must be 1-D [N], got {tuple(rewards.shape)}"
    )
    check_input(
        group_size >= 1 and rewards.numel() % group_size == 0,
        f"informative_sequences: {rewards.numel()} rewards do not split into groups of {group_size}",
    )
    check_input(
        subgroups >= 1 and group_size % subgroups == 0,
        f"informative_sequences: group_size={group_size} does not split into {subgroups} subgroups",
    )
    parts = rewards.view(-1, subgroups, group_size // subgroups)
    flat = (parts == parts[:, :, :1]).all(dim=2).all(dim=1)
    groups = parts.view(-1, group_size)
    return [g * group_size + k for g in range(len(groups)) if not flat[g] for k in range(group_size)]


def group_advantages(
    rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6, subgroups: int = 1
) -> Tensor:
    """GRPO advantages. rewards: [N] laid out group by group (prompt 0's samples, then prompt 1's, ...).

    Returns [N] float32: (r - group mean) / (group std + eps), or just r - group mean when `scale_by_std`
    is False (Dr. GRPO: dividing by the std up-weights prompts that are nearly always solved or failed).
    The std is the sample std (Bessel-corrected, torch.std's default), as in DeepSeekMath's GRPO and verl.
    A group whose rewards are all equal carries no learning signal and gets exactly zero, as does every
    group when group_size is 1 (its sample std is undefined).

    `subgroups` > 1: order-balanced judge training. A group is one pair shown in both orders, its
    samples split into `subgroups` equal consecutive parts (one per order). Each sample's baseline is
    the mean of its own part, the scale the whole group's std. A judge that names the same position
    whatever it reads then earns exactly zero advantage (each part is constant), and a position-only
    policy's pushes from the two orders cancel: the only signal left is telling the answers apart.
    """
    check_input(
        rewards.dim() == 1, f"group_advantages: rewards must be 1-D [N], got shape {tuple(rewards.shape)}"
    )
    check_input(group_size >= 1, f"group_advantages: group_size must be >= 1, got {group_size}")
    n = rewards.numel()
    check_input(
        n % group_size == 0,
        f"group_advantages: rewards has {n} entries, not a multiple of group_size={group_size}; rewards "
        f"must hold group_size samples per prompt, laid out prompt by prompt",
    )
    check_input(eps >= 0, f"group_advantages: eps must be >= 0, got {eps}")
    bad = (~torch.isfinite(rewards)).nonzero()
    if bad.numel():
        i = bad[0, 0].item()
        raise AlgoInputError(
            f"group_advantages: rewards[{i}] (0-based) is {rewards[i].item()}, expected a finite number"
        )

    check_input(
        subgroups >= 1 and group_size % subgroups == 0,
        f"group_advantages: group_size={group_size} does not split into subgroups={subgroups} equal parts",
    )
    r = rewards.float().view(-1, group_size)  # [G, n]
    parts = r.view(-1, subgroups, group_size // subgroups)  # [G, k, n/k]
    adv = (parts - parts.mean(dim=2, keepdim=True)).view(-1, group_size)
    if scale_by_std and group_size > 1:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    # A constant part's mean can differ from its members by rounding; force the documented exact zero.
    constant = (parts == parts[:, :, :1]).all(dim=2, keepdim=True).expand_as(parts).reshape(-1, group_size)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.view(-1)


def sequence_logps(token_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Log-probability of each whole response. token_logprobs, mask: [B, T] -> [B] (sum over valid tokens)."""
    check_input(
        token_logprobs.dim() == 2,
        f"sequence_logps: token_logprobs must be [B, T], got {tuple(token_logprobs.shape)}",
    )
    return masked_sum(token_logprobs, mask, dim=-1)


# ----------------------------------------------------------------------------------------------
# KL and policy loss


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimate of KL(policy || ref) per token, from samples of the policy. Any equal shapes, e.g. [B, T].

    With d = ref - logprobs: exp(d) - d - 1, which is >= 0 and unbiased (Schulman, "Approximating KL
    divergence"). d is clamped to [-20, 20] first: a token the reference finds far likelier would
    otherwise give exp(d) = inf in fp32; outside that range the penalty's gradient is zero.
    """
    _check_same_shape("kl_k3", logprobs=logprobs, ref_logprobs=ref_logprobs)
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


class PolicyLossOutput(NamedTuple):
    """loss_sum: 0-d, the SUM of per-token losses over valid tokens (divide by the global token count).
    stats: 0-d detached tensors, all sums or counts so they aggregate by addition (see `policy_loss`)."""

    loss_sum: Tensor
    stats: dict[str, Tensor]


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    rollout_logprobs: Tensor | None = None,
    tis_cap: float | None = None,
) -> PolicyLossOutput:
    """PPO/GRPO clipped surrogate, summed over valid tokens.

    logprobs (with grad), old_logprobs, mask: [B, T]; advantages: [B] (one per sequence, as GRPO) or [B, T];
    rollout_logprobs: [B, T] or None.
    Per token: ratio = exp(lp - old); loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A).
    clip_high > clip_low is DAPO's "clip-higher": it lets low-probability tokens with A > 0 grow further.

    Truncated importance sampling (TIS): vLLM samples with slightly different numerics than the learner,
    so the rollout policy is not exactly `old`. With `rollout_logprobs` and `tis_cap` set, each token's
    loss is multiplied by w = min(exp(old - rollout), tis_cap), detached; the cap bounds the variance.
    `rollout_logprobs` alone only adds mismatch stats; `tis_cap` alone is an error.

    stats (sums, add them up across micro-batches/ranks, then `stats_to_means`):
      tokens, pg_loss_sum, clipfrac_sum (tokens whose gradient the clip removed), clipfrac_low_sum (A < 0,
      ratio < 1 - clip_low), clipfrac_high_sum (A > 0, ratio > 1 + clip_high), approx_kl_sum (k3 of the
      policy against old), ratio_sum; with rollout_logprobs also rollout_kl_sum (k3 of old against rollout)
      and, with tis_cap, tis_weight_sum, tis_capped_sum (tokens whose weight hit the cap) and
      tis_weight_max (the largest weight before the cap: how far off-policy the batch got; combine
      `_max` stats with max, not sum).
    """
    fn = "policy_loss"
    check_input(logprobs.dim() == 2, f"{fn}: logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    _check_same_shape(fn, logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    b = logprobs.shape[0]
    check_input(
        advantages.shape in ((b,), logprobs.shape),
        f"{fn}: advantages has shape {tuple(advantages.shape)}, "
        f"expected [B]=({b},) or [B, T]={tuple(logprobs.shape)}",
    )
    check_input(0.0 <= clip_low < 1.0, f"{fn}: clip_low must be in [0, 1), got {clip_low}")
    check_input(clip_high >= 0.0, f"{fn}: clip_high must be >= 0, got {clip_high}")
    check_input(
        tis_cap is None or rollout_logprobs is not None,
        f"{fn}: tis_cap={tis_cap} needs rollout_logprobs (the log-probs vLLM reported when sampling)",
    )
    check_input(tis_cap is None or tis_cap > 0, f"{fn}: tis_cap must be > 0, got {tis_cap}")
    if rollout_logprobs is not None:
        _check_same_shape(fn, logprobs=logprobs, rollout_logprobs=rollout_logprobs)

    valid = mask.bool()
    old = old_logprobs.detach()
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(logprobs)  # [B] -> [B, T]

    log_ratio = logprobs - old
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(-ratio * adv, -clipped * adv)  # = -min(ratio*A, clip(ratio)*A)

    stats: dict[str, Tensor] = {}
    if rollout_logprobs is not None:
        rollout = rollout_logprobs.detach()
        stats["rollout_kl_sum"] = masked_sum(kl_k3(rollout, old), valid)
        if tis_cap is not None:
            raw = torch.exp(old - rollout)
            weight = raw.clamp(max=tis_cap)
            per_token = per_token * weight
            stats["tis_weight_sum"] = masked_sum(weight, valid)
            stats["tis_capped_sum"] = masked_sum((weight >= tis_cap).to(weight.dtype), valid)
            stats["tis_weight_max"] = raw[valid].max() if valid.any() else raw.new_zeros(())

    loss_sum = masked_sum(per_token, valid)

    with torch.no_grad():
        high = (adv > 0) & (ratio > 1.0 + clip_high)
        low = (adv < 0) & (ratio < 1.0 - clip_low)
        stats.update(
            tokens=valid.sum().to(logprobs.dtype),
            pg_loss_sum=loss_sum.detach(),
            clipfrac_sum=masked_sum((high | low).to(logprobs.dtype), valid),
            clipfrac_low_sum=masked_sum(low.to(logprobs.dtype), valid),
            clipfrac_high_sum=masked_sum(high.to(logprobs.dtype), valid),
            approx_kl_sum=masked_sum(kl_k3(logprobs.detach(), old), valid),
            ratio_sum=masked_sum(ratio.detach(), valid),
        )
    return PolicyLossOutput(loss_sum, {k: v.detach() for k, v in stats.items()})


def stats_to_means(stats: dict[str, Tensor | float]) -> dict[str, float]:
    """Turn aggregated sums into per-token means: every `<name>_sum` becomes `<name>` = sum / tokens.

    stats: the aggregated dict from `policy_loss`; other keys (counts, `_max` maxima) pass through.
    """
    check_input("tokens" in stats, "stats_to_means: stats has no 'tokens' count (expected policy_loss stats)")
    tokens = max(float(stats["tokens"]), 1.0)
    out: dict[str, float] = {}
    for key, value in stats.items():
        if key.endswith("_sum"):
            out[key[: -len("_sum")]] = float(value) / tokens
        else:
            out[key] = float(value)
    return out


# ----------------------------------------------------------------------------------------------
# DPO


class DpoOutput(NamedTuple):
    """losses, chosen_rewards, rejected_rewards: each [B]; the rewards are detached (for logging)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> DpoOutput:
    """Sigmoid DPO loss per pair. All inputs [B] (sequence log-probs, see `sequence_logps`) -> [B] each.

    With z = beta * ((pc - rc) - (pr - rr)): loss = -(1 - eps) * logsigmoid(z) - eps * logsigmoid(-z).
    eps = label_smoothing > 0 is conservative DPO: it assumes a fraction eps of labels are flipped, which
    suits RRM-labelled pairs whose judge is sometimes wrong; eps = 0 is plain DPO.
    Implicit rewards: beta * (policy - ref) for chosen and rejected, detached.
    """
    fn = "dpo_loss"
    check_input(
        policy_chosen_logps.dim() == 1,
        f"{fn}: policy_chosen_logps must be [B], got {tuple(policy_chosen_logps.shape)}",
    )
    _check_same_shape(
        fn,
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    check_input(beta > 0, f"{fn}: beta must be > 0, got {beta}")
    check_input(
        0.0 <= label_smoothing < 0.5, f"{fn}: label_smoothing must be in [0, 0.5), got {label_smoothing}"
    )

    chosen = policy_chosen_logps - ref_chosen_logps.detach()
    rejected = policy_rejected_logps - ref_rejected_logps.detach()
    z = beta * (chosen - rejected)
    losses = -(1.0 - label_smoothing) * torch.nn.functional.logsigmoid(z)
    if label_smoothing > 0:
        losses = losses - label_smoothing * torch.nn.functional.logsigmoid(-z)
    return DpoOutput(losses, (beta * chosen).detach(), (beta * rejected).detach())


# ----------------------------------------------------------------------------------------------
# learning-rate schedule

Schedule = Literal["constant", "cosine", "linear"]


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    schedule: Schedule,
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for 0-based optimizer step `step`: linear warmup, then the schedule.

    Warmup: base_lr * (step + 1) / warmup_steps for step < warmup_steps, so step 0 already learns and
    step warmup_steps - 1 reaches base_lr. After it, with progress = (step - warmup) / (total - warmup):
    constant keeps base_lr; linear and cosine decay from base_lr to min_lr_ratio * base_lr, reached at
    step == total_steps and held beyond it.
    """
    fn = "lr_at"
    check_input(step >= 0, f"{fn}: step must be >= 0, got {step}")
    check_input(base_lr >= 0, f"{fn}: base_lr must be >= 0, got {base_lr}")
    check_input(total_steps >= 1, f"{fn}: total_steps must be >= 1, got {total_steps}")
    check_input(
        0 <= warmup_steps <= total_steps,
        f"{fn}: warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}",
    )
    check_input(0.0 <= min_lr_ratio <= 1.0, f"{fn}: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    check_input(
        schedule in ("constant", "cosine", "linear"),
        f"{fn}: schedule must be 'constant', 'cosine' or 'linear', got {schedule!r}",
    )

    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    factor = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)


def step_lrs(
    step: int,
    mini_batches: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    schedule: Schedule,
    min_lr_ratio: float = 0.0,
) -> list[float]:
    """Learning rates of the `mini_batches` optimizer steps of 0-based training step `step`.

    The schedule counts optimizer steps, not training steps: step s's mini-batch m is optimizer step
    s * mini_batches + m of total_steps * mini_batches, and `warmup_steps` is in optimizer steps too
    (a training step of 4 mini-batches advances warmup by 4). With mini_batches == 1 this is
    [lr_at(step, ...)].
    """
    check_input(mini_batches >= 1, f"step_lrs: mini_batches must be >= 1, got {mini_batches}")
    total = total_steps * mini_batches
    return [
        lr_at(step * mini_batches + m, base_lr, warmup_steps, total, schedule, min_lr_ratio)
        for m in range(mini_batches)
    ]
