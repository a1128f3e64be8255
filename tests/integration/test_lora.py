"""LoRA GRPO end to end on the tiny model: adapter-only syncs, exact resume, exports that load.

The whole stack (a LoRA-serving vLLM engine, 2 FSDP2 learner ranks over gloo, the reward actor,
MLflow), `learner.lora.rank` 8 on every linear, a KL penalty against the base (the adapter switched
off, no second model):

    job A: steps 1-2, checkpoint, steps 3-4, checkpoint; after each sync the engine serves a new
           adapter name and computes what the learner computes; then, as after an engine restart, the
           sync is set up again and the adapter sent again
    job B: resume=<A's step-2 checkpoint>, steps 3-4 -> A's metrics and A's adapter, exactly
    export (`rrm-ray export`, no Ray) of A's step-4 checkpoint: the PEFT adapter and --merge
           -> transformers (peft on the base; the merged model) and vLLM (the adapter loaded into B's
              engine; an engine started on the merged directory) compute the learner's log-probs
    merged sync: one step later B's learner sends that plain engine its merged weights
"""

from __future__ import annotations

import pytest
import torch

from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.validation import load_config
from tests.integration.conftest import rrm_ray_cli, start_engine_group, tiny_overrides
from tests.integration.probes import engine_logprobs, learner_logprobs, on_all, on_rank0
from tests.integration.test_resume import COMPARED, scramble_rngs
from tests.readme import runs_command

pytestmark = pytest.mark.integration

RESUME_TOL = 1e-6
LOGPROB_TOL = 2e-4  # engine vs learner log-probs of one sequence (fp32; vLLM's kernels differ)
PROBE = "The quick brown fox jumps over the lazy dog. 1 + 2 = 3"


def adapter_weights(learner) -> dict[str, torch.Tensor] | None:
    """Collective: rank 0 returns the adapter's full fp32 tensors by PEFT file key."""
    tensors = learner.policy.adapter_state()
    return tensors if learner.rank == 0 else None


def served(engine) -> dict | None:
    return engine.served_adapter()


