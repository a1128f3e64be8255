"""Exact resume through the driver, for both learner backends.

Per backend, the whole stack (vLLM engine, 2 learner ranks over gloo, reward actor, MLflow), tiny model:

    driver A: steps 1-4 straight, saving a checkpoint after step 2 (saving only reads state)
    driver B: a new GRPOJob with resume=<A's step-2 checkpoint>; its RNGs are scrambled first, so only
              what the checkpoint restores can make it match; steps 3-4
    -> B's steps 3-4 equal A's (sampled tokens, rewards, losses, grad norms) and B's final weights
       equal A's, within RESUME_TOL (measured: 0.0, printed)

Sampling uses per-request seeds derived from the step, so the same weights and step give the same
rollouts; the data position, step counter, LR schedule and optimizer state come from the checkpoint.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.validation import load_config
from tests.integration.conftest import tiny_overrides
from tests.integration.test_learner_backends import full_weights, max_diff

pytestmark = pytest.mark.integration

RESUME_TOL = 1e-6  # max |difference| of losses, grad norms and weights (fp32; measured bit-exact)
COMPARED = ("reward/mean", "train/pg_loss", "train/grad_norm", "train/entropy", "response/length_mean")


def scramble_rngs() -> None:
    """Whatever the previous driver left in this process's RNGs must not matter to a resumed run."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed"])
def test_four_steps_straight_equal_two_plus_resume_plus_two(backend, ray_local, tiny_model, tmp_path):
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            "learner.backend": backend,
            "learner.lr": 1e-4,
            "trainer.total_steps": 4,
            "checkpoint.every": 2,
            "checkpoint.keep_last": 2,
        },
    )
    with GRPOJob(load_config(None, overrides)) as a:
        a.start()
        straight = [a.train_step() for _ in range(2)]
        saved = a.save_checkpoint()
        straight += [a.train_step() for _ in range(2)]
        straight_final = full_weights(a.roles.learner.group)

    scramble_rngs()
    resumed_overrides = [*overrides, f"resume={saved}", f"checkpoint.dir={tmp_path / 'resumed'}"]
    with GRPOJob(load_config(None, resumed_overrides)) as b:
        b.start()
        assert b.step == 2 and b.stream.position == 2 * 2  # 2 steps x data.prompts_per_step
        resumed = [b.train_step() for _ in range(2)]
        resumed_final = full_weights(b.roles.learner.group)
        assert b.step == 4

    worst = 0.0
    for a_metrics, b_metrics in zip(straight[2:], resumed, strict=True):
        for key in COMPARED:
            gap = abs(a_metrics[key] - b_metrics[key])
            assert gap <= RESUME_TOL, (key, a_metrics[key], b_metrics[key])
            worst = max(worst, gap)
    weights = max_diff(straight_final, resumed_final)
    print(f"measured: {backend} driver resume: max |dmetric| = {worst:.3g}, max |dw| = {weights:.3g}")
    assert weights <= RESUME_TOL
    assert straight[2]["train/grad_norm"] > 0  # steps 3-4 did train
