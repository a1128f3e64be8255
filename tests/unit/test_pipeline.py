"""The asynchronous GRPO schedule (rrm_ray.pipeline): k = 0 is the synchronous loop, call for call;
k >= 1 keeps every batch within its staleness bound, weights move only between batches, and a
checkpoint replays the batches in flight."""

from __future__ import annotations

import pytest

from rrm_ray.config import ConfigError
from rrm_ray.pipeline import Event, Schedule, Scheduled, StalenessError, simulate
from rrm_ray.validation import load_config


def test_zero_staleness_is_the_synchronous_loop():
    # generate b_t with v_t, train on it, sync v_{t+1}: step after step
    expected = []
    for t in range(4):
        expected += [Event("generate", t, t), Event("train", t, t, 0), Event("sync", t, t + 1)]
    assert simulate(0, 4) == expected


def test_one_step_off_generates_the_next_batch_while_the_learner_trains():
    events = simulate(1, 3)
    assert events == [
        Event("generate", 0, 0),
        Event("train", 0, 0, 0),
        Event("generate", 1, 0),  # during step 0's update, with the weights it started from
        Event("sync", 0, 1),
        Event("train", 1, 1, 1),
        Event("generate", 2, 1),
        Event("sync", 1, 2),
        Event("train", 2, 2, 1),  # the last step generates nothing ahead
        Event("sync", 2, 3),
    ]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_batch_stays_within_the_bound_and_each_is_trained_once(k):
    events = simulate(k, 12)
    trained = [e for e in events if e.kind == "train"]
    assert [e.step for e in trained] == list(range(12))
    assert max(e.staleness for e in trained) == k  # the bound is reached, never passed
    assert sorted(e.step for e in events if e.kind == "generate") == list(range(12))
    # The engines' version changes only at a sync, and a generation uses the latest one.
    engines = 0
    for e in events:
        if e.kind == "sync":
            engines = e.version
        elif e.kind == "generate":
            assert e.version == engines


def test_generating_ahead_is_bounded_by_the_queue_and_the_run():
    schedule: Schedule[None] = Schedule(2)
    assert schedule.to_produce(learner_version=1, engine_version=0, next_step=1, total_steps=10) == 2
    schedule.push(Scheduled(1, 2, 0, None))
    assert schedule.to_produce(learner_version=2, engine_version=1, next_step=2, total_steps=10) == 1
    assert schedule.to_produce(learner_version=2, engine_version=1, next_step=2, total_steps=2) == 0
    assert Schedule(0).to_produce(learner_version=1, engine_version=0, next_step=1, total_steps=10) == 0
    # engines already current (a restarted engine was re-synced mid-update): one more fits
    assert Schedule(1).to_produce(learner_version=1, engine_version=1, next_step=1, total_steps=10) == 2


def test_a_batch_past_its_bound_is_never_trained_on():
    schedule: Schedule[None] = Schedule(1)
    schedule.push(Scheduled(step=3, position=6, version=1, batch=None))
    with pytest.raises(StalenessError, match=r"step 4 .* version 1 .* at version 3: staleness 2"):
        schedule.pop(learner_version=3)


def test_a_checkpoint_resumes_before_the_batches_in_flight():
    schedule: Schedule[str] = Schedule(2)
    assert schedule.resume_position(stream_position=8) == 8  # nothing in flight
    schedule.push(Scheduled(4, 8, 3, "b4"))
    schedule.push(Scheduled(5, 10, 3, "b5"))
    assert schedule.resume_position(stream_position=12) == 8
    schedule.drop()
    assert len(schedule) == 0 and schedule.resume_position(12) == 12


def test_staleness_needs_its_importance_correction_and_separate_learner_bundles():
    assert load_config(None, ["trainer.max_staleness=1"]).trainer.max_staleness == 1
    with pytest.raises(ConfigError, match=r"algorithm\.tis_cap.*trainer\.max_staleness=1"):
        load_config(None, ["trainer.max_staleness=1", "algorithm.tis_cap=null"])
    with pytest.raises(ConfigError, match=r"cluster\.colocate.*learner on the same bundles as rollout"):
        load_config(None, ["trainer.max_staleness=2", "cluster.colocate=[[rollout,learner]]"])
    with pytest.raises(ConfigError, match=r"trainer\.max_staleness.*must be >= 0"):
        load_config(None, ["trainer.max_staleness=-1"])
    # the engines may share with each other: they take turns within the generation
    judge = ["judge.enabled=true", "cluster.colocate=[[rollout,judge]]", "trainer.max_staleness=1"]
    assert load_config(None, judge).trainer.max_staleness == 1
