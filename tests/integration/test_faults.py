"""Faults during a run: an engine killed mid-run is restarted, re-synced and its batch retried; a
killed learner rank fails its step, and the learner group is rebuilt from the last checkpoint; a
checkpoint/resume round trip continues the same MLflow run from the saved step."""

from __future__ import annotations

import mlflow
import pytest
import ray

from rrm_ray.config import load_config
from rrm_ray.driver import GRPOJob
from tests.integration.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def test_killed_engine_and_learner_rank_are_recovered_and_the_run_resumes(ray_local, tiny_model, tmp_path):
    overrides = tiny_overrides(
        tiny_model, tmp_path, **{"checkpoint.every": 1, "checkpoint.keep_last": 1, "trainer.total_steps": 2}
    )
    cfg = load_config(None, overrides)
    with GRPOJob(cfg) as job:
        job.start()
        job.train_step()
        job.save_checkpoint()
        ray.kill(job.rollout.actors[0], no_restart=False)  # the engine dies; Ray restarts it
        metrics = job.train_step()  # generation retries on the restarted engine, after a re-sync
        assert job.faults["rollout_restarts"] == 1
        assert metrics["train/grad_norm"] > 0
        # A learner rank dies: the step fails cleanly, the learner group is rebuilt and restored from
        # the step-1 checkpoint, and step 2 is trained again.
        ray.kill(job.learner.actors[1], no_restart=True)
        with pytest.warns(UserWarning, match="learner rank failed"):
            metrics = job.train_step_or_recover()
        assert job.faults["learner_recoveries"] == 1 and job.step == 2
        assert metrics["train/grad_norm"] > 0
        run_id = job.tracker.run_id
    # A new driver with resume=auto picks the latest complete checkpoint and the same MLflow run.
    resumed_cfg = load_config(None, [*overrides, "resume=auto", "trainer.total_steps=2"])
    with GRPOJob(resumed_cfg) as job:
        assert job.resume_from is not None and job.resume_from.name == "step_000001"
        job.start()
        assert job.step == 1
        job.train_step()
        assert job.tracker.run_id == run_id
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    assert [m.value for m in client.get_metric_history(run_id, "faults/rollout_restarts")] == [1.0]
    assert [m.value for m in client.get_metric_history(run_id, "faults/learner_recoveries")] == [1.0]
