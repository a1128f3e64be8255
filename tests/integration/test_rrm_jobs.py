"""RRM jobs through the real stack on a tiny random model: judge training with the rule reward
(issue: train an RRM), GRPO whose rewards come from the RRM judge's tournaments. DPO on RRM-labelled
pairs runs through `rrm-ray dpo` in test_cli_commands.py."""

from __future__ import annotations

import mlflow
import pytest
import ray

from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.judge.budget import FORCED_CLOSE
from rrm_ray.validation import load_config
from tests.integration.conftest import CHOICE_JUDGE, tiny_overrides

pytestmark = pytest.mark.integration


def run_job(overrides: list[str]):
    cfg = load_config(None, overrides)
    with GRPOJob(cfg) as job:
        job.start()
        summary = job.run()
    return cfg, summary


def test_judge_training_steps_and_the_trained_judge_loads(ray_local, tiny_model, tmp_path):
    """Two steps of judge training with a thinking budget (budget forcing, compact prompt)."""
    data = tmp_path / "pairs"
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model,
            tmp_path,
            **{
                "model.max_model_len": 512,
                "reward.rule": "judge_rrm",
                "judge.mode": "rrm",
                "judge.prompt_style": "compact",
                "judge.think_budget": 6,
                "algorithm.filter_flat_groups": "true",
                "trainer.eval_every": 1,
                "judge.max_prompt_tokens": 400,
                "judge.over_length": "truncate",  # some generated pairs are longer: cut, and counted
                "judge.max_new_tokens": 16,
                "judge.max_model_len": 512,
                "data.format": "preference",
                "data.synthetic_pairs": 8,
                "data.train_path": str(data / "train.jsonl"),
                "data.eval_path": str(data / "eval.jsonl"),
                "data.eval_max_prompts": 2,
            },
        ),
    )
    with GRPOJob(cfg) as job:
        job.start()
        summary = job.run()
        # The engine's own tokens (the forced "</think>") are marked so the loss skips them.
        prompt = job.render(job.eval_rows[:1])
        completions = ray.get(
            job.roles.rollout.group.actors[0].generate.remote(prompt, 3, 1.0, 1.0, 12, None, 0, 6)
        )
    close_ids = job.tokenizer.encode(FORCED_CLOSE, add_special_tokens=False)
    for c in completions:
        assert len(c.response_mask) == len(c.response_ids) == len(c.response_logprobs)
        appended = [t for t, m in zip(c.response_ids, c.response_mask, strict=True) if m == 0]
        assert appended == (close_ids if c.forced_close else [])
        assert FORCED_CLOSE in c.text or "</think>" in c.text
    assert any(c.forced_close for c in completions)  # a random model does not close its thoughts
    assert all(0.0 <= s["reward/think_forced_close_rate"] <= 1.0 for s in summary["history"])
    for step in summary["history"]:  # flat groups (all -1 from a random judge) are not trained on
        assert step["train/groups_trained"] in (0, 1, 2)
        assert (step["train/groups_trained"] == 0) == ("train/loss" not in step)
    assert summary["steps"] == 2
    for step in summary["history"]:
        assert set(step) >= {
            "reward/verdict_correct_rate",
            "reward/verdict_wrong_rate",
            "reward/format_fail_rate",
        }
        rates = (
            step["reward/verdict_correct_rate"]
            + step["reward/verdict_wrong_rate"]
            + step["reward/format_fail_rate"]
        )
        assert rates == pytest.approx(1.0)
        assert -1.0 <= step["reward/mean"] <= 1.0  # the judge rule pays +1 or -1
    # held-out pairs are judged in both orders: 2 pairs -> 4 prompts
    assert "eval/format_fail_rate" in summary["after"]
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(summary["run_id"])
    assert "eval_after/accuracy" in run.data.metrics
    assert "data/over_length_pairs/train.jsonl" in run.data.metrics  # the cut pairs, counted
    # before, after step 1 (eval_every=1), and the final one: step 2 is not evaluated twice
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0, 1, 2]

    # The trained judge loads straight into the RRM-judge actor.
    from rrm_ray.jobs.judging import judge_session
    from rrm_ray.judge.records import JudgePair

    judge_cfg = load_config(
        None,
        tiny_overrides(
            summary["final_policy"],
            tmp_path,
            **{
                "judge.model_path": summary["final_policy"],
                "judge.max_new_tokens": 8,
                "judge.max_model_len": 512,
                "judge.max_prompt_tokens": 400,
                "judge.kv_cache_gib": 1,
                "judge.threads": 1,
                "judge.prompt_style": "compact",
                "judge.think_budget": 4,
            },
        ),
    )
    with judge_session(judge_cfg) as judge:
        [judgment] = judge.compare([JudgePair("What is 2+2?", "4", "5")])
    assert judgment.votes == 1 and len(judgment.traces) == 1
    assert "</think>" in judgment.traces[0].text  # the budget closed the thought


