"""Config loading and validation: every shipped YAML loads; bad input names the key and what is allowed."""

from pathlib import Path

import pytest

from rrm_ray.config import ConfigError, to_flat_dict
from rrm_ray.validation import load_config

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.trainer.total_steps >= 1


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["learner.lr=3e-6", "rollout.n_samples=4", "model.system_prompt=Be brief."])
    assert cfg.learner.lr == 3e-6 and isinstance(cfg.learner.lr, float)
    assert cfg.rollout.n_samples == 4
    assert cfg.model.system_prompt == "Be brief."


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["learner.lrr=1"], "unknown config key 'learner.lrr'"),
        (["learner.lrr=1"], "allowed keys here: backend"),
        (["nosection.x=1"], "unknown config key"),
        (["learner.lr=abc"], "learner.lr"),
        (["rollout.n_samples=many"], "rollout.n_samples"),
        (["learner.num_ranks=3"], "must divide evenly over 3 learner ranks"),
        (["cluster.device=tpu"], "cluster.device: got 'tpu', allowed: cpu, cuda"),
        (["learner.backend=megatron"], "learner.backend"),
        (["rollout.n_samples=1"], "GRPO needs at least 2 samples"),
        (["learner.lr=0"], "learner.lr: must be positive"),
        (["algorithm.clip_low=1.5"], "algorithm.clip_low"),
        (["judge.method=glicko"], "judge.method: got 'glicko', allowed: knockout, elo, swiss"),
        (["judge.swiss_rounds=0"], "judge.swiss_rounds: must be null"),
        (["judge.max_model_len=100"], "judge.max_model_len"),
        (["cluster.local_num_cpus=2"], "asks for 3.5 logical CPUs but the local Ray declares 2"),
        (["algorithm.mini_batches=3"], "algorithm.mini_batches"),
        (
            ["judge.prompt_style=tiny"],
            "judge.prompt_style: got 'tiny', allowed: auto, rrm_release, mtbench, compact",
        ),
        (["judge.prompt_style=full"], "judge.prompt_style: 'full' was renamed to mtbench"),
        (["judge.over_length=reject"], "judge.over_length: 'reject' was renamed: skip"),
        (["judge.over_length=cut"], "judge.over_length: got 'cut', allowed: truncate, skip, error"),
        (["judge.verdict_rule=strict"], "judge.verdict_rule: got 'strict', allowed: release, lenient"),
        (
            ["judge.presentation=random"],
            "judge.presentation: got 'random', allowed: both_orders, seeded_coin",
        ),
        (
            ["judge.mode=direct", "judge.prompt_style=rrm_release"],
            "rrm_release is the released RRMs' reasoning prompt and needs judge.mode=rrm",
        ),
        (
            ["judge.mode=direct", "judge.verdict=choice_prob", "judge.presentation=seeded_coin"],
            "choice_prob scores both orders",
        ),
        (["judge.endpoint.url=localhost:8000"], "judge.endpoint.url: expected http://host:port"),
        (["judge.endpoint.api_key_env=sk-abc123"], "never the key itself"),
        (["judge.endpoint.max_concurrency=0"], "judge.endpoint.max_concurrency: must be >= 1"),
        (
            ["judge.endpoint.url=http://h:1", "judge.think_budget=8"],
            "a judge behind judge.endpoint.url cannot; set judge.think_budget=0",
        ),
        (
            [
                "judge.enabled=true",
                "judge.endpoint.url=http://h:1",
                "cluster.colocate=[[rollout,judge]]",
                "judge.num_engines=1",
            ],
            "serves the judge outside this job: it has no bundles to share",
        ),
        (
            ["data.format=preference", "reward.rule=judge_rrm(verdict_rule=lenient)"],
            "judge training reads verdicts by judge.verdict_rule",
        ),
        (
            ["data.format=preference", "reward.rule=judge_rrm", "judge.max_prompt_tokens=500"],
            "model.max_model_len >= 628",
        ),
        (["judge.mode=direct", "judge.think_budget=8"], "a thinking budget needs judge.mode=rrm"),
        (["judge.verdict=choice_prob"], "'choice_prob' needs judge.mode=direct"),
        (["judge.mode=direct", "judge.verdict=choice_prob", "judge.votes=3"], "judge.votes: must be 1"),
        (["judge.max_new_tokens=64", "judge.think_budget=64"], "room for the verdict"),
        (
            ["data.format=preference", "reward.rule=judge_rrm", "judge.think_budget=200"],
            "the thinking budget 200 must leave room for the verdict",
        ),
        (["algorithm.filter_flat_groups=true", "algorithm.kl_coef=0.1"], "needs algorithm.kl_coef=0"),
        (
            ["algorithm.filter_flat_groups=true", "rollout.n_samples=3", "data.prompts_per_step=2"],
            "rollout.n_samples=3 must divide over learner.num_ranks",
        ),
        (["learner.max_tokens_per_microbatch=100"], "at least model.max_model_len=512"),
        (["learner.lora.rank=-1"], "learner.lora.rank: must be >= 0"),
        (["learner.lora.rank=1024"], "vLLM serves LoRA ranks up to 512"),
        (["learner.lora.rank=8", "learner.lora.alpha=0"], "learner.lora.alpha: must be > 0"),
        (["learner.lora.rank=8", "learner.lora.sync=delta"], "learner.lora.sync: got 'delta'"),
        (["learner.lora.rank=8", "learner.lora.target_modules=[lm_head]"], "some of the decoder's linear"),
        (["learner.lora.rank=8", "learner.lora.target_modules=[]"], "learner.lora.target_modules"),
        (
            ["learner.lora.rank=8", "cluster.colocate=[[rollout,learner]]", "rollout.sleep_level=2"],
            "rollout.sleep_level: must be 1 with learner.lora.sync=adapter",
        ),
        (["lr=1"], "unknown config key 'lr'"),
        (["learner.lr"], "not of the form key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


def test_gpu_count_checked_against_declared_cluster():
    with pytest.raises(ConfigError, match=r"asks for 6 GPUs .* declared cluster has 4"):
        load_config(
            None,
            [
                "cluster.device=cuda",
                "cluster.num_nodes=1",
                "cluster.gpus_per_node=4",
                "rollout.num_engines=2",
                "learner.num_ranks=4",
            ],
        )


def test_bad_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("learner:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=f"unknown config key 'learner.learning_rate' in {path}"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/file.yaml")


def test_flat_dict_for_mlflow_params():
    flat = to_flat_dict(load_config(None))
    assert flat["learner.lr"] == 1e-5
    assert flat["judge.votes"] == 1


def test_the_reference_config_lists_every_key_with_its_default():
    """configs/reference.yaml is where a user finds every knob: it must name each key the schema has,
    with the schema's default (regenerate it from `to_yaml(load_config(None, []))` when a key changes)."""
    from omegaconf import OmegaConf

    reference = OmegaConf.to_container(OmegaConf.load("configs/reference.yaml"))
    defaults = to_flat_dict(load_config(None, []))
    flat = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(reference, "")
    assert set(defaults) <= set(flat), sorted(set(defaults) - set(flat))
    assert all(flat[k] in ({}, []) for k in set(flat) - set(defaults))  # empty maps, lists: no flat key
    assert to_flat_dict(load_config("configs/reference.yaml", [])) == defaults
