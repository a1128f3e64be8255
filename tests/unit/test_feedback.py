import pytest
import torch

from rrm_ray.batch import build_batch
from rrm_ray.jobs.dpo import interleaved, shard_pairs
from rrm_ray.judge.feedback import prompts_to_judge, query_text, sample_rewards, verifier_agreement


def test_query_text_takes_the_last_user_message():
    assert query_text("What is 2+2?") == "What is 2+2?"
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    assert query_text(chat) == "b"


def test_which_prompts_go_to_the_judge():
    answers = ["4", None, "7", None]
    assert prompts_to_judge(answers, "judge_if_no_rule") == [1, 3]
    assert prompts_to_judge(answers, "weighted") == [0, 1, 2, 3]


def test_sample_rewards_judge_only_where_no_rule():
    # prompt 0 has a reference answer (rule rewards), prompt 1 has none (judge rewards), n = 2
    rule = [1.0, 0.0, None, None]
    out = sample_rewards(
        rule, {1: [0.0, 1.0]}, n=2, mode="judge_if_no_rule", rule_weight=1.0, judge_weight=1.0
    )
    assert out == [1.0, 0.0, 0.0, 1.0]


def test_sample_rewards_weighted_mix():
    rule = [1.0, 0.0]
    out = sample_rewards(rule, {0: [0.0, 1.0]}, n=2, mode="weighted", rule_weight=1.0, judge_weight=0.5)
    assert out == [1.0, 0.5]
    with pytest.raises(ValueError, match="3 judge rewards for 2 samples"):
        sample_rewards(rule, {0: [0.0, 1.0, 0.5]}, n=2, mode="weighted", rule_weight=1.0, judge_weight=0.5)


def test_verifier_agreement_counts_only_informative_pairs():
    # n = 4; correct samples of prompt 0: 1 and 3
    correct = [0.0, 1.0, 0.0, 1.0]
    matches = {0: [(0, 1, "b"), (2, 3, "a"), (1, 3, "a")]}  # agree, disagree, both correct (ignored)
    agreement = verifier_agreement(matches, {0: 1}, correct, n=4)
    assert (agreement.pairs_agree, agreement.pairs_total) == (1, 2)
    assert (agreement.picks_correct, agreement.picks_total) == (1, 1)
    assert agreement.pair_rate == 0.5
    none_correct = verifier_agreement({0: [(0, 1, "a")]}, {0: 0}, [0.0] * 4, n=4)
    assert none_correct.pick_rate is None and none_correct.pair_rate is None


def test_verifier_agreement_follows_graded_rule_rewards():
    # A format-only reward (0.5) still ranks above nothing; the best (1.5) is the one to pick.
    scores = [0.0, 0.5, 1.5, 0.5]
    matches = {0: [(0, 1, "b"), (2, 3, "b"), (1, 3, "a"), (1, 2, "b")]}  # agree, disagree, tie, agree
    agreement = verifier_agreement(matches, {0: 2}, scores, n=4)
    assert (agreement.pairs_agree, agreement.pairs_total) == (2, 3)
    assert (agreement.picks_correct, agreement.picks_total) == (1, 1)
    assert verifier_agreement(matches, {0: 1}, scores, n=4).picks_correct == 0


def test_dpo_layout_keeps_pairs_whole_on_each_rank():
    assert interleaved(["c0", "c1"], ["r0", "r1"]) == ["c0", "r0", "c1", "r1"]
    batch = build_batch([[1]] * 8, [[2, 3]] * 8, [[0.0, 0.0]] * 8, [0.0] * 8, pad_id=0)
    shards = shard_pairs(batch, 2)
    assert [len(s) for s in shards] == [4, 4]
    assert torch.equal(torch.cat([s.input_ids for s in shards]), batch.input_ids)
    with pytest.raises(ValueError, match="4 pairs do not split evenly over 3"):
        shard_pairs(batch, 3)


def test_dpo_has_no_checkpoint_to_resume_from():
    from rrm_ray.config import ConfigError
    from rrm_ray.validation import load_config, validate_dpo

    cfg = load_config(None, ["judge.enabled=true", "dpo.pairs_per_step=2", "resume=auto"])
    with pytest.raises(ConfigError, match=r"resume.*writes no checkpoints.*rrm-ray export"):
        validate_dpo(cfg)
