"""The learner's numerics outside the learner: distinct sampling seeds, an LR schedule that counts
optimizer steps, and the config checks that keep learner and engine numbers comparable."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from rrm_ray import algo
from rrm_ray.config import ConfigError, LearnerConfig
from rrm_ray.seeds import SEED_BITS, request_seed, seeds_requests
from rrm_ray.validation import load_config

# ---------------------------------------------------------------------------------------------
# sampling seeds


def child_seeds(seed: int, prompts: int, n: int, engines: int) -> list[int]:
    """Every sample's seed as the rollout group draws them: prompts split over engines in contiguous
    chunks (the driver's `prompt_offset`), vLLM seeding sample k of a request with request seed + k."""
    chunk = -(-prompts // engines)
    out = []
    for e in range(engines):
        offset = e * chunk
        for i in range(min(chunk, prompts - offset)):
            base = request_seed(seed, offset + i, n)
            out += [base + k for k in range(n)]
    return out


@pytest.mark.parametrize(("prompts", "n", "engines"), [(1, 1, 1), (7, 8, 1), (64, 8, 4), (33, 16, 3)])
def test_every_prompt_and_sample_gets_its_own_seed_across_engines(prompts, n, engines):
    seeds = child_seeds(1234, prompts, n, engines)
    assert len(seeds) == prompts * n == len(set(seeds))
    assert all(0 <= s < (1 << SEED_BITS) + n for s in seeds)
    # The same global prompt gets the same seeds however the prompts are split over engines.
    assert seeds == child_seeds(1234, prompts, n, 1)


def test_the_old_scheme_collided_and_steps_do_not():
    old = [7 + i + k for i, k in itertools.product(range(4), range(8))]  # seed + i, children + k
    assert len(set(old)) < len(old)
    steps = [set(child_seeds(1_000_003 + s * 1009, 64, 8, 2)) for s in range(20)]  # the driver's steps
    assert len(set().union(*steps)) == 20 * 64 * 8


def test_streams_and_bad_arguments():
    assert request_seed(5, 3, 4) == request_seed(5, 3, 4)  # reproducible
    assert request_seed(5, 3, 4, stream=1) != request_seed(5, 3, 4)
    assert request_seed(-1, 0, 1) >= 0
    with pytest.raises(ValueError, match="n must be >= 1"):
        request_seed(1, 0, 0)
    with pytest.raises(ValueError, match="prompt_index must be >= 0"):
        request_seed(1, -1, 2)


# ---------------------------------------------------------------------------------------------
# LR schedule per optimizer step


def test_step_lrs_walks_the_schedule_one_optimizer_step_at_a_time():
    total, mb = 5, 4  # 20 optimizer steps; warmup 8 of them (the first 2 training steps)
    flat = [lr for s in range(total) for lr in algo.step_lrs(s, mb, 1.0, 8, total, "linear", 0.1)]
    assert flat == [algo.lr_at(k, 1.0, 8, total * mb, "linear", 0.1) for k in range(total * mb)]
    assert flat[:8] == pytest.approx([(k + 1) / 8 for k in range(8)])  # warmup in optimizer steps
    assert flat[7] == 1.0
    assert all(a > b for a, b in itertools.pairwise(flat[8:]))  # decays within a training step too
    assert flat[-1] == pytest.approx(0.1 + 0.9 * (1 / 12))  # one optimizer step before the end
    assert algo.step_lrs(total, mb, 1.0, 8, total, "linear", 0.1) == pytest.approx([0.1] * mb)  # held


def test_step_lrs_with_one_mini_batch_is_the_old_schedule():
    for s in range(12):
        assert algo.step_lrs(s, 1, 3e-6, 2, 10, "cosine", 0.0) == [algo.lr_at(s, 3e-6, 2, 10, "cosine")]
    with pytest.raises(algo.AlgoInputError, match="mini_batches must be >= 1"):
        algo.step_lrs(0, 0, 1.0, 0, 10, "constant")


def test_dpo_follows_the_schedule_one_optimizer_step_per_dpo_step():
    from rrm_ray.jobs.dpo import dpo_lrs

    learner = LearnerConfig(lr=2e-6, lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.0)
    lrs = dpo_lrs(learner, epochs=2, steps_per_epoch=3)  # 6 optimizer steps
    assert lrs == [algo.lr_at(k, 2e-6, 2, 6, "cosine") for k in range(6)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[1] == pytest.approx(2e-6)  # warmup, then decay
    assert lrs[1] > lrs[3] > lrs[5] > 0
    assert dpo_lrs(LearnerConfig(lr=1e-6), 1, 4) == [1e-6] * 4  # constant: the old behaviour
    with pytest.raises(
        ConfigError, match=r"learner\.warmup_steps: 7 exceeds this DPO run's 6 optimizer steps"
    ):
        dpo_lrs(LearnerConfig(warmup_steps=7), epochs=2, steps_per_epoch=3)


# ---------------------------------------------------------------------------------------------
# config checks


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["rollout.top_p=0.9"], r"rollout\.top_p: rollout\.top_p=0\.9 < 1 cannot be combined with algorithm"),
        (["rollout.top_p=0.9"], "algorithm.tis_cap=null"),
        (["model.dtype=float16"], "model.dtype: float16 training needs loss scaling"),
        (["learner.logprob_chunk=0"], "learner.logprob_chunk: must be at least 1, got 0"),
        (["learner.warmup_steps=-1"], r"learner\.warmup_steps: counts optimizer steps"),
        (
            ["trainer.total_steps=5", "algorithm.mini_batches=2", "learner.warmup_steps=11"],
            r"trainer\.total_steps x algorithm\.mini_batches = 10\) and must be in \[0, 10\], got 11",
        ),
    ],
)
def test_numerics_config_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_numerics_configs_that_are_fine():
    load_config(None, ["rollout.top_p=0.9", "algorithm.tis_cap=null"])  # no TIS: top_p is free
    load_config(None, ["model.dtype=float16", "learner.backend=deepspeed"])
    cfg = load_config(None, ["trainer.total_steps=5", "algorithm.mini_batches=2", "learner.warmup_steps=10"])
    assert cfg.learner.warmup_steps == 10


