"""Turn sampled completions into padded training tensors, and split them over ranks and mini-batches.

Layout of one sequence (right-padded to the batch's longest):

    input_ids:     p0 p1 p2 r0 r1 r2 PAD PAD
    loss_mask:        0  0  1  1  1   0   0      # t predicts token t+1: 1 where that is a response token
    rollout_lp:       0  0  l0 l1 l2  0   0      # vLLM's log-prob of the sampled token, same alignment

Everything is [B, L] or [B, L-1]; the learner's shifted logits line up with the [B, L-1] tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    loss_mask: torch.Tensor  # [B, L-1] float: 1 on positions that predict a response token
    rollout_logprobs: torch.Tensor  # [B, L-1] float
    advantages: torch.Tensor  # [B] float

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    @property
    def lengths(self) -> list[int]:
        """Tokens of each sequence (prompt + response, padding excluded)."""
        return [int(n) for n in self.attention_mask.sum(dim=1).tolist()]

    def select(self, index: slice | Sequence[int]) -> TrainBatch:
        """The rows of a slice, or of a list of row indices (in that order)."""
        if not isinstance(index, slice):
            index = torch.tensor(list(index), dtype=torch.long)  # type: ignore[assignment]
        return TrainBatch(
            self.input_ids[index],
            self.attention_mask[index],
            self.loss_mask[index],
            self.rollout_logprobs[index],
            self.advantages[index],
        )

    def trimmed(self) -> TrainBatch:
        """Drop padding columns that no sequence in this (sub-)batch uses."""
        length = int(self.attention_mask.sum(dim=1).max().item())
        return TrainBatch(
            self.input_ids[:, :length],
            self.attention_mask[:, :length],
            self.loss_mask[:, : length - 1],
            self.rollout_logprobs[:, : length - 1],
            self.advantages,
        )


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    rollout_logprobs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    pad_id: int,
    response_masks: Sequence[Sequence[int] | None] | None = None,
) -> TrainBatch:
    """Concatenate prompt and response per sequence and pad on the right.

    ``response_masks[i]`` (optional, one 0/1 per response token) leaves out of the loss the tokens
    the policy did not sample, e.g. a ``</think>`` the engine appended (``rrm_ray.judge.budget``).
    """
    n = len(prompt_ids)
    if not (len(response_ids) == len(rollout_logprobs) == len(advantages) == n):
        raise ValueError(
            "build_batch: prompt_ids, response_ids, rollout_logprobs, advantages differ in length"
        )
    length = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
    length = max(length, 2)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    loss_mask = torch.zeros((n, length - 1), dtype=torch.float32)
    rollout_lp = torch.zeros((n, length - 1), dtype=torch.float32)
    for i, (p, r, lp) in enumerate(zip(prompt_ids, response_ids, rollout_logprobs, strict=True)):
        if len(lp) != len(r):
            raise ValueError(
                f"build_batch: sequence {i} has {len(r)} response tokens but {len(lp)} log-probs"
            )
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        start = len(p) - 1  # position predicting the first response token
        mask = None if response_masks is None else response_masks[i]
        if mask is None:
            loss_mask[i, start : start + len(r)] = 1.0
        elif len(mask) != len(r) or any(m not in (0, 1) for m in mask):
            raise ValueError(
                f"build_batch: sequence {i} needs a 0/1 response mask of {len(r)} tokens, got {list(mask)}"
            )
        else:
            loss_mask[i, start : start + len(r)] = torch.tensor(mask, dtype=torch.float32)
        rollout_lp[i, start : start + len(r)] = torch.tensor(lp, dtype=torch.float32)
    return TrainBatch(
        input_ids, attention, loss_mask, rollout_lp, torch.tensor(advantages, dtype=torch.float32)
    )


def shard(batch: TrainBatch, parts: int) -> list[TrainBatch]:
    """Contiguous equal shards (one per rank); the config guarantees divisibility."""
    size, rest = divmod(len(batch), parts)
    if rest:
        raise ValueError(f"{len(batch)} sequences do not split evenly over {parts} ranks")
    return [batch.select(slice(i * size, (i + 1) * size)) for i in range(parts)]


def interleave_for_balance(n: int, parts: int) -> list[int]:
    """A permutation that deals sequences round-robin, so every rank gets every prompt's samples.

    Sequences arrive prompt-major with similar lengths inside a group; dealing them out evenly keeps
    the ranks' token counts (and so their step times) close.
    """
    return [i for r in range(parts) for i in range(r, n, parts)]


def mini_batch_tokens(shards: Sequence[TrainBatch], mini_batches: int) -> list[int]:
    """Valid tokens of each mini-batch summed over all ranks: the token-mean denominators."""
    totals = [0] * mini_batches
    for s in shards:
        size = len(s) // mini_batches
        for m in range(mini_batches):
            totals[m] += int(s.loss_mask[m * size : (m + 1) * size].sum().item())
    return totals


def permute(batch: TrainBatch, order: Sequence[int]) -> TrainBatch:
    idx = torch.tensor(list(order), dtype=torch.long)
    return TrainBatch(
        batch.input_ids[idx],
        batch.attention_mask[idx],
        batch.loss_mask[idx],
        batch.rollout_logprobs[idx],
        batch.advantages[idx],
    )


# -- micro-batches: fixed sizes, or a budget of padded tokens ------------------------------------------
def fixed_micro_batches(rows: int, size: int, unit: int = 1) -> list[list[int]]:
    """Consecutive micro-batches of `size` rows (the last may be shorter), whole units of `unit` rows
    each (DPO: a chosen/rejected pair is 2 rows): at least one unit per micro-batch."""
    step = unit * max(1, size // unit)
    return [list(range(start, min(start + step, rows))) for start in range(0, rows, step)]


def budget_micro_batches(
    lengths: Sequence[int], budget: int, unit: int = 1, count: int = 0
) -> list[list[int]]:
    """Row indices of each micro-batch, filled up to `budget` PADDED tokens (rows x longest row).

    Units (`unit` consecutive rows: 1 for GRPO, 2 for a DPO pair, which must share a forward) are
    sorted longest first and dealt into micro-batches in that order, a new one opening when the next
    unit would take the padded size over the budget, so a micro-batch holds sequences of similar
    length. A unit that alone exceeds the budget gets a micro-batch of its own (validation keeps the
    budget >= model.max_model_len, so only a DPO pair can). `count` > the micro-batches needed: the
    costliest micro-batches of two or more units are halved until there are `count` (every rank must
    run the same number of forward/backward passes: FSDP2's collectives and DeepSpeed's accumulation
    boundary need it); if no micro-batch can be split any more the rest are empty lists, which the
    learner runs as zero-weight work. Deterministic: the same lengths give the same plan.
    """
    if budget < 1:
        raise ValueError(f"budget_micro_batches: budget must be >= 1 token, got {budget}")
    if len(lengths) % unit:
        raise ValueError(f"budget_micro_batches: {len(lengths)} rows do not split into units of {unit}")
    units = [list(range(i, i + unit)) for i in range(0, len(lengths), unit)]
    longest = [max(lengths[r] for r in u) for u in units]
    order = sorted(range(len(units)), key=lambda u: (-longest[u], u))
    plans: list[list[int]] = []
    for u in order:  # longest first: the first unit of a micro-batch sets its padded width
        if plans and (len(plans[-1]) + 1) * unit * longest[plans[-1][0]] <= budget:
            plans[-1].append(u)
        else:
            plans.append([u])

    def cost(p: list[int]) -> int:
        return len(p) * unit * longest[p[0]]

    while len(plans) < count:
        splittable = [i for i, p in enumerate(plans) if len(p) >= 2]
        if not splittable:
            plans += [[] for _ in range(count - len(plans))]
            break
        i = max(splittable, key=lambda i: (cost(plans[i]), -i))
        p = plans[i]
        plans[i : i + 1] = [p[: len(p) // 2], p[len(p) // 2 :]]
    return [[r for u in p for r in units[u]] for p in plans]


def padded_tokens(lengths: Sequence[int], plan: Sequence[Sequence[int]]) -> int:
    """Tokens the forward passes of `plan` process, padding included (what the budget bounds)."""
    return sum(len(rows) * max(lengths[r] for r in rows) for rows in plan if rows)


def micro_batch_plan(
    lengths: Sequence[int], micro_batch_size: int, budget: int | None, unit: int = 1, count: int = 0
) -> list[list[int]]:
    """`learner.max_tokens_per_microbatch` (budget; 0 or None: off) or else `learner.micro_batch_size`."""
    if budget:
        return budget_micro_batches(lengths, budget, unit, count)
    plan = fixed_micro_batches(len(lengths), micro_batch_size, unit)
    return plan + [[] for _ in range(count - len(plan))]
