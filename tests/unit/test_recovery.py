"""The recovery policy: which action a dead actor of each role calls for, and where the budget ends."""

from __future__ import annotations

import pytest

from rrm_ray.recovery import RESTART_COUNTERS, RecoveryPolicy, attribute

IDS = {"rollout": ["r0", "r1"], "learner": ["l0", "l1"], "reward": ["w0"], "judge": ["j0"]}


def test_an_error_is_attributed_to_the_role_of_its_actor_else_to_the_default():
    assert attribute("j0", IDS) == "judge"
    assert attribute("l1", IDS, default="rollout") == "learner"  # the id wins over the calling role
    assert attribute(None, IDS, default="reward") == "reward"
    assert attribute("someone-else", IDS) is None


@pytest.mark.parametrize("role", ["judge", "reward"])
def test_judge_and_reward_are_restarted_and_retried_without_weights(role):
    decision = RecoveryPolicy(2).on_death(role, IDS[role][0], gone_for_good=False, weights_trained=True)
    assert decision.action == "restart" and decision.role == role
    assert decision.counter == f"{role}_restarts"
    assert not decision.resync_weights  # the judge's weights are judge.model_path, never the learner's


def test_a_restarted_engine_gets_the_learners_weights_once_they_were_trained():
    policy = RecoveryPolicy(2)
    fresh = policy.on_death("rollout", "r0", gone_for_good=False, weights_trained=False)
    trained = policy.on_death("rollout", "r1", gone_for_good=False, weights_trained=True)
    assert (fresh.action, fresh.counter, fresh.resync_weights) == ("restart", "rollout_restarts", False)
    assert (trained.action, trained.resync_weights) == ("restart", True)


def test_no_role_touches_the_learner_but_the_learner():
    policy = RecoveryPolicy(3)
    for role in RESTART_COUNTERS:
        assert policy.on_death(role, None, gone_for_good=False, has_checkpoint=True).action == "restart"
    assert policy.on_death("learner", "l0", gone_for_good=True, has_checkpoint=True).action == (
        "rebuild_learner"
    )


@pytest.mark.parametrize("role", sorted(RESTART_COUNTERS))
def test_an_actor_ray_will_not_restart_fails_naming_its_role(role):
    decision = RecoveryPolicy(2).on_death(role, "abcdef0123456789", gone_for_good=True)
    assert decision.action == "fail" and decision.counter is None
    assert f"the {role} actor abcdef012345" in decision.message
    assert "cluster.max_actor_restarts=2" in decision.message


def test_deaths_beyond_the_budget_fail_per_actor():
    policy = RecoveryPolicy(2)
    assert [policy.on_death("judge", "j0", gone_for_good=False).action for _ in range(2)] == ["restart"] * 2
    assert policy.on_death("judge", "j1", gone_for_good=False).action == "restart"  # its own budget
    third = policy.on_death("judge", "j0", gone_for_good=False)
    assert third.action == "fail" and "died (3 times" in third.message and "judge" in third.message


def test_no_restarts_configured_fails_at_the_first_death():
    decision = RecoveryPolicy(0).on_death("reward", "w0", gone_for_good=False)
    assert decision.action == "fail" and "cluster.max_actor_restarts=0" in decision.message


def test_the_learner_needs_a_checkpoint_and_recoveries_left():
    policy = RecoveryPolicy(2)
    none = policy.on_death("learner", "l0", gone_for_good=True, has_checkpoint=False)
    assert none.action == "fail" and "checkpoint.every" in none.message
    ok = policy.on_death("learner", "l0", gone_for_good=True, has_checkpoint=True, learner_recoveries=1)
    assert (ok.action, ok.counter) == ("rebuild_learner", "learner_recoveries")
    spent = policy.on_death("learner", "l0", gone_for_good=True, has_checkpoint=True, learner_recoveries=2)
    assert spent.action == "fail" and "rebuilt 2 times" in spent.message


def test_an_actor_of_no_role_fails():
    decision = RecoveryPolicy(2).on_death(None, "x", gone_for_good=False)
    assert decision.action == "fail" and "no known role" in decision.message


def test_a_negative_restart_budget_is_refused_naming_the_key():
    from rrm_ray.config import ConfigError
    from rrm_ray.validation import load_config

    with pytest.raises(ConfigError, match=r"cluster\.max_actor_restarts: must be >= 0, got -1"):
        load_config(None, ["cluster.max_actor_restarts=-1"])


@pytest.mark.parametrize("role", sorted(RESTART_COUNTERS))
def test_a_hung_actor_is_restarted_like_a_dead_one_and_counted_as_a_hang(role):
    policy = RecoveryPolicy(1)
    decision = policy.on_death(role, IDS[role][0], gone_for_good=False, weights_trained=True, hung=True)
    assert decision.action == "restart" and decision.counter == f"{role}_hangs"
    assert decision.resync_weights == (role == "rollout")
    again = policy.on_death(role, IDS[role][0], gone_for_good=False, hung=True)  # the same budget
    assert again.action == "fail" and f"the {role} actor" in again.message and "hung" in again.message


def test_a_hung_learner_rank_rebuilds_the_learner_from_a_checkpoint():
    policy = RecoveryPolicy(2)
    decision = policy.on_death("learner", None, gone_for_good=False, has_checkpoint=True, hung=True)
    assert (decision.action, decision.counter) == ("rebuild_learner", "learner_hangs")
    no_checkpoint = RecoveryPolicy(2).on_death("learner", None, gone_for_good=False, hung=True)
    assert no_checkpoint.action == "fail" and "a learner rank hung" in no_checkpoint.message
