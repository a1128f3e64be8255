import pytest
import torch

from rrm_ray.batch import build_batch, interleave_for_balance, mini_batch_tokens, permute, shard


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
