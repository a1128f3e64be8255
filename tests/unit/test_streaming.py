"""The streaming judge's schedule (rrm_ray.judge.dispatch.JudgeDispatch) and the parts streamed batches are
assembled from: ready groups go to idle engines together, busy engines make them wait."""

from __future__ import annotations

import pytest

from rrm_ray.judge.dispatch import JudgeDispatch
from rrm_ray.types import ScoredBatch


def test_an_idle_engine_takes_every_ready_group_in_one_call():
    d = JudgeDispatch(1)
    d.arrive([2])
    assert d.take() == [(0, [2])]
    d.arrive([0])
    d.arrive([3])
    assert d.take() == []  # the engine is busy: both wait, then go together (one batch of waves)
    assert d.done(0) == [2]
    assert d.take() == [(0, [0, 3])]
    assert d.done(0) == [0, 3] and d.idle and d.sent == 2


def test_idle_engines_share_the_ready_groups():
    d = JudgeDispatch(3)
    d.arrive([5, 1, 4, 0, 2])
    assert d.take() == [(0, [5, 1]), (1, [4, 0]), (2, [2])]
    d.arrive([7])
    assert d.take() == []
    d.done(1)
    assert d.take() == [(1, [7])]
    assert not d.idle


def test_more_engines_than_groups_leaves_the_rest_idle():
    d = JudgeDispatch(4)
    d.arrive([3])
    assert d.take() == [(0, [3])]
    d.arrive([1])
    assert d.take() == [(1, [1])]


def test_dispatch_rejects_what_it_did_not_send():
    with pytest.raises(ValueError, match="at least one judge engine"):
        JudgeDispatch(0)
    with pytest.raises(ValueError, match="engine 0 was not ranking anything"):
        JudgeDispatch(1).done(0)


def test_scored_groups_concatenate_in_the_order_given():
    a = ScoredBatch([1.0, 0.0], [True, False], timeouts=1, errors=0, error_messages=[])
    b = ScoredBatch([None], [None], timeouts=0, errors=2, error_messages=["x", "y"])
    joined = ScoredBatch.concat([b, a])
    assert joined.rewards == [None, 1.0, 0.0] and joined.correct == [None, True, False]
    assert (joined.timeouts, joined.errors, joined.error_messages) == (1, 2, ["x", "y"])


def test_streaming_is_on_unless_the_roles_take_turns_or_generate_in_two_phases():
    from rrm_ray.config import ConfigError
    from rrm_ray.validation import load_config, streaming_enabled

    assert streaming_enabled(load_config(None, []))
    assert not streaming_enabled(load_config(None, ["reward.streaming=never"]))
    shared = ["judge.enabled=true", "cluster.colocate=[[rollout,judge]]"]
    assert not streaming_enabled(load_config(None, shared))  # auto: they take turns, the batch path
    with pytest.raises(ConfigError, match=r"reward\.streaming.*rollout and the judge on the same bundles"):
        load_config(None, [*shared, "reward.streaming=always"])
    with pytest.raises(ConfigError, match=r"must be auto, always or never, got 'sometimes'"):
        load_config(None, ["reward.streaming=sometimes"])
