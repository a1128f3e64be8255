"""Faults during a run, recovered per role (rrm_ray.recovery): a reward actor or judge engine that dies
mid-step is restarted and its call retried, the learner untouched; an engine killed mid-run is
restarted, re-synced and its batch retried; a killed learner rank fails its step, and the learner group
is rebuilt from the last checkpoint; an actor that dies past `cluster.max_actor_restarts` fails the step
naming its role; a checkpoint/resume round trip continues the same MLflow run from the saved step.

The crashes are real: a reward rule and a judge engine that SIGKILL their own actor process on their
first call (tests/integration/rules.py, fault_hooks.py), guarded by marker files."""

from __future__ import annotations

import mlflow
import pytest
import ray

from rrm_ray.clients import judge as judge_client
from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.recovery import RoleFailure
from rrm_ray.validation import load_config
from tests.integration.conftest import CHOICE_JUDGE, tiny_overrides

pytestmark = pytest.mark.integration


def test_each_role_recovers_on_its_own_and_the_run_resumes(ray_local, tiny_model, tmp_path, monkeypatch):
    """One job (one engine start) for every fault, in order: judge + reward, rollout, learner, then the
    judge past its budget; a resumed run last."""
    from tests.integration.fault_hooks import JudgeDyingOnce

    monkeypatch.setattr(judge_client, "JudgeWorker", JudgeDyingOnce)
    judge_died, reward_died = tmp_path / "judge.died", tmp_path / "reward.died"
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            **CHOICE_JUDGE,
            "judge.model_path": tiny_model,
            "checkpoint.every": 1,
            "checkpoint.keep_last": 1,
            "trainer.total_steps": 2,
            "cluster.max_actor_restarts": 1,
            "reward.rule": "tests.integration.rules:count_vowels_killing_the_reward_actor_once",
            "cluster.env.RRM_TEST_KILL_REWARD_MARKER": reward_died,
            "cluster.env.RRM_TEST_KILL_JUDGE_MARKER": judge_died,
        },
    )
    cfg = load_config(None, overrides)
    with GRPOJob(cfg) as job:
        job.start()
        learner_ids = job.roles.learner.group.actor_ids()
        judge_pid = job.roles.judge.group.placement()[0]["pid"]
        # The judge engine and the reward actor both die in step 1, mid-call: Ray restarts each, its
        # call is retried, and the learner is never touched.
        with pytest.warns(UserWarning, match="a (judge|reward) actor died"):
            metrics = job.train_step_or_recover()
        assert judge_died.exists() and reward_died.exists()  # they really died
        assert job.roles.judge.group.placement()[0]["pid"] != judge_pid  # a new judge process
        assert job.faults == {
            "rollout_restarts": 0,
            "judge_restarts": 1,
            "reward_restarts": 1,
            "learner_recoveries": 0,
            **{f"{role}_hangs": 0 for role in ("rollout", "judge", "reward", "learner")},
        }
        assert job.roles.learner.group.actor_ids() == learner_ids and job.step == 1  # no rollback
        prompts, n = cfg.data.prompts_per_step, cfg.rollout.n_samples
        assert metrics["judge/comparisons"] == prompts * (n - 1)  # the retry judged the whole step
        assert metrics["train/grad_norm"] > 0
        job.save_checkpoint()
        ray.kill(job.roles.rollout.group.actors[0], no_restart=False)  # the engine dies; Ray restarts it
        metrics = job.train_step()  # generation retries on the restarted engine, after a re-sync
        assert job.faults["rollout_restarts"] == 1
        assert metrics["train/grad_norm"] > 0
        # A learner rank dies: the step fails cleanly, the learner group is rebuilt and restored from
        # the step-1 checkpoint, and step 2 is trained again.
        ray.kill(job.roles.learner.group.actors[1], no_restart=True)
        with pytest.warns(UserWarning, match="learner rank failed"):
            metrics = job.train_step_or_recover()
        assert job.faults["learner_recoveries"] == 1 and job.step == 2
        assert job.roles.learner.group.actor_ids() != learner_ids
        assert metrics["train/grad_norm"] > 0
        # The judge dies again: its one restart (cluster.max_actor_restarts=1) is used up, so the step
        # fails at once with an error naming the judge, and the learner stays as it is.
        judge_died.unlink()
        learner_ids = job.roles.learner.group.actor_ids()
        with pytest.raises(RoleFailure, match=r"the judge actor .* cluster\.max_actor_restarts=1") as err:
            job.train_step_or_recover()
        assert err.value.role == "judge"
        assert job.faults["learner_recoveries"] == 1 and job.roles.learner.group.actor_ids() == learner_ids
        run_id = job.tracker.run_id
    # A new driver with resume=auto picks the latest complete checkpoint and the same MLflow run (no
    # judge this time: one engine fewer to start).
    resumed_cfg = load_config(None, [*overrides, "resume=auto", "judge.enabled=false"])
    with GRPOJob(resumed_cfg) as job:
        assert job.resume_from is not None and job.resume_from.name == "step_000001"
        job.start()
        assert job.step == 1 and job.faults["judge_restarts"] == 1  # the counters come back too
        job.train_step()
        assert job.tracker.run_id == run_id
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    for name in ("judge_restarts", "reward_restarts", "rollout_restarts", "learner_recoveries"):
        assert [m.value for m in client.get_metric_history(run_id, f"faults/{name}")] == [1.0], name
