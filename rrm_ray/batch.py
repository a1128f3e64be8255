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

    def select(self, index: slice) -> TrainBatch:
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
