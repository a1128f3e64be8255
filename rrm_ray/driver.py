"""The driver: reserve placement groups, start the role groups, run GRPO, log to MLflow.

    for step in range(total_steps):
        prompts   = next batch of the prompt data
        samples   = rollout.generate(prompts, n)               # vLLM engines
        rewards   = reward.score(samples)                      # rule actor (timeouts, never hangs)
        adv       = group_advantages(rewards)                  # pure math
        learner.train_step(batch shards, token counts)         # FSDP2 ranks
        rollout.update_weights(learner.export_weights())       # bucketed, checked for completeness

Each phase has a named timer whose seconds go to MLflow next to the step's metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from actors.rollout import Completion, RolloutWorker, engine_env
from rrm_ray import algo
from rrm_ray.actor_group import ActorGroup, RoleSpec
from rrm_ray.batch import build_batch, interleave_for_balance, mini_batch_tokens, permute, shard
from rrm_ray.config import JobConfig, resolved_dtype, to_flat_dict, to_yaml
from rrm_ray.data.prompts import PromptRow, load_prompts, render_prompt
from rrm_ray.models import resolve_model_path
from rrm_ray.progress import StepPrinter
from rrm_ray.tracking import MLflowTracker, NullTracker, Tracker


@dataclass
class PhaseTimer:
    """Seconds per named phase within one step."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def connect_ray(cfg: JobConfig) -> None:
    """Connect to the configured cluster, or start a local one with the declared logical resources."""
    if ray.is_initialized():
        return
    env = {"RAY_DEDUP_LOGS": "0"}
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.cluster.local_num_cpus,
            num_gpus=cfg.cluster.local_num_gpus,
            include_dashboard=False,
            runtime_env={"env_vars": env},
        )


class PromptStream:
    """Epoch-wise shuffled prompts; `position` makes the stream resumable."""

    def __init__(self, rows: list[PromptRow], batch: int, shuffle: bool, seed: int) -> None:
        self.rows, self.batch, self.shuffle, self.seed = rows, batch, shuffle, seed
        self.position = 0  # prompts consumed since the start

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def next(self) -> list[PromptRow]:
        out = []
        for _ in range(self.batch):
            epoch, offset = divmod(self.position, len(self.rows))
            out.append(self.rows[self._order(epoch)[offset]])
            self.position += 1
        return out


