"""Learner checkpoints resume exactly, for both backends, and export to an HF model without Ray.

Per backend, real Ray actors, 2 ranks over gloo, the tiny model in fp32:

    group A (fresh): step 1, step 2, save_checkpoint(dir), step 3, step 4    (saving only reads state)
    group B (fresh actors): load_checkpoint(dir), step 3, step 4
    -> B's steps 3-4 give A's losses and A's final weights (tolerance RESUME_TOL, measured 0.0)
    export_checkpoint_to_hf(dir) in this process (no process group) == A's weights at the save
"""

from __future__ import annotations

import pytest

from actors.export import export_checkpoint_to_hf
from tests.integration.test_learner_backends import (
    MOVED,
    full_weights,
    grpo_step,
    max_diff,
    start_learners,
    stop,
)

pytestmark = pytest.mark.integration

RESUME_TOL = 1e-6  # |loss| and max |weight| difference, straight vs resumed (fp32; both are bit-exact)
EXPORT_TOL = 0.0  # the export holds exactly the weights that were saved (fp32 in, fp32 out)

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


@pytest.fixture(scope="module", params=["fsdp2", "deepspeed"])
def run(request, ray_local, tiny_model, tmp_path_factory) -> dict:
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"ckpt-{backend}")
    ckpt = tmp / "learner"
    out: dict = {"backend": backend}
    a = start_learners(tiny_model, backend)  # DeepSpeed: ZeRO-3, the default stage
    try:
        out["first"] = [grpo_step(a, seed) for seed in (1, 2)]
        out["meta"] = a.call_all("save_checkpoint", str(ckpt))[0]
        out["at_save"] = full_weights(a)
        out["straight"] = [grpo_step(a, seed) for seed in (3, 4)]
        out["straight_final"] = full_weights(a)
    finally:
        stop(a)
    b = start_learners(tiny_model, backend)
    try:
        out["loaded_step"] = b.call_all("load_checkpoint", str(ckpt))
        out["loaded"] = full_weights(b)
        out["resumed"] = [grpo_step(b, seed) for seed in (3, 4)]
        out["resumed_final"] = full_weights(b)
    finally:
        stop(b)
    out["hf_dir"] = export_checkpoint_to_hf(ckpt, tiny_model, tmp / "hf")
    return out


def test_checkpoint_files_and_metadata(run):
    meta = run["meta"]
    assert meta["backend"] == run["backend"]
    assert meta["world_size"] == 2 and meta["step"] == 2 and meta["dtype"] == "float32"
    assert EXPECTED_FILES[run["backend"]] | COMMON_FILES <= set(meta["files"])
    assert run["loaded_step"] == [2, 2]


def test_resume_is_exact(run):
    assert max_diff(run["at_save"], run["loaded"]) <= RESUME_TOL
    for a, b in zip(run["straight"], run["resumed"], strict=True):
        for key in ("pg_loss", "entropy", "grad_norm", "approx_kl"):
            assert abs(a[key] - b[key]) <= RESUME_TOL, (key, a, b)
    assert max_diff(run["at_save"], run["straight_final"]) > MOVED  # steps 3-4 did move the weights
    diff = max_diff(run["straight_final"], run["resumed_final"])
    losses = max(
        abs(a["pg_loss"] - b["pg_loss"]) for a, b in zip(run["straight"], run["resumed"], strict=True)
    )
    print(f"measured: {run['backend']} resume: max |dw| = {diff:.3g}, max |dloss| = {losses:.3g}")
    assert diff <= RESUME_TOL


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
