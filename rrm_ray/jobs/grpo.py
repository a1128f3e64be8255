"""The driver: reserve placement groups, start the role clients, run GRPO, log to MLflow.

    for step in range(total_steps):
        batch     = next generated batch  (rollout.generate: vLLM engines;  reward.score_step: rule
                                           actor + RRM judge -> per-sample rewards)
        adv       = group_advantages(batch rewards)            # pure math
        learner.start_update(batch, adv)                       # FSDP2 ranks, Ray refs: returns at once
        (max_staleness >= 1: generate and score the next batches meanwhile, rrm_ray.pipeline)
        learner.finish_update()
        rollout.sync_weights()  <- learner                     # vLLM weight transfer, checked complete

Each role is a typed client (rrm_ray.clients) started by `rrm_ray.clients.roles.Roles`; they retry their own
calls after an actor restart. The job keeps set-up, checkpoints and recovery of the learner,
evaluation and the loop. Each phase has a named timer whose seconds go to MLflow with the step.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrm_ray import algo
from rrm_ray.checkpoint import (
    DriverState,
    RunRecord,
    begin,
    commit,
    complete_checkpoints,
    latest_of_run,
    new_run_id,
    prune,
    read_driver_state,
    resolve_resume,
    run_dir,
    step_of,
    write_driver_state,
)
from rrm_ray.clients.cluster import connect_ray
from rrm_ray.clients.downstream import downstream_metrics
from rrm_ray.clients.group import ActorDied, RemoteCallTimeout
from rrm_ray.clients.roles import Roles
from rrm_ray.clients.streamed_batch import generate_and_score
from rrm_ray.config import JobConfig, to_yaml
from rrm_ray.data.prompts import PromptRow
from rrm_ray.data.tasks import load_task_rows
from rrm_ray.jobs.common import (
    PhaseTimer,
    PromptStream,
    RoleJob,
    evaluate_policy,
    log_figures,
    make_tracker,
    render,
    save_final,
    think_budget,
)
from rrm_ray.models import load_tokenizer, resolve_model_path
from rrm_ray.pipeline import Schedule, Scheduled
from rrm_ray.progress import StepPrinter
from rrm_ray.recovery import LEARNER_COUNTER, RoleFailure
from rrm_ray.step_metrics import accuracy, samples_table, verdict_breakdown
from rrm_ray.tracking import Tracker
from rrm_ray.types import Completion, StepRewards
from rrm_ray.validation import streaming_enabled


@dataclass
class Batch:
    """One training step's samples with their rewards, as generated and scored."""

    rows: list[PromptRow]
    completions: list[Completion]
    rewards: StepRewards
    seconds: dict[str, float]  # its generate and reward phases
    started: float  # perf_counter when its generation started, and when its scoring ended
    ready: float


