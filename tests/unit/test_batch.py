import pytest
import torch

from rrm_ray.batch import (
    budget_micro_batches,
    build_batch,
    fixed_micro_batches,
    interleave_for_balance,
    micro_batch_plan,
    mini_batch_tokens,
    padded_tokens,
    permute,
    shard,
)


def test_layout_aligns_masks_with_next_token_positions():
    b = build_batch(
        [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], [[-0.5, -0.6], [-1.0, -1.1, -1.2]], [1.0, -1.0], pad_id=0
    )
    assert b.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # position t predicts token t+1: seq 0's response tokens sit at 3, 4 -> predicted from 2, 3
    assert b.loss_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert torch.allclose(b.rollout_logprobs[0], torch.tensor([0, 0, -0.5, -0.6]))
    assert b.num_tokens == 5


def test_response_mask_leaves_appended_tokens_out_of_the_loss():
    # seq 0: response tokens 5 (sampled), 6 (appended by the engine), 7 (sampled); seq 1: no mask
    b = build_batch(
        [[1, 2], [3]], [[5, 6, 7], [8]], [[-0.1, 0.0, -0.3], [-0.2]], [1.0, 1.0], 0, [[1, 0, 1], None]
    )
    assert b.loss_mask.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    assert b.num_tokens == 3


@pytest.mark.parametrize("mask", [[1, 1], [1, 2, 0]])
def test_response_mask_must_match_the_response(mask):
    with pytest.raises(ValueError, match="sequence 0 needs a 0/1 response mask of 3 tokens"):
        build_batch([[1]], [[5, 6, 7]], [[0.0] * 3], [0.0], 0, [mask])


def test_trim_drops_unused_padding():
    b = build_batch([[1], [1, 2, 3, 4]], [[2], [5]], [[0.0], [0.0]], [0.0, 0.0], pad_id=0)
    first = b.select(slice(0, 1)).trimmed()
    assert first.input_ids.shape == (1, 2) and first.loss_mask.shape == (1, 1)


def test_shards_and_token_counts():
    b = build_batch(
        [[1]] * 8, [[2] * (i + 1) for i in range(8)], [[0.0] * (i + 1) for i in range(8)], [0.0] * 8, 0
    )
    order = interleave_for_balance(8, 2)
    assert sorted(order) == list(range(8)) and order[:4] == [0, 2, 4, 6]
    shards = shard(permute(b, order), 2)
    assert [len(s) for s in shards] == [4, 4]
    tokens = mini_batch_tokens(shards, 2)
    assert sum(tokens) == b.num_tokens == 36
    assert tokens == [1 + 3 + 2 + 4, 5 + 7 + 6 + 8]


def test_fixed_micro_batches_keep_units_whole():
    assert fixed_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert fixed_micro_batches(8, 3, unit=2) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # 3 // 2 = 1 pair
    assert fixed_micro_batches(8, 4, unit=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert micro_batch_plan([3] * 5, 2, 0, count=4) == [[0, 1], [2, 3], [4], []]


def test_budget_groups_by_length_and_stays_within_the_budget():
    lengths = [10, 90, 12, 85, 11, 40, 9, 38]
    plan = budget_micro_batches(lengths, 100)
    assert sorted(r for rows in plan for r in rows) == list(range(8))  # every row exactly once
    assert plan == [[1], [3], [5, 7], [2, 4, 0, 6]]  # longest first, similar lengths together
    assert all(len(rows) * max(lengths[r] for r in rows) <= 100 for rows in plan)
    assert padded_tokens(lengths, plan) == 90 + 85 + 2 * 40 + 4 * 12
    fixed = fixed_micro_batches(8, 2)
    assert padded_tokens(lengths, fixed) == 2 * (90 + 85 + 40 + 38)  # today's: far more padding


def test_budget_equalises_counts_by_splitting_then_empty_micro_batches():
    lengths = [5] * 6
    assert budget_micro_batches(lengths, 100) == [[0, 1, 2, 3, 4, 5]]
    # the costliest splittable micro-batch is halved until every rank has the agreed count
    assert budget_micro_batches(lengths, 100, count=3) == [[0], [1, 2], [3, 4, 5]]
    # out of rows to split: the rest are empty (zero-weight passes)
    assert budget_micro_batches([5, 5], 100, count=4) == [[0], [1], [], []]


def test_budget_keeps_dpo_pairs_together_and_a_lone_unit_may_exceed_it():
    lengths = [30, 60, 20, 10, 50, 55]  # pairs (0, 1), (2, 3), (4, 5): padded widths 60, 20, 55
    assert budget_micro_batches(lengths, 240, unit=2) == [[0, 1, 4, 5], [2, 3]]  # 4 rows x 60 fit
    assert budget_micro_batches(lengths, 200, unit=2) == [[0, 1], [4, 5], [2, 3]]  # 4 x 55 do not
    for plan in (budget_micro_batches(lengths, 130, unit=2, count=c) for c in (0, 4, 5)):
        units = [p[i : i + 2] for p in plan for i in range(0, len(p), 2)]
        assert sorted(units) == [[0, 1], [2, 3], [4, 5]]  # whole pairs, each once
    assert budget_micro_batches([80, 90], 100, unit=2) == [[0, 1]]  # one pair over the budget: alone
    with pytest.raises(ValueError, match="units of 2"):
        budget_micro_batches([1, 2, 3], 100, unit=2)
    with pytest.raises(ValueError, match="budget must be >= 1"):
        budget_micro_batches([1], 0)


def test_select_by_row_indices_and_lengths():
    b = build_batch([[1], [1, 2]], [[3, 4], [5]], [[0.0, 0.0], [0.0]], [1.0, 2.0], pad_id=0)
    assert b.lengths == [3, 3]
    picked = b.select([1, 0])
    assert picked.advantages.tolist() == [2.0, 1.0]
    assert picked.input_ids.tolist() == [[1, 2, 5], [1, 3, 4]]
