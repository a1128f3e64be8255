"""Faults during a run: an engine killed mid-run is restarted, re-synced and its batch retried;
a checkpoint/resume round trip continues the same MLflow run from the saved step."""

from __future__ import annotations

import mlflow
import pytest
import ray

from rrm_ray.config import load_config
from rrm_ray.driver import GRPOJob
from tests.integration.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def test_killed_engine_is_restarted_and_the_run_resumes_from_its_checkpoint(ray_local, tiny_model, tmp_path):
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
        run_id = job.tracker.run_id
    # A new driver with resume=auto picks the latest complete checkpoint and the same MLflow run.
    resumed_cfg = load_config(None, [*overrides, "resume=auto", "trainer.total_steps=2"])
    with GRPOJob(resumed_cfg) as job:
        assert job.resume_from is not None and job.resume_from.name == "step_000001"
        job.start()
        assert job.step == 1
        job.train_step()
        assert job.tracker.run_id == run_id
    history = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_metric_history(
        run_id, "faults/rollout_restarts"
    )
    assert [m.value for m in history] == [1.0]
