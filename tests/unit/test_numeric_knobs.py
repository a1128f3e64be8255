"""Every numeric knob of the schema is finite and in range, or the job fails before it starts, naming the
key: `inf` used to pass every `> 0` check (an `inf` timeout crashed ray.wait, `learner.lr=inf` trained),
and NaN passes no comparison at all. The walk covers knobs added later without a line here."""

import math

import pytest

from rrm_ray.config import ConfigError
from rrm_ray.validation import RANGES, load_config, numeric_keys, parse_interval

KEYS = sorted(numeric_keys())
# A numeric map's entries are set under a name of its own (any name: the map takes any key).
MAP_ENTRY = {"reward.rule_weights.*": "reward.rule_weights.arithmetic"}


def settable(key: str) -> str:
    return MAP_ENTRY.get(key, key)


def test_the_walk_finds_the_knobs_of_every_section():
    sections = {k.split(".")[0] for k in KEYS}
    assert sections >= {"cluster", "model", "rollout", "learner", "algorithm", "reward", "judge", "data"}
    assert {"learner.lr", "learner.grad_clip", "reward.fallback", "reward.rule_weights.*"} <= set(KEYS)
    assert set(RANGES) <= set(KEYS)  # no range for a key that does not exist


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_non_finite_values_are_rejected_naming_the_key(key, bad):
    with pytest.raises(ConfigError) as info:  # an int knob fails at the schema, a float one in validate
        load_config(None, [f"{settable(key)}={bad}"])
    assert settable(key) in str(info.value)


@pytest.mark.parametrize("key", KEYS)
def test_negative_values_are_rejected_unless_the_range_allows_them(key):
    low = parse_interval(RANGES.get(key, "[0, inf)"))[0]
    override = f"{settable(key)}=-1"
    if low == -math.inf:  # explicitly allowed: a negative reward for a failed rule, a penalty weight
        load_config(None, [override])
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert settable(key) in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("learner.lr=inf", "learner.lr: must be a finite number (> 0), got inf"),
        ("learner.grad_clip=-0.5", "learner.grad_clip: must be >= 0, got -0.5"),
        ("learner.weight_decay=-0.1", "learner.weight_decay: must be >= 0"),
        ("learner.min_lr_ratio=1.5", "learner.min_lr_ratio: must be in [0, 1], got 1.5"),
        ("learner.adam_beta2=1.0", "learner.adam_beta2: must be in [0, 1), got 1.0"),
        ("reward.fallback=nan", "reward.fallback: must be a finite number"),
        ("data.eval_max_prompts=-4", "data.eval_max_prompts: must be >= 0, got -4"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last: must be at least 1, got 0"),
        ("cluster.call_timeout_s=inf", "cluster.call_timeout_s: must be a finite number (> 0), got inf"),
        ("judge.batch_timeout_s=inf", "judge.batch_timeout_s: must be a finite number"),
        ("rollout.gpu_memory_utilization=1.2", "rollout.gpu_memory_utilization: must be in (0, 1]"),
    ],
)
def test_messages_name_the_key_the_range_and_the_value(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert expected in str(info.value)


def test_the_call_timeout_outlives_a_judge_batch_and_the_reward_rules_worst_case():
    judge = ["judge.enabled=true", "judge.max_model_len=20000"]
    with pytest.raises(ConfigError, match=r"must outlive judge\.batch_timeout_s=1800"):
        load_config(None, [*judge, "cluster.call_timeout_s=1800"])
    load_config(None, [*judge, "cluster.call_timeout_s=1801"])
    # 4 prompts x 8 samples = 32 items, 64 held-out prompts: 64 items x 30 s on one worker = 1920 s
    with pytest.raises(ConfigError, match=r"up to 1920s, which cluster.call_timeout_s=1800 must outlive"):
        load_config(None, ["reward.timeout_s=30", "cluster.call_timeout_s=1800"])
    load_config(None, ["reward.timeout_s=30", "cluster.call_timeout_s=1800", "reward.num_workers=2"])
