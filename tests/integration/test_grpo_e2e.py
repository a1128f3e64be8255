"""Two GRPO steps through the real stack: Ray + vLLM (CPU) + 2 FSDP2 ranks (gloo) + rule actor + MLflow.

Weights go learner -> engine through vLLM's weight-transfer protocol with the gloo collective engine
(`rollout.weight_sync=collective`, what `auto` means on cpu); `tests/integration/test_weight_transfer.py`
covers the object-store method.
"""

from __future__ import annotations

import math

import mlflow
import pytest

pytestmark = pytest.mark.integration

PHASES = ("generate", "reward", "logprobs", "update", "weight_sync")


@pytest.fixture(scope="module")
def job_run(grpo_run):
    return grpo_run


def test_engine_holds_the_learners_weights_after_sync(job_run):
    engine, learner, initial = job_run["engine"], job_run["learner"], job_run["initial"]
    assert len(engine) == len(learner) > 5
    # Same weights -> same log-probs on the same tokens (fp32 on both sides; kernels differ slightly).
    assert max(abs(a - b) for a, b in zip(engine, learner, strict=True)) < 1e-4
    # ... and training moved them: the engine no longer computes with the initial weights.
    assert max(abs(a - b) for a, b in zip(engine, initial, strict=True)) > 1e-2
    # The engine's own parameters are checksummed per layer (fused q/k/v and gate/up included).
    assert {"embed", "norm", "layer0", "layer1"} <= set(job_run["engine_params"])


def test_weight_transfer_can_be_set_up_again(job_run):
    # 2 layers x 9 tensors + embedding + final norm (the tied lm_head is not sent), each exactly once
    assert job_run["resync"]["params"] == 20
    assert job_run["summary"]["history"][-1]["sync/mb"] == job_run["resync"]["bytes"] / 2**20
    engine, learner = job_run["engine_after_resync"], job_run["learner"]
    assert max(abs(a - b) for a, b in zip(engine, learner, strict=True)) < 1e-4


def test_training_ran_every_phase_and_logged_to_mlflow(job_run):
    summary, cfg = job_run["summary"], job_run["cfg"]
    assert summary["steps"] == 2
    for step_metrics in summary["history"]:
        assert step_metrics["train/grad_norm"] > 0
        assert step_metrics["sync/buckets"] >= 1
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(summary["run_id"])
    metrics = run.data.metrics
    expected = [
        "reward/mean",
        "reward/std",
        "reward/accuracy",
        "response/length_mean",
        "train/entropy",
        "train/grad_norm",
        "train/lr",
        "train/approx_kl",
        "train/clipfrac",
        "perf/generated_tokens_per_s",
        "perf/trained_tokens_per_s",
        "eval/reward_mean",
        "eval_before/reward_mean",
        "eval_after/reward_mean",
        *(f"time/{p}_s" for p in PHASES),
    ]
    missing = [m for m in expected if m not in metrics]
    assert not missing, f"metrics missing from MLflow: {missing}"
    assert all(math.isfinite(v) for v in metrics.values())
    assert len(client.get_metric_history(run.info.run_id, "reward/mean")) == 2
    assert run.data.params["learner.num_ranks"] == "2"
    assert run.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "tables")]
    assert any("samples_step" in a for a in artifacts)


def test_final_policy_loads_in_transformers(job_run):
    from transformers import AutoModelForCausalLM

    path = job_run["summary"]["final_policy"]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 2


def test_placement_is_reported(job_run):
    roles = [(p["role"], p["rank"]) for p in job_run["summary"]["placement"]]
    assert roles == [("rollout", 0), ("learner", 0), ("learner", 1), ("reward", 0)]
