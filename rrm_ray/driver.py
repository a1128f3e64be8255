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
import json
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from actors.judge import JudgePool
from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from actors.rollout import Completion, RolloutWorker, engine_env
from rrm_ray import algo
from rrm_ray.actor_group import ActorGroup, PlacementError, RemoteCallTimeout, RoleSpec
from rrm_ray.batch import build_batch, interleave_for_balance, mini_batch_tokens, permute, shard
from rrm_ray.checkpoint import (
    DriverState,
    begin,
    commit,
    prune,
    read_driver_state,
    resolve_resume,
    write_driver_state,
)
from rrm_ray.config import JobConfig, resolved_dtype, to_flat_dict, to_yaml
from rrm_ray.data.prompts import PromptRow, render_prompt
from rrm_ray.data.tasks import RENDERED, load_task_rows
from rrm_ray.judge.feedback import Agreement, prompts_to_judge, query_text, sample_rewards, verifier_agreement
from rrm_ray.models import resolve_model_path
from rrm_ray.placement import missing_resources, role_specs, shared_fraction
from rrm_ray.progress import StepPrinter
from rrm_ray.rewards.judge_reward import judge_reward
from rrm_ray.tracking import BufferedTracker, MLflowTracker, NullTracker, Tracker


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


def ray_submission_id() -> str:
    """The submission id when this driver runs as a submitted Ray job (`rrm-ray submit`), else "".

    Ray (2.60) sets no RAY_JOB_SUBMISSION_ID for a submitted driver: the id travels in the job config
    JSON that the job supervisor puts in the driver's environment, as metadata["job_submission_id"].
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(raw).get("metadata", {}).get("job_submission_id") or "")
    return ""


def connect_ray(cfg: JobConfig) -> None:
    """Connect to the configured cluster, or start a local one with the declared logical resources."""
    if ray.is_initialized():
        return
    env = {"RAY_DEDUP_LOGS": "0"}
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(
            address="local",  # a new local instance, even if other clusters run on this machine
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
        self.train_rows, self.eval_rows, self.data_counts = load_task_rows(cfg, self.tokenizer)
        self.stream = PromptStream(
            self.train_rows, cfg.data.prompts_per_step, cfg.data.shuffle, cfg.trainer.seed
        )
        self.step = 0
        self.resume_from = resolve_resume(cfg.resume, cfg.checkpoint.dir)
        self.resumed_state = (
            read_driver_state(self.resume_from, restore_rng=False) if self.resume_from else None
        )
        self.tracker = tracker or self._make_tracker()
        self.groups: list[ActorGroup] = []
        self.faults: dict[str, int] = {"rollout_restarts": 0, "learner_recoveries": 0}
        self.judge: JudgePool | None = None
        self.agreement = Agreement()  # judge vs verifier over the whole run
        # Judge training (the policy is the judge) with budget forcing: see rrm_ray.judge.budget.
        self.think_budget = cfg.judge.think_budget if cfg.data.format == "preference" else 0

    # -- set-up ------------------------------------------------------------------------------------------
    def _make_tracker(self) -> Tracker:
        t = self.cfg.tracking
        if not t.enabled:
            return NullTracker()
        # Fail over to the local buffer quickly instead of MLflow's minutes of HTTP retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(t.http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(t.http_timeout_s)))
        run_id = self.resumed_state.mlflow_run_id if self.resumed_state else None
        inner = MLflowTracker(t.uri, t.experiment, t.run_name, run_id=run_id)
        tracker = BufferedTracker(inner, Path(self.cfg.checkpoint.dir) / "mlflow_buffer.jsonl")
        if run_id is None:
            tracker.log_params(to_flat_dict(self.cfg))
        job_id = ray_submission_id() or os.environ.get("RAY_JOB_ID", "")
        tracker.set_tags({"rrm_ray.job": "grpo", "ray.job_id": job_id})
        return tracker

    def start(self) -> None:
        """Connect to Ray, check the job fits, reserve one placement group per role, start the actors."""
        cfg = self.cfg
        c, r = cfg.cluster, cfg.rollout
        connect_ray(cfg)
        specs = role_specs(cfg)
        missing = missing_resources(specs, ray.cluster_resources())
        if missing:
            raise PlacementError("the cluster cannot hold this job:\n  " + "\n  ".join(missing))
        dtype = resolved_dtype(cfg)
        common = dict(placement_timeout_s=c.placement_timeout_s, call_timeout_s=c.call_timeout_s)
        self.rollout = self._group(
            RolloutWorker,
            specs["rollout"],
            init_args=(self.model_path, dtype, cfg.model.max_model_len, cfg.trainer.seed, c.device),
            init_kwargs={
                "gpu_memory_utilization": r.gpu_memory_utilization,
                "max_num_batched_tokens": r.max_num_batched_tokens,
                "tensor_parallel_size": r.tensor_parallel_size,
            },
            env={**engine_env(c.device, r.kv_cache_gib, r.threads), **c.env},
            max_restarts=c.max_actor_restarts,
            **common,
        )
        self._start_learner(specs["learner"])
        self.reward = self._group(
            RewardWorker,
            specs["reward"],
            init_args=(
                dict(cfg.reward.rule_weights) or cfg.reward.rule,
                cfg.reward.timeout_s,
                cfg.reward.fallback,
                cfg.reward.num_workers,
                cfg.reward.accuracy_rule or next(iter(cfg.reward.rule_weights), cfg.reward.rule),
            ),
            env=dict(c.env),
            **common,
        )
        self.judge = self._start_judge(specs) if cfg.judge.enabled else None
        self.rollout.call_all("ping")  # engines are up
        self.placement = [p for g in self.groups for p in g.placement()]
        if self.resume_from:
            self._restore(self.resume_from)

    def _start_learner(self, spec: RoleSpec) -> None:
        cfg, c = self.cfg, self.cfg.cluster
        self.learner = self._group(
            LearnerWorker,
            spec,
            init_args=(
                self.model_path,
                resolved_dtype(cfg),
                c.device,
                dataclasses.asdict(cfg.learner),
                dataclasses.asdict(cfg.algorithm),
                cfg.rollout.temperature,
                cfg.trainer.seed,
            ),
            env={"OMP_NUM_THREADS": str(cfg.learner.threads), **c.env},
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
        )
        # Rank 0 publishes the rendezvous address (its node IP and a free port).
        master = self.learner.placement()[0]
        port = self.learner.call_rank0("free_port")
        self.learner.call_all("init_process_group", master["ip"], port)

    def _start_judge(self, specs: dict[str, RoleSpec]) -> JudgePool:
        """The RRM judge on its own bundles, or sharing the rollout's bundles (each taking half)."""
        if self.cfg.judge.colocate_with_rollout:
            spec = shared_fraction(specs["rollout"], 0.5)
            pool = JudgePool(
                self.cfg, RoleSpec("judge", spec.num_workers, spec.cpus, spec.gpus), pg=self.rollout.pg
            )
        else:
            pool = JudgePool(self.cfg, specs["judge"])
        self.groups.append(pool.group)
        return pool

    def _group(self, actor_cls: type, spec: RoleSpec, **kwargs: Any) -> ActorGroup:
        group = ActorGroup(actor_cls, spec, **kwargs)
        self.groups.append(group)
        return group

    def __enter__(self) -> GRPOJob:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FAILED" if exc_type else "FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        for group in reversed(self.groups):
            group.shutdown()
        self.groups = []
        self.tracker.close(status)

    # -- checkpoints and recovery --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Learner shards + driver state into `step_N.partial`, then marked complete and renamed."""
        root = Path(self.cfg.checkpoint.dir)
        partial = begin(root, self.step)
        self.learner.call_all("save_checkpoint", str(partial / "learner"))
        state = DriverState(
            self.step, self.stream.position, self.tracker.run_id, {"faults": dict(self.faults)}
        )
        write_driver_state(partial, state, to_yaml(self.cfg))
        final = commit(partial, {"step": self.step, "backend": self.cfg.learner.backend})
        prune(root, self.cfg.checkpoint.keep_last)
        self.tracker.set_tags({"rrm_ray.last_checkpoint": str(final)})
        return final

    def _restore(self, directory: Path) -> None:
        """Learner shards, driver RNGs, data position and step from a complete checkpoint."""
        state = read_driver_state(directory)
        self.learner.call_all("load_checkpoint", str(directory / "learner"))
        self.step, self.stream.position = state.step, state.data_position
        for name, count in state.extra.get("faults", {}).items():  # counters stay cumulative over resumes
            self.faults[name] = max(self.faults.get(name, 0), int(count))
        self.sync_weights()

    def _recover_learner(self, error: Exception) -> None:
        """A learner rank died: rebuild the learner group and continue from the last checkpoint."""
        latest = resolve_resume("auto", self.cfg.checkpoint.dir)
        if latest is None or self.faults["learner_recoveries"] >= self.cfg.cluster.max_actor_restarts:
            raise error
        self.faults["learner_recoveries"] += 1
        warnings.warn(f"a learner rank failed ({type(error).__name__}); resuming from {latest}", stacklevel=2)
        self.tracker.log_metrics({"faults/learner_recoveries": self.faults["learner_recoveries"]}, self.step)
        self.groups.remove(self.learner)
        self.learner.shutdown()
        self._start_learner(role_specs(self.cfg)["learner"])
        self._restore(latest)

    def train_step_or_recover(self) -> dict[str, float]:
        """`train_step`, but a dead learner rank rolls back to the last checkpoint and trains on from there
        (engines retry inside `generate`); a second failure beyond `cluster.max_actor_restarts` raises."""
        while True:
            try:
                return self.train_step()
            except ray.exceptions.RayActorError as exc:
                self._recover_learner(exc)

    # -- phases ------------------------------------------------------------------------------------------
    def render(self, rows: list[PromptRow]) -> list[str]:
        m = self.cfg.model
        return [
            row.prompt
            if row.extra.get(RENDERED)
            else render_prompt(self.tokenizer, row.prompt, m.system_prompt, m.use_chat_template)
            for row in rows
        ]

    def generate(self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None):
        """`_generate_once`, retried after an engine died: Ray restarts it (cluster.max_actor_restarts),
        it comes back with the initial weights, so the learner's weights are synced again first."""
        for attempt in range(self.cfg.cluster.max_actor_restarts + 1):
            try:
                return self._generate_once(prompts, n, temperature, max_tokens, seed)
            except ray.exceptions.RayActorError as exc:
                if attempt == self.cfg.cluster.max_actor_restarts:
                    raise
                self.faults["rollout_restarts"] += 1
                self.tracker.log_metrics(
                    {"faults/rollout_restarts": self.faults["rollout_restarts"]}, self.step
                )
                warnings.warn(
                    f"a rollout engine died ({type(exc).__name__}); retrying the batch", stacklevel=2
                )
                self._wait_for_engines()
                if self.step > 0 or self.resume_from:
                    self.sync_weights()
        raise AssertionError("unreachable")

    def _wait_for_engines(self) -> None:
        deadline = time.monotonic() + self.cfg.cluster.call_timeout_s
        while time.monotonic() < deadline:
            try:
                self.rollout.call_all("ping")
                return
            except ray.exceptions.RayActorError:
                time.sleep(2.0)
        raise RemoteCallTimeout("rollout engines did not come back after a restart")

    def _generate_once(
        self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None
    ):
        """Split prompts over the engines (contiguous chunks), gather completions prompt-major."""
        engines = len(self.rollout)
        chunk = -(-len(prompts) // engines)
        refs = []
        for e in range(engines):
            part = prompts[e * chunk : (e + 1) * chunk]
            if part:
                refs.append(
                    self.rollout.actors[e].generate.remote(
                        part,
                        n,
                        temperature,
                        self.cfg.rollout.top_p,
                        max_tokens,
                        seed,
                        e * chunk,
                        self.think_budget,
                    )
                )
        return [c for out in self.rollout.get(refs, "generate") for c in out]

    def score(self, completions: list[Completion], rows: list[PromptRow]):
        return self.reward.get([self.score_async(completions, rows)], "score")[0]

    def score_async(self, completions: list[Completion], rows: list[PromptRow]) -> ray.ObjectRef:
        answers = [rows[c.prompt_index].answer for c in completions]
        return self.reward.actors[0].score.remote([c.text for c in completions], answers)

    def judge_rewards(self, rows: list[PromptRow], completions: list[Completion], n: int):
        """Rank each judged prompt's samples with the RRM (one batched call for the whole step)."""
        judged = prompts_to_judge([r.answer for r in rows], self.cfg.judge.reward_mix)
        items = [
            (query_text(rows[p].prompt), [c.text for c in completions[p * n : (p + 1) * n]]) for p in judged
        ]
        results = self.judge.rank(items) if items else []
        return dict(zip(judged, results, strict=True))

    def sync_weights(self) -> dict[str, int]:
        """Learner -> engines in size-bounded buckets; each engine verifies completeness."""
        exported = self.learner.call_all("export_weights", self.cfg.rollout.weight_bucket_mb)
        manifest, refs = exported[0]
        reports = self.rollout.call_all("update_weights", manifest, refs)
        del refs
        return reports[0]

    def filter_solved(self) -> int:
        """Drop training prompts the starting model already solves k out of k times (as the RRM paper
        does before judge training): they carry no GRPO signal. Returns how many were dropped."""
        r, k, rows = self.cfg.rollout, self.cfg.data.difficulty_filter_k, self.train_rows
        completions = self.generate(self.render(rows), k, r.temperature, r.max_new_tokens, None)
        correct = self.score(completions, rows).correct
        keep = [row for i, row in enumerate(rows) if not all(correct[i * k : (i + 1) * k])]
        dropped = len(rows) - len(keep)
        if not keep:
            raise ValueError(f"data.difficulty_filter_k={k}: the starting model solves every training prompt")
        self.train_rows = self.stream.rows = keep
        self.tracker.log_metrics({"data/difficulty_filter_dropped": dropped, "data/train_rows": len(keep)}, 0)
        print(f"difficulty filter: dropped {dropped} of {len(rows)} prompts solved {k}/{k} times")
        return dropped

    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out prompts, scored by the same rule."""
        if not self.eval_rows:
            return {}
        completions = self.generate(
            self.render(self.eval_rows), 1, 0.0, self.cfg.rollout.eval_max_new_tokens, seed=None
        )
        scored = self.score(completions, self.eval_rows)
        rewards = [r for r in scored.rewards if r is not None]
        if not rewards:
            return {}
        judging = self.cfg.data.format == "preference"
        breakdown = self._verdict_breakdown("eval", self.eval_rows, completions) if judging else {}
        return {
            "eval/reward_mean": sum(rewards) / len(rewards),
            **_accuracy("eval/accuracy", scored.correct),
            **breakdown,
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
        with timer.phase("reward"):  # the rule actor scores while the judge ranks
            rule_ref = self.score_async(completions, rows)
            judged = self.judge_rewards(rows, completions, n) if self.judge else {}
            scored = self.reward.get([rule_ref], "score")[0]
        j = cfg.judge
        rewards = torch.tensor(
            sample_rewards(
                scored.rewards,
                {p: r.rewards for p, r in judged.items()},
                n,
                j.reward_mix if self.judge else "weighted",
                j.rule_weight if self.judge else 1.0,
                j.judge_weight,
            ),
            dtype=torch.float32,
        )
        advantages = algo.group_advantages(rewards, n, scale_by_std=cfg.algorithm.scale_by_std)
        used = list(range(len(completions)))
        if cfg.algorithm.filter_flat_groups:
            used = algo.informative_sequences(rewards, n)
        if used:
            stats, sync, trained_tokens = self._update(
                [completions[i] for i in used], advantages[used], timer
            )
        else:  # every group flat: nothing to learn from this batch, and the weights stay as they are
            stats, sync, trained_tokens = {}, {"buckets": 0, "bytes": 0}, 0
        self.step += 1

        lengths = [len(c.response_ids) for c in completions]
        total = sum(timer.seconds.values())
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            **_accuracy("reward/accuracy", scored.correct),
            "reward/timeouts": scored.timeouts,
            "reward/errors": scored.errors,
            "response/length_mean": sum(lengths) / len(lengths),
            "response/clipped_fraction": sum(c.finish_reason == "length" for c in completions)
            / len(completions),
            "train/groups_trained": len(used) // n,
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"time/{k}_s": v for k, v in timer.seconds.items()},
            "time/step_s": total,
            "perf/generated_tokens_per_s": sum(lengths) / max(timer.seconds["generate"], 1e-9),
            "perf/trained_tokens_per_s": trained_tokens / max(timer.seconds.get("update", 0.0), 1e-9),
            "sync/buckets": sync["buckets"],
            "sync/mb": sync["bytes"] / 2**20,
        }
        if judged:
            metrics.update(self._judge_metrics(judged, scored.rewards, n))
        if cfg.data.format == "preference":
            metrics.update(self._verdict_breakdown("reward", rows, completions))
        self.tracker.log_metrics(metrics, step=self.step)
        self._log_samples(rows, completions, rewards.tolist())
        return metrics

    def _update(
        self, completions: list[Completion], advantages: torch.Tensor, timer: PhaseTimer
    ) -> tuple[dict[str, float], dict[str, int], int]:
        """Learner update on these sequences, then weights to the engines: (stats, sync report, tokens)."""
        cfg = self.cfg
        batch = build_batch(
            [c.prompt_ids for c in completions],
            [c.response_ids for c in completions],
            [c.response_logprobs for c in completions],
            advantages.tolist(),
            pad_id=self.tokenizer.pad_token_id or 0,
            response_masks=[c.response_mask for c in completions],
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
        return stats, sync, batch.num_tokens

    def _verdict_breakdown(self, prefix: str, rows: list[PromptRow], completions: list[Completion]):
        """Judge training: right, wrong and malformed verdicts counted apart (format vs judgment)."""
        mode = self.cfg.judge.mode
        results = [
            judge_reward(c.text, int(rows[c.prompt_index].answer), mode == "rrm", mode)  # type: ignore[arg-type]
            for c in completions
        ]
        total = max(len(results), 1)
        budget = {f"{prefix}/think_forced_close_rate": sum(c.forced_close for c in completions) / total}
        return {
            **(budget if self.think_budget else {}),
            f"{prefix}/verdict_correct_rate": sum(r.correct for r in results) / total,
            f"{prefix}/verdict_wrong_rate": sum(r.format_ok and not r.correct for r in results) / total,
            f"{prefix}/format_fail_rate": sum(not r.format_ok for r in results) / total,
            # position bias: labels are balanced, so an unbiased judge names Assistant 1 about half the time
            f"{prefix}/verdict_first_rate": sum(r.format_ok and r.verdict == 1 for r in results)
            / max(sum(r.format_ok for r in results), 1),
        }

    def _judge_metrics(self, judged: dict, rule_rewards: list[float | None], n: int) -> dict[str, float]:
        """Judge counters, agreement with the verifier, and sampled traces/brackets as MLflow tables."""
        stats = self.judge.stats(reset=True)
        out = {f"judge/{k}": float(v) for k, v in stats.items()}
        verifiable = {p: r for p, r in judged.items() if rule_rewards[p * n] is not None}
        agreement = verifier_agreement(
            {p: [(m.a, m.b, m.outcome) for m in r.comparisons] for p, r in verifiable.items()},
            {p: r.winner for p, r in verifiable.items()},
            [0.0 if r is None else r for r in rule_rewards],
            n,
        )
        self.agreement.add(agreement)
        for name, value in (
            ("judge/verifier_pair_agreement", agreement.pair_rate),
            ("judge/verifier_pick_agreement", agreement.pick_rate),
        ):
            if value is not None:
                out[name] = value
        limit, traces, brackets = self.cfg.trainer.log_samples, [], []
        for p, result in list(judged.items())[: max(1, limit)]:
            traces += [
                {"step": self.step, "prompt": p, **{k: str(v)[:2000] for k, v in t.items()}}
                for t in result.traces[:limit]
            ]
            brackets.append(
                {
                    "step": self.step,
                    "prompt": p,
                    "method": result.method,
                    "winner": result.winner,
                    "ranking": str(result.ranking),
                    "rewards": str([round(x, 3) for x in result.rewards]),
                    "bracket": str(result.bracket or result.ratings),
                }
            )
        self.tracker.log_table(traces, f"judge_traces_step{self.step:05d}")
        self.tracker.log_table(brackets, f"judge_brackets_step{self.step:05d}")
        return out

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

    def save_final(self) -> str | None:
        """The final policy in HF format (and its config), its path tagged on the MLflow run."""
        if not self.cfg.checkpoint.save_final:
            return None
        final_dir = str(Path(self.cfg.checkpoint.dir, "final").resolve())
        Path(final_dir).parent.mkdir(parents=True, exist_ok=True)
        self.learner.call_all("save_hf", final_dir, self.model_path)
        Path(final_dir, "rrm_ray_config.yaml").write_text(to_yaml(self.cfg))
        self.tracker.set_tags({"rrm_ray.final_policy": final_dir})
        return final_dir

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate, train `total_steps`, evaluate again, save the policy; returns a summary."""
        cfg = self.cfg
        started = time.perf_counter()
        if self.data_counts:
            self.tracker.log_metrics({f"data/{k}": v for k, v in self.data_counts.items()}, step=0)
        if cfg.data.difficulty_filter_k and self.step == 0:
            self.filter_solved()
        before = self.evaluate()
        self.tracker.log_metrics({k.replace("eval/", "eval_before/"): v for k, v in before.items()}, step=0)
        if before:
            self.tracker.log_metrics(before, step=0)
        printer = StepPrinter(cfg.trainer.total_steps, before)
        history = []
        with printer:
            while self.step < cfg.trainer.total_steps:
                metrics = self.train_step_or_recover()
                history.append(metrics)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
                last = self.step == cfg.trainer.total_steps  # the final evaluation below covers it
                if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0 and not last:
                    ev = self.evaluate()
                    self.tracker.log_metrics(ev, step=self.step)
                    metrics.update(ev)
                printer.update(self.step, metrics)
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every:
            self.save_checkpoint()  # the last steps, too
        after = self.evaluate()
        if after:
            self.tracker.log_metrics(after, step=self.step)
            self.tracker.log_metrics(
                {k.replace("eval/", "eval_after/"): v for k, v in after.items()}, self.step
            )
        final_dir = self.save_final()
        return {
            "before": before,
            "after": after,
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "final_policy": final_dir,
            "history": history,
            "run_id": self.tracker.run_id,
            "placement": self.placement,
            "judge_agreement": dataclasses.asdict(self.agreement) if self.judge else None,
            "faults": dict(self.faults),
        }


def _accuracy(name: str, correct: list[bool | None]) -> dict[str, float]:
    """Fraction correct among items that have a reference answer (none: no metric)."""
    known = [c for c in correct if c is not None]
    return {name: sum(known) / len(known)} if known else {}