class GRPOJob(RoleJob):
    """Owns the roles of a GRPO run and runs the loop; use as a context manager."""

    job_kind = "grpo"  # the `rrm_ray.job` tag and the first word of the default run name

    def __init__(self, cfg: JobConfig, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.model_path = resolve_model_path(cfg.model.path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.train_rows, self.eval_rows, self.data_counts = load_task_rows(cfg, self.tokenizer)
        # Order-balanced judge training: a group is one pair in both orders, half the samples each.
        self.orders = 2 if cfg.data.format == "preference" and cfg.data.order_balanced else 1
        self.stream = PromptStream(
            self.train_rows, cfg.data.prompts_per_step, cfg.data.shuffle, cfg.trainer.seed, self.orders
        )
        self.step = 0
        self.resume_from = resolve_resume(cfg.resume, cfg.checkpoint.dir)
        self.resumed_state = (
            read_driver_state(self.resume_from, restore_rng=False) if self.resume_from else None
        )
        # The run: a resumed one continues its own (folder, MLflow run); a new one starts a series of its
        # own, beside any other run's in checkpoint.dir (rrm_ray.checkpoint).
        state = self.resumed_state
        self.run_id = (state.run_id if state else None) or new_run_id(self.job_kind)
        self.run_dir = run_dir(cfg.checkpoint.dir, self.run_id)
        record = RunRecord.read(self.run_dir)  # the MLflow run may have been created after the checkpoint
        mlflow_run_id = (state.mlflow_run_id if state else None) or (record.mlflow_run_id if record else None)
        self.tracker = tracker or make_tracker(
            cfg, self.job_kind, self.model_path, mlflow_run_id, self.run_id, self.run_dir
        )
        self.roles = Roles(
            cfg,
            self.model_path,
            self.tokenizer.pad_token_id or 0,
            think_budget(cfg),
            weights_trained=lambda: self.step > 0 or self.resume_from is not None,
            on_fault=lambda counter, value: self.tracker.log_metrics({f"faults/{counter}": value}, self.step),
        )
        self.schedule: Schedule[Batch] = Schedule(cfg.trainer.max_staleness)  # batches generated ahead
        self.streaming = streaming_enabled(cfg)  # reward.streaming: groups scored as they are generated
        self.placement: list[dict[str, Any]] = []
        self.before: dict[str, float] = {}  # the held-out baseline, kept across resumes
        self.on_phase: Callable[[str], None] | None = None

    @property
    def faults(self) -> dict[str, int]:
        return self.roles.restarts.faults

    # -- set-up ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to Ray, check the job fits, reserve every placement group, start the roles. Roles
        that share bundles (`cluster.colocate`) take turns on them: `self.share` puts engines to sleep."""
        connect_ray(self.cfg)
        self.roles.start()
        self.placement = self.roles.placement()
        if self.resume_from:
            self._restore(self.resume_from)

    # -- checkpoints and recovery --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Learner shards + driver state into `step_N.partial`, then marked complete and renamed. Batches
        generated ahead (max_staleness >= 1) are not saved: the data position is the oldest one's, so a
        resumed run generates them again, with the checkpoint's weights."""
        ck = self.cfg.checkpoint
        partial = begin(self.run_dir, self.step)
        self.roles.learner.save_checkpoint(str(partial / "learner"))
        state = DriverState(
            self.step,
            self.schedule.resume_position(self.stream.position),
            self.tracker.run_id,
            {"faults": dict(self.faults), "eval_before": dict(self.before)},
            self.run_id,
        )
        write_driver_state(partial, state, to_yaml(self.cfg))  # secrets redacted
        manifest = {"step": self.step, "backend": self.cfg.learner.backend}
        final = commit(partial, manifest, self.run_id, ck.checksums)
        prune(self.run_dir, ck.keep_last, self.run_id)
        self.tracker.set_tags({"rrm_ray.last_checkpoint": str(final)})
        return final

    def _restore(self, directory: Path) -> None:
        """Learner shards, driver RNGs, data position and step from a complete checkpoint; batches
        generated ahead are dropped (the restored position generates them again)."""
        state = read_driver_state(directory)
        self.schedule.drop()
        self.roles.learner.load_checkpoint(str(directory / "learner"))
        self.step, self.stream.position = state.step, state.data_position
        for name, count in state.extra.get("faults", {}).items():  # counters stay cumulative over resumes
            self.faults[name] = max(self.faults.get(name, 0), int(count))
        self.roles.sync_weights()

    def _recover_learner(self, error: ActorDied | RemoteCallTimeout) -> None:
        """A learner rank died, or hung (a learner call past cluster.call_timeout_s): rebuild the learner
        group (its old ranks killed) and continue from this run's last intact checkpoint (never another
        run's in the same checkpoint.dir)."""
        latest = latest_of_run(self.cfg.checkpoint.dir, self.run_id)
        restarts = self.roles.restarts
        hung = isinstance(error, RemoteCallTimeout)
        death = ActorDied(None, False, str(error), "hang") if hung else error
        assert isinstance(death, ActorDied)
        decision = restarts.decide("learner", death, has_checkpoint=latest is not None, hung=hung)
        if decision.action == "fail":
            raise RoleFailure("learner", f"{decision.message}\n  Ray: {death.detail[:500]}") from error
        restarts.count(decision.counter)
        if hung:  # a rebuild either way: the learner's budget counts it
            restarts.count(LEARNER_COUNTER)
        warnings.warn(f"a learner rank failed ({death.kind}); resuming from {latest}", stacklevel=2)
        self.roles.rebuild_learner()  # on the same placement group (and bundles) as before
        assert latest is not None
        self._restore(latest)

    def train_step_or_recover(self) -> dict[str, float]:
        """`train_step`, but a dead or hung learner rank rolls back to the last checkpoint and trains on
        from there; rollout, judge and reward actors recover inside their own calls
        (`rrm_ray.clients.restarts`), never touching the learner. A failure beyond
        `cluster.max_actor_restarts` raises `RoleFailure`."""
        while True:
            try:
                return self.train_step()
            except ActorDied as exc:
                role = self.roles.restarts.role_of(exc)
                if role != "learner":  # the other roles retry inside their calls: this one escaped them
                    raise RoleFailure(
                        role, f"a {role or 'unknown'} actor died outside a retried call: {exc}"
                    ) from exc
                self._recover_learner(exc)
            except RemoteCallTimeout as exc:
                if exc.role != "learner":
                    raise
                self._recover_learner(exc)

    # -- phases ------------------------------------------------------------------------------------------
    def render(self, rows: list[PromptRow]) -> list[str]:
        return render(self.cfg, self.tokenizer, rows)

    def filter_solved(self) -> int:
        """Drop training prompts the starting model already solves k out of k times (as the RRM paper
        does before judge training): they carry no GRPO signal. Returns how many were dropped."""
        r, k, rows = self.cfg.rollout, self.cfg.data.difficulty_filter_k, self.train_rows
        completions = self.roles.rollout.generate(self.render(rows), k, r.temperature, r.max_new_tokens, None)
        correct = self.roles.reward.score(completions, rows).correct
        u = self.orders  # a pair shown in both orders is kept or dropped whole
        unit_solved = [all(correct[j * u * k : (j + 1) * u * k]) for j in range(len(rows) // u)]
        keep = [row for i, row in enumerate(rows) if not unit_solved[i // u]]
        dropped = len(rows) - len(keep)
        if not keep:
            raise ValueError(f"data.difficulty_filter_k={k}: the starting model solves every training prompt")
        self.train_rows = self.stream.rows = keep
        self.tracker.log_metrics({"data/difficulty_filter_dropped": dropped, "data/train_rows": len(keep)}, 0)
        print(f"difficulty filter: dropped {dropped} of {len(rows)} prompts solved {k}/{k} times")
        return dropped

    def evaluate(self) -> dict[str, float]:
        return evaluate_policy(self.cfg, self.roles, self.eval_rows, self.render(self.eval_rows))

    def produce(self, step: int) -> Scheduled[Batch]:
        """Generate and score the batch of 0-based training step `step` (its prompts come next in the
        stream; its sampling seed follows from `step`, so a resumed run draws the same streams)."""
        cfg, timer, rollout = self.cfg, PhaseTimer(self.on_phase), self.roles.rollout
        n = cfg.rollout.n_samples  # the group: one prompt's samples, or one pair's in both orders
        position, started = self.stream.position, time.perf_counter()
        rows = self.stream.next()
        seed = cfg.trainer.seed * 1_000_003 + step * 1009
        r = cfg.rollout
        args = (self.render(rows), n // self.orders, r.temperature, r.max_new_tokens, seed)
        if self.streaming:  # each group is scored and judged as soon as it is generated
            timer.show("generate+reward")
            streamed = generate_and_score(rollout, self.roles.reward, rows, *args, step)
            completions, rewards = streamed.completions, streamed.rewards
            timer.seconds.update(generate=streamed.generate_s, reward=streamed.reward_s)
        else:
            with timer.phase("generate"):
                completions = rollout.generate(*args)
            with timer.phase("reward"):  # the rule actor scores while the judge ranks
                rewards = self.roles.reward.score_step(rows, completions, n, step)
        version = rollout.version  # read after the call: an engine restarted inside it was re-synced
        batch = Batch(rows, completions, rewards, timer.seconds, started, time.perf_counter())
        return Scheduled(step, position, version, batch)

    def train_step(self) -> dict[str, float]:
        """One GRPO step; returns the step's metrics (also logged). Its batch was generated now, or
        while the previous update ran (`trainer.max_staleness` >= 1: the order is rrm_ray.pipeline's)."""
        cfg, timer, wall = self.cfg, PhaseTimer(self.on_phase), time.perf_counter()
        rollout, learner, n = self.roles.rollout, self.roles.learner, cfg.rollout.n_samples
        if not len(self.schedule):  # always when synchronous; else the first step, or after a restore
            self.schedule.push(self.produce(self.step))
        item, staleness = self.schedule.pop(learner.version)
        batch, rewards = item.batch, item.batch.rewards.per_sample
        learner_free = max(learner.idle_since or batch.started, batch.started)
        advantages = algo.group_advantages(
            rewards, n, scale_by_std=cfg.algorithm.scale_by_std, subgroups=self.orders
        )
        used = list(range(len(batch.completions)))
        if cfg.algorithm.filter_flat_groups:
            used = algo.informative_sequences(rewards, n, subgroups=self.orders)
        if used:  # else every group is flat: nothing to learn from this batch, and the weights stay
            timer.show("update")
            learner.start_update([batch.completions[i] for i in used], advantages[used], self.step)
        # max_staleness >= 1: the next batches are generated and scored while the learner updates
        upcoming, total = self.schedule.next_step(self.step), cfg.trainer.total_steps
        count = self.schedule.to_produce(learner.version + bool(used), rollout.version, upcoming, total)
        for _ in range(count):
            self.schedule.push(self.produce(self.schedule.next_step(self.step)))
        stats, seconds, trained_tokens = learner.finish_update() if used else ({}, {}, 0)
        sync = {"buckets": 0, "bytes": 0}
        if rollout.version < learner.version:  # new weights to the engines, between batches
            with timer.phase("weight_sync"):
                sync = rollout.sync_weights(retried=True)
        self.step += 1
        seconds = {**batch.seconds, **seconds, **timer.seconds}
        if cfg.trainer.max_staleness:  # phases overlap: the wall clock, and the learner's idle time
            seconds["generate_wait"] = max(0.0, batch.ready - learner_free)
        metrics = self._step_metrics(batch, used, stats, seconds, sync, trained_tokens, staleness, wall)
        for name, table in batch.rewards.tables.items():
            self.tracker.log_table(table, name)
        self.tracker.log_metrics(metrics, step=self.step)
        if cfg.trainer.log_samples > 0:
            table = samples_table(
                self.step, batch.rows, batch.completions, rewards.tolist(), cfg.trainer.log_samples
            )
            self.tracker.log_table(table, f"samples_step{self.step:05d}")
        return metrics

    def _step_metrics(
        self,
        batch: Batch,
        used: list[int],
        stats: dict[str, float],
        seconds: dict[str, float],
        sync: dict[str, int],
        trained_tokens: int,
        staleness: int,
        started: float,
    ) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.rollout.n_samples
        rewards, scored, completions = batch.rewards.per_sample, batch.rewards.rule, batch.completions
        lengths = [len(c.response_ids) for c in completions]
        synchronous = not cfg.trainer.max_staleness
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            **accuracy("reward/accuracy", scored.correct),
            "reward/timeouts": scored.timeouts,
            "reward/errors": scored.errors,
            "response/length_mean": sum(lengths) / len(lengths),
            "response/clipped_fraction": sum(c.finish_reason == "length" for c in completions)
            / len(completions),
            "train/groups_trained": len(used) // n,
            "train/staleness": float(staleness),  # policy versions between generation and this update
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"time/{k}_s": v for k, v in seconds.items()},
            # synchronous: the phases add up to the step; overlapped, the step's wall clock
            "time/step_s": sum(seconds.values()) if synchronous else time.perf_counter() - started,
            "perf/generated_tokens_per_s": sum(lengths) / max(seconds["generate"], 1e-9),
            "perf/trained_tokens_per_s": trained_tokens / max(seconds.get("update", 0.0), 1e-9),
            "sync/buckets": sync["buckets"],
            "sync/mb": sync["bytes"] / 2**20,
            **batch.rewards.judge_metrics,
        }
        if cfg.data.format == "preference":
            breakdown = verdict_breakdown(
                "reward", batch.rows, completions, cfg.judge.mode, think_budget(cfg), cfg.judge.verdict_rule
            )
            metrics.update(breakdown)
        return metrics

    def save_final(self) -> str | None:
        return save_final(self.cfg, self.roles.learner, self.tracker, self.step, self.run_dir)

    def _stopped(self, started: float, before: dict[str, float], history: list) -> dict[str, Any]:
        """Stopped by a signal at a step boundary: this step's checkpoint (unless one was just written,
        or no step was trained), so `resume=auto` continues exactly here; no final evaluation."""
        assert self.stop is not None
        self.stop.reached_boundary()
        own = complete_checkpoints(self.run_dir, self.run_id)
        latest = own[-1] if own else None
        if self.step > 0 and (latest is None or step_of(latest) != self.step):
            latest = self.save_checkpoint()
        self.tracker.set_tags({"rrm_ray.stopped_by": self.stop.name})
        return {
            "before": before,
            "after": {},
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "final_policy": None,
            "history": history,
            "run_id": self.tracker.run_id,
            "stopped": self.stop.name,
            "checkpoint": str(latest) if latest else None,
            "faults": dict(self.faults),
        }

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate, train `total_steps`, evaluate again, save the policy; returns a summary."""
        cfg = self.cfg
        started = time.perf_counter()
        if self.data_counts:
            self.tracker.log_metrics({f"data/{k}": v for k, v in self.data_counts.items()}, step=0)
        if cfg.data.difficulty_filter_k and self.step == 0:
            self.filter_solved()
        downstream: dict[str, float] = {}  # trainer.downstream_eval: lm-eval before and after training
        if self.resumed_state is None:
            downstream = downstream_metrics(cfg, self.model_path, "before")
            self.tracker.log_metrics(downstream, step=0)
            self.before = before = self.evaluate()
            self.tracker.log_metrics(
                {k.replace("eval/", "eval_before/"): v for k, v in before.items()}, step=0
            )
            if before:
                self.tracker.log_metrics(before, step=0)
        else:  # the baseline is the original run's, already logged at step 0: never re-evaluated
            self.before = before = dict(self.resumed_state.extra.get("eval_before", {}))
            print(f"resumed at step {self.step} from {self.resume_from}")
        printer = StepPrinter(cfg.trainer.total_steps, before, resumed_at=self.step)
        self.on_phase = printer.phase
        history = []
        limit_s = None if cfg.trainer.time_limit_min is None else cfg.trainer.time_limit_min * 60
        training_started = time.perf_counter()
        with printer:
            while self.step < cfg.trainer.total_steps:
                if self.stop_requested():  # SIGTERM / SIGINT: a checkpoint, and the run ends KILLED
                    return self._stopped(started, before, history)
                if limit_s is not None and time.perf_counter() - training_started >= limit_s:
                    print(f"trainer.time_limit_min reached: stopped after step {self.step}")
                    self.tracker.set_tags({"rrm_ray.stopped_by": "trainer.time_limit_min"})
                    break
                metrics = self.train_step_or_recover()
                history.append(metrics)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
                last = self.step == cfg.trainer.total_steps  # the final evaluation below covers it
                if limit_s is not None:  # so does the limit's
                    last = last or time.perf_counter() - training_started >= limit_s
                if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0 and not last:
                    ev = self.evaluate()
                    self.tracker.log_metrics(ev, step=self.step)
                    metrics.update(ev)
                printer.update(self.step, metrics)
            if self.stop_requested():  # a signal during the last step: stop, as at any step boundary
                return self._stopped(started, before, history)
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every:
            self.save_checkpoint()  # the last steps, too
        after = self.evaluate()
        if after:
            self.tracker.log_metrics(after, step=self.step)
            self.tracker.log_metrics(
                {k.replace("eval/", "eval_after/"): v for k, v in after.items()}, self.step
            )
        final_dir = self.save_final()
        if final_dir and cfg.trainer.downstream_eval.enabled:
            after_downstream = downstream_metrics(cfg, final_dir, "after")
            self.tracker.log_metrics(after_downstream, step=self.step)
            downstream |= after_downstream
        log_figures(self.tracker, self.run_dir)
        return {
            "before": before,
            "after": after,
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "final_policy": final_dir,
            "history": history,
            "run_id": self.tracker.run_id,
            "placement": self.placement,
            "judge_agreement": dataclasses.asdict(self.roles.reward.agreement) if self.roles.judge else None,
            "faults": dict(self.faults),
            "downstream": downstream,
            "staleness": {  # policy versions between a batch's generation and its update
                "mean": sum(m["train/staleness"] for m in history) / max(len(history), 1),
                "max": max((m["train/staleness"] for m in history), default=0.0),
            },
        }