# ---------------------------------------------------------------------------------------------
# DeepSpeed precision sections and the export's dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_deepspeed_low_precision_keeps_fp32_masters_and_reduces_in_fp32(dtype):
    from actors.backends.zero import ds_config

    c = ds_config(LearnerConfig(), dtype, torch.device("cuda"), frozen=False)
    assert c["bf16"]["enabled"] is (dtype == torch.bfloat16) and c["fp16"]["enabled"] is (
        dtype == torch.float16
    )
    assert "bf16_master_weights_and_grads" not in c["bf16"]  # DeepSpeed's default: fp32 masters
    assert c["bf16"]["check_grad_overflow"] is True  # an inf/nan gradient skips the step
    assert c["data_types"] == {"grad_accum_dtype": "fp32"} and c["communication_data_type"] == "fp32"
    fp32 = ds_config(LearnerConfig(), torch.float32, torch.device("cpu"), frozen=False)
    assert "data_types" not in fp32 and "communication_data_type" not in fp32


def test_export_rejects_an_unknown_dtype_before_loading(tmp_path):
    from actors.export import export_checkpoint_to_hf
    from actors.model_io import CheckpointError

    (tmp_path / "learner_meta.json").write_text(json.dumps({"backend": "fsdp2", "dtype": "bfloat16"}))
    with pytest.raises(
        CheckpointError, match="export dtype must be one of float32, bfloat16, float16, got 'int8'"
    ):
        export_checkpoint_to_hf(tmp_path, "unused", tmp_path / "out", dtype="int8")


@pytest.mark.parametrize(
    ("mode", "device", "seeded"),
    [("auto", "cpu", True), ("auto", "cuda", False), ("always", "cuda", True), ("never", "cpu", False)],
)
def test_rollout_seed_requests(mode, device, seeded):
    """Seeds are a choice: reproducible sample streams (cpu's default, the tests compare runs sample by
    sample) or vLLM's fast GPU sampler, which per-request generators turn off (cuda's default)."""
    assert seeds_requests(mode, device) is seeded
    cfg = load_config(None, [f"rollout.seed_requests={mode}", f"cluster.device={device}"])
    assert cfg.rollout.seed_requests == mode


def test_rollout_seed_requests_rejects_other_values():
    with pytest.raises(
        ConfigError, match=r"rollout\.seed_requests: got 'sometimes', allowed: auto, always, never"
    ):
        load_config(None, ["rollout.seed_requests=sometimes"])
