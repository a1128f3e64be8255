"""Asynchronous GRPO (`trainer.max_staleness`, rrm_ray.pipeline) through the real stack on the tiny model.

One job with max_staleness=1: step 1 trains on a batch generated synchronously (so it equals the
synchronous run's step 1) while the batch for step 2 is generated; a checkpoint taken then records
the position before that batch; the engine dies before the batch for step 3 is generated, so it is
restarted, re-synced with the weights after step 2 and the batch regenerated; a restore (what a
resume does) drops the batch in flight and generates it again from the checkpoint's weights.
"""

from __future__ import annotations

import json

import pytest
import ray

from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.validation import load_config
from tests.integration.conftest import tiny_overrides
from tests.integration.probes import engine_logprobs, learner_logprobs, on_all, on_rank0

pytestmark = pytest.mark.integration

SAME = ("reward/mean", "train/pg_loss", "train/grad_norm", "train/entropy", "response/length_mean")


def test_synchronous_steps_have_no_staleness(grpo_run):
    """max_staleness=0 (the shared two-step run): every batch is trained on the weights that made it."""
    for metrics in grpo_run["summary"]["history"]:
        assert metrics["train/staleness"] == 0
        assert "time/generate_wait_s" not in metrics  # nothing overlaps, so nothing is waited for apart


def test_one_step_off_trains_within_the_bound_recovers_and_resumes(ray_local, tiny_model, tmp_path, grpo_run):
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            "trainer.max_staleness": 1,
            "trainer.total_steps": 3,
            "cluster.max_actor_restarts": 1,
            "checkpoint.save_final": False,
        },
    )
    cfg = load_config(None, overrides)
    probe = None
    with GRPOJob(cfg) as job:
        job.start()
        first = job.train_step()  # its batch generated now, the next one while it trains
        (in_flight,) = job.schedule.queue
        assert (in_flight.step, in_flight.version, first["train/staleness"]) == (1, 0, 0.0)
        # the same prompts, seeds and weights as the synchronous run's first step
        synchronous = grpo_run["summary"]["history"][0]
        for key in SAME:
            assert first[key] == pytest.approx(synchronous[key], abs=1e-6), key

        saved = job.save_checkpoint()
        state = json.loads((saved / "driver_state.json").read_text())
        prompts = cfg.data.prompts_per_step
        assert job.stream.position == 2 * prompts and state["data_position"] == prompts  # before it

        ray.kill(job.roles.rollout.group.actors[0], no_restart=False)  # dies before the batch for step 3
        with pytest.warns(UserWarning, match="a rollout actor died"):
            second = job.train_step()
        assert second["train/staleness"] == 1  # generated with the weights before step 1's update
        assert job.faults["rollout_restarts"] == 1
        assert second["train/grad_norm"] > 0 and 0 < second["train/tis_weight"] <= cfg.algorithm.tis_cap
        assert 0 <= second["train/tis_capped"] <= 1
        assert second["train/tis_weight_max"] >= second["train/tis_weight"]
        assert {"time/generate_s", "time/update_s", "time/generate_wait_s"} <= set(second)
        # The restarted engine took the weights after step 2's update before generating again (the
        # re-sync waited for it), so the regenerated batch is fresh and no sync was left for the step.
        (regenerated,) = job.schedule.queue
        assert regenerated.step == 2 and regenerated.version == job.roles.learner.version == 2
        assert second["sync/buckets"] == 0

        job._restore(saved)  # what start() does on resume
        assert job.step == 1 and job.stream.position == prompts and not job.schedule.queue
        again = job.train_step()  # the dropped batch again, from the checkpoint's weights
        assert again["train/staleness"] == 0 and again["sync/buckets"] >= 1
        (next_batch,) = job.schedule.queue
        assert (next_batch.step, next_batch.position) == (2, 2 * prompts)
        probe = job.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
        engine = on_rank0(job.roles.rollout.group, engine_logprobs, probe)
        learner = on_all(job.roles.learner.group, learner_logprobs, probe)[0]
    assert max(abs(a - b) for a, b in zip(engine, learner, strict=True)) < 1e-4  # synced after each update