@pytest.fixture(scope="module")
def lora_runs(ray_local, tiny_model, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("lora")
    overrides = tiny_overrides(
        tiny_model,
        tmp,
        **{
            "learner.lora.rank": 8,
            "learner.lora.alpha": 16,
            "algorithm.kl_coef": 0.05,
            "trainer.total_steps": 4,
            "checkpoint.keep_last": 2,
        },
    )
    out: dict = {"tmp": tmp}
    with GRPOJob(load_config(None, overrides)) as a:
        a.start()
        probe = a.tokenizer.encode(PROBE)
        out["probe"] = probe
        rollout, learner = a.roles.rollout.group, a.roles.learner.group
        out["engine_base"] = on_rank0(rollout, engine_logprobs, probe)
        out["adapters"], out["steps"] = [], []
        for step in range(4):
            out["steps"].append(a.train_step())
            out["adapters"].append(on_rank0(rollout, served))
            if step == 1:
                out["saved"] = a.save_checkpoint()
        out["final"] = a.save_checkpoint()
        out["engine"] = on_rank0(rollout, engine_logprobs, probe)
        out["learner"] = on_all(learner, learner_logprobs, probe)[0]
        out["adapter"] = on_all(learner, adapter_weights)[0]
        a.roles.rollout.init_weight_transfer()  # as after an engine restart: set up again, sent again
        out["resync"] = a.roles.sync_weights()
        out["resync_adapter"] = on_rank0(rollout, served)
        out["engine_after_resync"] = on_rank0(rollout, engine_logprobs, probe)

    scramble_rngs()
    resumed = [*overrides, f"resume={out['saved']}", f"checkpoint.dir={tmp / 'resumed'}"]
    with GRPOJob(load_config(None, resumed)) as b:
        b.start()
        out["resumed_steps"] = [b.train_step() for _ in range(2)]
        out["resumed_adapter"] = on_all(b.roles.learner.group, adapter_weights)[0]
        export = {"adapter": tmp / "export-adapter", "merged": tmp / "export-merged"}
        for kind, path in export.items():
            done = rrm_ray_cli(
                "export", str(out["final"]), "--out", str(path), *(["--merge"] if kind == "merged" else [])
            )
            assert done.returncode == 0, done.stderr[-3000:]
        out["export"] = export
        out["engine_resumed"] = on_rank0(b.roles.rollout.group, engine_logprobs, out["probe"])
        out["engine_exported_adapter"] = on_rank0(
            b.roles.rollout.group, load_exported, str(export["adapter"]), out["probe"]
        )
        # An engine without LoRA on the merged export; then, one step later, B's learner sends it the
        # merged weights (learner.lora.sync=merged's source, through the object-store transfer).
        plain = start_engine_group(
            str(export["merged"]), "merged", weight_transfer_backend="rrm_object_store"
        )
        try:
            out["merged_export_engine"] = on_rank0(plain, engine_logprobs, out["probe"])
            b.train_step()
            learner = b.roles.learner.group
            learner.call_all("init_weight_transfer", "rrm_object_store", plain.actors, 1, 64, 300.0)
            out["merged_sync"] = learner.call_all("send_weights")[0]
            out["merged_sync_engine"] = on_rank0(plain, engine_logprobs, out["probe"])
            out["merged_sync_learner"] = on_all(learner, learner_logprobs, out["probe"])[0]
        finally:
            plain.shutdown()
    return out


def load_exported(engine, directory: str, probe: list[int]) -> list[float]:
    """Inside an engine: serve the exported adapter directory, then the probe's log-probs."""
    from rrm_ray import lora
    from rrm_ray.weight_sync import manifest_of

    tensors, config = lora.read_adapter(directory)
    engine.load_adapter("exported", config, tensors, manifest_of(tensors.items()))
    return engine_logprobs(engine, probe)


def max_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_every_sync_serves_a_new_adapter_the_learners_policy(lora_runs):
    names = [s["name"] for s in lora_runs["adapters"]]
    assert len(set(names)) == 4  # a new name (and path) per sync: the prefix cache never mixes them
    assert all(s["loaded"] == [s["id"]] for s in lora_runs["adapters"])  # the previous one removed
    assert all(s["path"].startswith(("/dev/shm/", "/tmp/")) for s in lora_runs["adapters"])
    assert max_gap(lora_runs["engine_base"], lora_runs["engine"]) > 1e-3  # the adapter changed the engine
    gap = max_gap(lora_runs["engine"], lora_runs["learner"])
    print(f"measured: LoRA engine vs learner log-probs: max |d| = {gap:.3g}")
    assert gap < LOGPROB_TOL
    for step in lora_runs["steps"]:
        sync_mb = step["sync/mb"]
        assert 0 < sync_mb < 1.0  # the adapter only (the tiny model's full weights: ~26 MiB)
        assert step["train/kl"] >= 0 and step["train/grad_norm"] > 0


def test_a_restarted_engine_gets_the_adapter_again(lora_runs):
    assert lora_runs["resync"]["params"] == len(lora_runs["adapter"])  # every adapter tensor, once
    assert lora_runs["resync_adapter"]["name"] != lora_runs["adapters"][-1]["name"]
    assert max_gap(lora_runs["engine_after_resync"], lora_runs["engine"]) < 1e-6


def test_resume_is_exact(lora_runs):
    for a, b in zip(lora_runs["steps"][2:], lora_runs["resumed_steps"], strict=True):
        for key in (*COMPARED, "train/kl"):
            assert abs(a[key] - b[key]) <= RESUME_TOL, (key, a[key], b[key])
    final, resumed = lora_runs["adapter"], lora_runs["resumed_adapter"]
    assert final.keys() == resumed.keys()
    diff = max(float((final[k] - resumed[k]).abs().max()) for k in final)
    print(f"measured: LoRA resume: max |d adapter| = {diff:.3g}")
    assert diff <= RESUME_TOL
    assert max_gap(lora_runs["engine_resumed"], lora_runs["engine"]) < 1e-6


def test_the_checkpoint_holds_the_adapter_and_its_optimizer_only(lora_runs):
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(lora_runs["final"] / "learner" / "dcp")).read_metadata()
    model_keys = [k for k in meta.state_dict_metadata if k.startswith("model.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys)


@runs_command("export")
def test_exports_load_in_transformers_and_vllm(lora_runs, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from actors.model_io import install_logprob_forward

    probe = torch.tensor([lora_runs["probe"]])

    def logprobs(model) -> list[float]:
        install_logprob_forward(model)
        with torch.no_grad():
            lp, _ = model(input_ids=probe, logprob_temperature=1.0)
        return lp[0].tolist()

    export = lora_runs["export"]
    merged = AutoModelForCausalLM.from_pretrained(export["merged"])
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), str(export["adapter"])
    )
    for name, lp in (("merged", logprobs(merged)), ("adapter", logprobs(peft_model.merge_and_unload()))):
        gap = max_gap(lp, lora_runs["learner"])
        print(f"measured: {name} export in transformers vs learner: max |d| = {gap:.3g}")
        assert gap < 1e-4
    gap = max_gap(lora_runs["engine_exported_adapter"], lora_runs["engine"])
    print(f"measured: exported adapter in vLLM vs the synced one: max |d| = {gap:.3g}")
    assert gap < 1e-5
    gap = max_gap(lora_runs["merged_export_engine"], lora_runs["engine"])
    print(f"measured: merged export in vLLM vs the LoRA engine: max |d| = {gap:.3g}")
    assert gap < LOGPROB_TOL


def test_merged_sync_sends_the_merged_policy(lora_runs, tiny_model):
    """learner.lora.sync=merged: every base tensor once (the merged linears under their base names),
    and the engine then computes the learner's policy, one step past the export it started on."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert lora_runs["merged_sync"]["params"] == len(list(base.parameters()))  # a tied lm_head once
    assert max_gap(lora_runs["merged_sync_engine"], lora_runs["merged_export_engine"]) > 0
    gap = max_gap(lora_runs["merged_sync_engine"], lora_runs["merged_sync_learner"])
    print(f"measured: merged sync, engine vs learner log-probs: max |d| = {gap:.3g}")
    assert gap < LOGPROB_TOL