class GRPOJob:
    """Owns the Ray roles of a GRPO run and runs the loop; use as a context manager."""

    def __init__(self, cfg: JobConfig, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.model_path = resolve_model_path(cfg.model.path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.train_rows, self.eval_rows = self._load_data()
        self.stream = PromptStream(
            self.train_rows, cfg.data.prompts_per_step, cfg.data.shuffle, cfg.trainer.seed
        )
        self.tracker = tracker or self._make_tracker()
        self.groups: list[ActorGroup] = []
        self.step = 0

    # -- set-up ------------------------------------------------------------------------------------------
    def _load_data(self) -> tuple[list[PromptRow], list[PromptRow]]:
        d = self.cfg.data
        if d.generate_arithmetic and not Path(d.train_path).is_file():
            from rrm_ray.data.arithmetic import make_split, write_jsonl

            # Every distinct a + b with operands up to the bound, minus the held-out ones.
            distinct = d.arithmetic_max_operand * (d.arithmetic_max_operand + 1) // 2
            n_eval = min(d.eval_max_prompts, distinct // 4)
            train, held_out = make_split(distinct - n_eval, n_eval, seed=0, max_operand=d.arithmetic_max_operand)
            write_jsonl(train, d.train_path)
            if d.eval_path:
                write_jsonl(held_out, d.eval_path)
        train = load_prompts(d.train_path, d.prompt_field, d.answer_field)
        held = load_prompts(d.eval_path, d.prompt_field, d.answer_field) if d.eval_path else []
        return train, held[: d.eval_max_prompts]

    def _make_tracker(self) -> Tracker:
        t = self.cfg.tracking
        if not t.enabled:
            return NullTracker()
        tracker = MLflowTracker(t.uri, t.experiment, t.run_name)
        tracker.log_params(to_flat_dict(self.cfg))
        tracker.set_tags({"rrm_ray.job": "grpo", "ray.job_id": os.environ.get("RAY_JOB_ID", "")})
        return tracker

    def start(self) -> None:
        """Connect to Ray, reserve one placement group per role, start the actors."""
        cfg = self.cfg
        c, r, lr = cfg.cluster, cfg.rollout, cfg.learner
        connect_ray(cfg)
        gpu = c.device == "cuda"
        dtype = resolved_dtype(cfg)
        common = dict(placement_timeout_s=c.placement_timeout_s, call_timeout_s=c.call_timeout_s)
        self.rollout = ActorGroup(
            RolloutWorker,
            RoleSpec(
                "rollout", r.num_engines, r.cpus_per_engine, r.gpus_per_engine if gpu else 0, r.strategy
            ),
            init_args=(self.model_path, dtype, cfg.model.max_model_len, cfg.trainer.seed, c.device),
            init_kwargs={
                "gpu_memory_utilization": r.gpu_memory_utilization,
                "max_num_batched_tokens": r.max_num_batched_tokens,
            },
            env={**engine_env(c.device, r.kv_cache_gib, r.threads), **c.env},
            **common,
        )
        self.groups.append(self.rollout)
        self.learner = ActorGroup(
            LearnerWorker,
            RoleSpec("learner", lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank if gpu else 0, lr.strategy),
            init_args=(
                self.model_path,
                dtype,
                c.device,
                dataclasses.asdict(lr),
                dataclasses.asdict(cfg.algorithm),
                r.temperature,
                cfg.trainer.seed,
            ),
            env={"OMP_NUM_THREADS": str(lr.threads), **c.env},
            **common,
        )
        self.groups.append(self.learner)
        self.reward = ActorGroup(
            RewardWorker,
            RoleSpec("reward", 1, cfg.reward.cpus),
            init_args=(
                dict(cfg.reward.rule_weights) or cfg.reward.rule,
                cfg.reward.timeout_s,
                cfg.reward.fallback,
                cfg.reward.num_workers,
            ),
            env=dict(c.env),
            **common,
        )
        self.groups.append(self.reward)
        # Rank 0 of the learner publishes the rendezvous address (its node IP and a free port).
        master = self.learner.placement()[0]
        port = self.learner.call_rank0("free_port")
        self.learner.call_all("init_process_group", master["ip"], port)
        self.rollout.call_all("ping")  # engines are up
        self.placement = [*self.rollout.placement(), *self.learner.placement(), *self.reward.placement()]

    def __enter__(self) -> GRPOJob:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FAILED" if exc_type else "FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        for group in reversed(self.groups):
            group.shutdown()
        self.groups = []
        self.tracker.close(status)

    # -- phases ------------------------------------------------------------------------------------------
    def render(self, rows: list[PromptRow]) -> list[str]:
        m = self.cfg.model
        return [
            render_prompt(self.tokenizer, row.prompt, m.system_prompt, m.use_chat_template) for row in rows
        ]

    def generate(self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None):
        """Split prompts over the engines (contiguous chunks), gather completions prompt-major."""
        engines = len(self.rollout)
        chunk = -(-len(prompts) // engines)
        refs = []
        for e in range(engines):
            part = prompts[e * chunk : (e + 1) * chunk]
            if part:
                refs.append(
                    self.rollout.actors[e].generate.remote(
                        part, n, temperature, self.cfg.rollout.top_p, max_tokens, seed, e * chunk
                    )
                )
        return [c for out in self.rollout.get(refs, "generate") for c in out]

    def score(self, completions: list[Completion], rows: list[PromptRow]):
        answers = [rows[c.prompt_index].answer for c in completions]
        return self.reward.call_rank0("score", [c.text for c in completions], answers)

    def sync_weights(self) -> dict[str, int]:
        """Learner -> engines in size-bounded buckets; each engine verifies completeness."""
        exported = self.learner.call_all("export_weights", self.cfg.rollout.weight_bucket_mb)
        manifest, refs = exported[0]
        reports = self.rollout.call_all("update_weights", manifest, refs)
        del refs
        return reports[0]

    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out prompts, scored by the same rule."""
        if not self.eval_rows:
            return {}
        completions = self.generate(
            self.render(self.eval_rows), 1, 0.0, self.cfg.rollout.eval_max_new_tokens, seed=None
        )
        batch = self.score(completions, self.eval_rows)
        rewards = batch.rewards
        return {
            "eval/reward_mean": sum(rewards) / len(rewards),
            "eval/accuracy": sum(r > 0 for r in rewards) / len(rewards),
            "eval/response_length": sum(len(c.response_ids) for c in completions) / len(completions),
        }

    def train_step(self) -> dict[str, float]:
        """One GRPO step; returns the step's metrics (also logged)."""
        cfg, timer = self.cfg, PhaseTimer()
        n = cfg.rollout.n_samples
        rows = self.stream.next()
        with timer.phase("generate"):
            seed = cfg.trainer.seed * 1_000_003 + self.step * 1009
            completions = self.generate(
                self.render(rows), n, cfg.rollout.temperature, cfg.rollout.max_new_tokens, seed
            )
        with timer.phase("reward"):
            scored = self.score(completions, rows)
        rewards = torch.tensor(scored.rewards, dtype=torch.float32)
        advantages = algo.group_advantages(rewards, n, scale_by_std=cfg.algorithm.scale_by_std)
        batch = build_batch(
            [c.prompt_ids for c in completions],
            [c.response_ids for c in completions],
            [c.response_logprobs for c in completions],
            advantages.tolist(),
            pad_id=self.tokenizer.pad_token_id or 0,
        )
        ranks = len(self.learner)
        shards = shard(permute(batch, interleave_for_balance(len(batch), ranks)), ranks)
        tokens = mini_batch_tokens(shards, cfg.algorithm.mini_batches)
        old_lp = ref_lp = None
        with timer.phase("logprobs"):
            if cfg.algorithm.mini_batches > 1:
                old_lp = self.learner.call_sharded("compute_logprobs", shards, reference=False)
            if cfg.algorithm.kl_coef > 0:
                ref_lp = self.learner.call_sharded("compute_logprobs", shards, reference=True)
        lr = algo.lr_at(
            self.step,
            cfg.learner.lr,
            cfg.learner.warmup_steps,
            cfg.trainer.total_steps,
            cfg.learner.lr_schedule,
            cfg.learner.min_lr_ratio,
        )
        with timer.phase("update"):
            refs = [
                actor.train_step.remote(
                    s,
                    tokens,
                    lr,
                    None if old_lp is None else old_lp[i],
                    None if ref_lp is None else ref_lp[i],
                )
                for i, (actor, s) in enumerate(zip(self.learner.actors, shards, strict=True))
            ]
            stats = self.learner.get(refs, "train_step")[0]
        with timer.phase("weight_sync"):
            sync = self.sync_weights()
        self.step += 1

        lengths = [len(c.response_ids) for c in completions]
        total = sum(timer.seconds.values())
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "reward/accuracy": float((rewards > 0).float().mean()),
            "reward/timeouts": scored.timeouts,
            "reward/errors": scored.errors,
            "response/length_mean": sum(lengths) / len(lengths),
            "response/clipped_fraction": sum(c.finish_reason == "length" for c in completions)
            / len(completions),
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"time/{k}_s": v for k, v in timer.seconds.items()},
            "time/step_s": total,
            "perf/generated_tokens_per_s": sum(lengths) / max(timer.seconds["generate"], 1e-9),
            "perf/trained_tokens_per_s": batch.num_tokens / max(timer.seconds["update"], 1e-9),
            "sync/buckets": sync["buckets"],
            "sync/mb": sync["bytes"] / 2**20,
        }
        self.tracker.log_metrics(metrics, step=self.step)
        self._log_samples(rows, completions, scored.rewards)
        return metrics

    def _log_samples(
        self, rows: list[PromptRow], completions: list[Completion], rewards: list[float]
    ) -> None:
        k = self.cfg.trainer.log_samples
        if k <= 0:
            return
        picked = list(range(0, len(completions), max(1, len(completions) // k)))[:k]
        self.tracker.log_table(
            [
                {
                    "step": self.step,
                    "prompt": str(rows[completions[i].prompt_index].prompt),
                    "answer": rows[completions[i].prompt_index].answer,
                    "response": completions[i].text,
                    "reward": rewards[i],
                }
                for i in picked
            ],
            f"samples_step{self.step:05d}",
        )

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate, train `total_steps`, evaluate again, save the policy; returns a summary."""
        cfg = self.cfg
        started = time.perf_counter()
        before = self.evaluate()
        self.tracker.log_metrics({k.replace("eval/", "eval_before/"): v for k, v in before.items()}, step=0)
        if before:
            self.tracker.log_metrics(before, step=0)
        printer = StepPrinter(cfg.trainer.total_steps, before)
        history = []
        with printer:
            while self.step < cfg.trainer.total_steps:
                metrics = self.train_step()
                history.append(metrics)
                if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0:
                    ev = self.evaluate()
                    self.tracker.log_metrics(ev, step=self.step)
                    metrics.update(ev)
                printer.update(self.step, metrics)
        after = self.evaluate()
        if after:
            self.tracker.log_metrics(after, step=self.step)
            self.tracker.log_metrics(
                {k.replace("eval/", "eval_after/"): v for k, v in after.items()}, self.step
            )
        final_dir = None
        if cfg.checkpoint.save_final:
            final_dir = str(Path(cfg.checkpoint.dir, "final").resolve())
            Path(final_dir).parent.mkdir(parents=True, exist_ok=True)
            self.learner.call_all("save_hf", final_dir, self.model_path)
            self.tracker.set_tags({"rrm_ray.final_policy": final_dir})
            Path(final_dir, "rrm_ray_config.yaml").write_text(to_yaml(cfg))
        return {
            "before": before,
            "after": after,
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "final_policy": final_dir,
            "history": history,
            "run_id": self.tracker.run_id,
            "placement": self.placement,
        }