def test_grpo_with_rrm_rewards(ray_local, tiny_model, tmp_path):
    cfg, summary = run_job(
        tiny_overrides(
            tiny_model,
            tmp_path,
            **{
                "judge.enabled": True,
                "judge.model_path": tiny_model,
                "judge.method": "knockout",
                "judge.votes": 1,
                "judge.max_new_tokens": 8,
                # the released RRMs' prompt (prompt_style auto in rrm mode) alone takes ~400 tokens
                "judge.max_prompt_tokens": 600,
                "judge.max_model_len": 640,
                "judge.kv_cache_gib": 1,
                "judge.threads": 1,
                "judge.reward_mix": "weighted",
                "judge.rule_weight": 1.0,
                "judge.judge_weight": 0.5,
            },
        )
    )
    assert summary["steps"] == 2
    n, prompts = cfg.rollout.n_samples, cfg.data.prompts_per_step
    for step in summary["history"]:
        # knockout over n samples: n - 1 comparisons per prompt, all of a step in one judge call
        assert step["judge/comparisons"] == prompts * (n - 1)
        assert step["judge/over_length_pairs"] == 0
        assert step["judge/judge_calls"] >= 1
        assert "time/reward_s" in step
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    tables = [a.path for a in client.list_artifacts(summary["run_id"], "tables")]
    assert any("judge_traces_step" in t for t in tables)
    assert any("judge_brackets_step" in t for t in tables)
    figures = [a.path for a in client.list_artifacts(summary["run_id"], "figures")]
    assert {"figures/judge_agreement.png", "figures/phase_seconds.png"} <= set(figures)
    metrics = client.get_run(summary["run_id"]).data.metrics
    assert {"judge/unparseable", "judge/cache_hits", "judge/calls_saved", "judge/generate_s"} <= set(metrics)


def test_streamed_batch_equals_the_batch_path_with_a_greedy_judge(ray_local, tiny_model, tmp_path):
    """reward.streaming: groups go to the rule actor and the judge as they finish generating; with the
    same seeds and a greedy judge the batch is the one the generate-then-score path produces."""
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            **CHOICE_JUDGE,
            "judge.model_path": tiny_model,
            "judge.temperature": 0.0,
            "data.prompts_per_step": 3,
            "reward.streaming": "always",
        },
    )
    cfg = load_config(None, overrides)
    with GRPOJob(cfg) as job:
        job.start()
        assert job.streaming
        position = job.stream.position
        streamed = job.produce(0).batch
        job.roles.judge.clear_cache()  # the batch path judges every pair again
        job.stream.position, job.streaming = position, False
        batched = job.produce(0).batch
    n, prompts = cfg.rollout.n_samples, cfg.data.prompts_per_step
    assert [c.prompt_index for c in streamed.completions] == [p for p in range(prompts) for _ in range(n)]
    assert [c.response_ids for c in streamed.completions] == [c.response_ids for c in batched.completions]
    assert streamed.rewards.per_sample.tolist() == batched.rewards.per_sample.tolist()
    assert streamed.rewards.rule.rewards == batched.rewards.rule.rewards
    for p in range(prompts):
        assert streamed.rewards.judged[p].ranking == batched.rewards.judged[p].ranking
    assert streamed.rewards.judge_metrics["judge/comparisons"] == prompts * (n - 1)
    assert 1 <= streamed.rewards.judge_metrics["judge/stream_rank_calls"] <= prompts
    assert {"generate", "reward"} <= set(streamed.seconds)
