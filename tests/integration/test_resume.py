"""Exact resume through the driver, and the learner checkpoint it reads, for both learner backends.

Per backend, the whole stack (vLLM engine, 2 learner ranks over gloo, reward actor, MLflow), tiny model:

    driver A: steps 1-4 straight, saving a checkpoint after step 2 (saving only reads state)
    driver B: a new GRPOJob with resume=<A's step-2 checkpoint>; its RNGs are scrambled first, so only
              what the checkpoint restores can make it match; steps 3-4
    -> B's learner starts from exactly A's weights at the save; B's steps 3-4 equal A's (sampled tokens,
       rewards, losses, grad norms) and B's final weights equal A's, within RESUME_TOL (measured: 0.0)
    export_checkpoint_to_hf(<the checkpoint's learner folder>) in this process (no Ray, no process
    group) == A's weights at the save, and loads in transformers

Sampling uses per-request seeds derived from the step, so the same weights and step give the same
rollouts; the data position, step counter, LR schedule and optimizer state come from the checkpoint.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from actors.export import export_checkpoint_to_hf
from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.validation import load_config
from tests.integration.conftest import tiny_overrides
from tests.integration.test_learner_backends import MOVED, full_weights, max_diff

pytestmark = pytest.mark.integration

RESUME_TOL = 1e-6  # max |difference| of losses, grad norms and weights (fp32; measured bit-exact)
EXPORT_TOL = 0.0  # the export holds exactly the weights that were saved (fp32 in, fp32 out)
COMPARED = ("reward/mean", "train/pg_loss", "train/grad_norm", "train/entropy", "response/length_mean")

# What each backend writes into the checkpoint's learner folder (2 ranks; DeepSpeed: ZeRO-3, the default)
EXPECTED_FILES = {
    "fsdp2": {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"},
    "deepspeed": {
        "latest",
        "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "deepspeed/zero_pp_rank_0_mp_rank_00_model_states.pt",
        "deepspeed/zero_pp_rank_1_mp_rank_00_model_states.pt",
    },
}
COMMON_FILES = {"learner_meta.json", "rng_rank00000.pt", "rng_rank00001.pt"}


def scramble_rngs() -> None:
    """Whatever the previous driver left in this process's RNGs must not matter to a resumed run."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


@pytest.fixture(scope="module", params=["fsdp2", "deepspeed"])
def run(request, ray_local, tiny_model, tmp_path_factory) -> dict:
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"resume-{backend}")
    overrides = tiny_overrides(
        tiny_model,
        tmp,
        **{
            "learner.backend": backend,
            "learner.lr": 1e-4,
            "learner.weight_decay": 0.01,  # decoupled decay goes through the resume too
            "trainer.total_steps": 4,
            "checkpoint.every": 2,
            "checkpoint.keep_last": 2,
        },
    )
    out: dict = {"backend": backend}
    with GRPOJob(load_config(None, overrides)) as a:
        a.start()
        straight = [a.train_step() for _ in range(2)]
        saved = a.save_checkpoint()
        out["at_save"] = full_weights(a.roles.learner.group)
        straight += [a.train_step() for _ in range(2)]
        out["straight"] = straight[2:]
        out["straight_final"] = full_weights(a.roles.learner.group)

    scramble_rngs()
    resumed_overrides = [*overrides, f"resume={saved}", f"checkpoint.dir={tmp / 'resumed'}"]
    with GRPOJob(load_config(None, resumed_overrides)) as b:
        b.start()
        out["resumed_at"] = (b.step, b.stream.position)
        out["loaded"] = full_weights(b.roles.learner.group)
        out["resumed"] = [b.train_step() for _ in range(2)]
        out["resumed_final"] = full_weights(b.roles.learner.group)
        out["resumed_step"] = b.step

    learner = saved / "learner"
    out["meta"] = json.loads((learner / "learner_meta.json").read_text())
    out["files"] = {str(p.relative_to(learner)) for p in learner.rglob("*") if p.is_file()}
    out["hf_dir"] = export_checkpoint_to_hf(learner, tiny_model, tmp / "hf")
    return out


def test_four_steps_straight_equal_two_plus_resume_plus_two(run):
    assert run["resumed_at"] == (2, 2 * 2)  # 2 steps x data.prompts_per_step
    assert run["resumed_step"] == 4
    assert max_diff(run["at_save"], run["loaded"]) <= RESUME_TOL
    worst = 0.0
    for a_metrics, b_metrics in zip(run["straight"], run["resumed"], strict=True):
        for key in COMPARED:
            gap = abs(a_metrics[key] - b_metrics[key])
            assert gap <= RESUME_TOL, (key, a_metrics[key], b_metrics[key])
            worst = max(worst, gap)
    assert run["straight"][0]["train/grad_norm"] > 0  # steps 3-4 did train
    assert max_diff(run["at_save"], run["straight_final"]) > MOVED  # ... and moved the weights
    weights = max_diff(run["straight_final"], run["resumed_final"])
    print(f"measured: {run['backend']} driver resume: max |dmetric| = {worst:.3g}, max |dw| = {weights:.3g}")
    assert weights <= RESUME_TOL


def test_checkpoint_files_and_metadata(run):
    meta = run["meta"]
    assert meta["backend"] == run["backend"]
    assert meta["world_size"] == 2 and meta["step"] == 2 and meta["dtype"] == "float32"
    assert EXPECTED_FILES[run["backend"]] | COMMON_FILES <= run["files"]


def test_export_to_hf_loads_in_transformers(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = run["hf_dir"]
    assert (hf_dir / "model.safetensors").is_file() and (hf_dir / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert AutoTokenizer.from_pretrained(hf_dir).eos_token is not None
    exported = {k: v for k, v in model.state_dict().items() if k in run["at_save"]}
    assert exported.keys() == run["at_save"].keys()
    diff = max_diff(exported, run["at_save"])
    print(f"measured: {run['backend']} export: max |dw| = {diff:.3g}")
    assert diff <= EXPORT_TOL
