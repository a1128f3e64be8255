"""DPO with preference labels from the RRM judge.

pairs      = two policy samples per prompt (rollout client)
verdicts   = judge.compare(pairs, votes)            # both orders, majority; undecided -> dropped
ref_logps  = learner.sequence_logps(pairs)          # once, from the starting policy (the reference)
for epoch, batch:  learner.dpo_step(batch, ref_logps, lr)   # sigmoid DPO loss, beta; lr: dpo_lrs
roles.sync_weights() -> rollout engines              # so the held-out evaluation sees the new policy
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rrm_ray import algo
from rrm_ray.batch import TrainBatch, build_batch
from rrm_ray.checkpoint import new_run_id, run_dir
from rrm_ray.clients.cluster import connect_ray
from rrm_ray.clients.roles import Roles
from rrm_ray.config import ConfigError, JobConfig, LearnerConfig
from rrm_ray.data.tasks import load_task_rows
from rrm_ray.jobs.common import (
    PhaseTimer,
    RoleJob,
    evaluate_policy,
    log_figures,
    make_tracker,
    render,
    save_final,
    think_budget,
)
from rrm_ray.judge.feedback import query_text
from rrm_ray.judge.records import JudgePair
from rrm_ray.models import load_tokenizer, resolve_model_path
from rrm_ray.progress import StepPrinter
from rrm_ray.tracking import Tracker


def interleaved(chosen: list[Any], rejected: list[Any]) -> list[Any]:
    """[c0, r0, c1, r1, ...]: the learner's DPO layout."""
    return [x for pair in zip(chosen, rejected, strict=True) for x in pair]


def shard_pairs(batch: TrainBatch, ranks: int) -> list[TrainBatch]:
    """Contiguous shards of whole (chosen, rejected) pairs, one per rank."""
    pairs = len(batch) // 2
    if pairs % ranks:
        raise ValueError(f"{pairs} pairs do not split evenly over {ranks} learner ranks")
    size = 2 * (pairs // ranks)
    return [batch.select(slice(r * size, (r + 1) * size)) for r in range(ranks)]


def dpo_lrs(learner: LearnerConfig, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate of every DPO optimizer step (one per `dpo_step`), on `learner.lr_schedule`.

    The step count is known only once the judge has decided the pairs, so the warmup is checked here.
    """
    total = epochs * steps_per_epoch
    if learner.warmup_steps > total:
        raise ConfigError(
            f"learner.warmup_steps: {learner.warmup_steps} exceeds this DPO run's {total} optimizer steps "
            f"(dpo.epochs={epochs} x {steps_per_epoch} steps per epoch over the decided pairs); lower it"
        )
    return [
        algo.lr_at(k, learner.lr, learner.warmup_steps, total, learner.lr_schedule, learner.min_lr_ratio)
        for k in range(total)
    ]


class DPOJob(RoleJob):
    """DPO on RRM-labelled pairs, composed of the same role clients as GRPO (`rrm_ray.clients.roles.Roles`):
    rollout samples and evaluates, the judge labels, the learner trains, the reward actor scores the
    held-out prompts. Use as a context manager."""

    job_kind = "dpo"  # the `rrm_ray.job` tag and the first word of the default run name

    def __init__(self, cfg: JobConfig, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.model_path = resolve_model_path(cfg.model.path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.train_rows, self.eval_rows, _ = load_task_rows(cfg, self.tokenizer)
        self.step = 0
        self.run_id = new_run_id(self.job_kind)  # DPO writes no checkpoints: every run is new
        self.run_dir = run_dir(cfg.checkpoint.dir, self.run_id)
        self.tracker = tracker or make_tracker(
            cfg, self.job_kind, self.model_path, None, self.run_id, self.run_dir
        )
        self.roles = Roles(
            cfg,
            self.model_path,
            self.tokenizer.pad_token_id or 0,
            think_budget(cfg),
            weights_trained=lambda: self.step > 0,
            on_fault=lambda counter, value: self.tracker.log_metrics({f"faults/{counter}": value}, self.step),
        )

    def start(self) -> None:
        connect_ray(self.cfg)
        self.roles.start()

    def evaluate(self) -> dict[str, float]:
        return evaluate_policy(
            self.cfg, self.roles, self.eval_rows, render(self.cfg, self.tokenizer, self.eval_rows)
        )

    def collect_pairs(self) -> tuple[TrainBatch, dict[str, float], list[dict[str, Any]]]:
        """Sample two responses per prompt, let the RRM choose, keep the decided pairs."""
        cfg, roles = self.cfg, self.roles
        rows = self.train_rows[: cfg.dpo.max_prompts]
        completions = roles.rollout.generate(  # seeded like a GRPO step's samples (rrm_ray.seeds)
            render(cfg, self.tokenizer, rows),
            2,
            cfg.rollout.temperature,
            cfg.rollout.max_new_tokens,
            cfg.trainer.seed,
        )
        pairs = [
            JudgePair(query_text(rows[i].prompt), completions[2 * i].text, completions[2 * i + 1].text)
            for i in range(len(rows))
        ]
        judgments = roles.judge.compare(pairs, votes=cfg.judge.votes)
        chosen, rejected, table = [], [], []
        for i, j in enumerate(judgments):
            a, b = completions[2 * i], completions[2 * i + 1]
            if j.winner is None or not j.decided or a.response_ids == b.response_ids:
                continue
            win, lose = (a, b) if j.winner == "a" else (b, a)
            chosen.append(win)
            rejected.append(lose)
            if len(table) < cfg.trainer.log_samples:
                table.append(
                    {
                        "prompt": pairs[i].query,
                        "chosen": win.text,
                        "rejected": lose.text,
                        "votes": f"{j.wins_a}-{j.wins_b}",
                    }
                )
        ranks = len(roles.learner)
        keep = len(chosen) // ranks * ranks  # every rank trains on the same number of whole pairs
        stats = {
            "dpo/pairs_judged": len(pairs),
            "dpo/pairs_undecided": len(pairs) - len(chosen),
            "dpo/pairs_used": keep,
        }
        stats.update({f"judge/{k}": float(v) for k, v in roles.judge.stats(reset=True).items()})
        if keep == 0:
            raise RuntimeError(
                f"the RRM decided {len(chosen)} of {len(pairs)} pairs: too few for {ranks} learner ranks"
            )
        seqs = interleaved(chosen[:keep], rejected[:keep])
        batch = build_batch(
            [c.prompt_ids for c in seqs],
            [c.response_ids for c in seqs],
            [c.response_logprobs for c in seqs],
            [0.0] * len(seqs),
            pad_id=self.tokenizer.pad_token_id or 0,
        )
        return batch, stats, table

    def run(self) -> dict[str, Any]:
        cfg, d, learner = self.cfg, self.cfg.dpo, self.roles.learner
        started = time.perf_counter()
        before = self.evaluate()
        self.tracker.log_metrics({k.replace("eval/", "eval_before/"): v for k, v in before.items()}, step=0)
        timer = PhaseTimer()
        with timer.phase("generate_and_judge"):
            batch, stats, table = self.collect_pairs()
        self.tracker.log_metrics(stats, step=0)
        self.tracker.log_table(table, "dpo_pairs")
        ranks = len(learner)
        with timer.phase("reference_logps"):
            ref = learner.sequence_logps(shard_pairs(batch, ranks))
        per_step = min(d.pairs_per_step, len(batch) // 2)  # both multiples of the rank count
        steps_per_epoch = (len(batch) // 2) // per_step
        total = d.epochs * steps_per_epoch
        lrs = dpo_lrs(cfg.learner, d.epochs, steps_per_epoch)
        history = []
        with StepPrinter(total, before) as printer:
            for epoch in range(d.epochs):
                for s in range(steps_per_epoch):
                    if self.stop_requested():  # SIGTERM / SIGINT: DPO keeps no checkpoint to resume
                        assert self.stop is not None
                        self.stop.reached_boundary()
                        self.tracker.set_tags({"rrm_ray.stopped_by": self.stop.name})
                        return {
                            "before": before,
                            "after": {},
                            "steps": self.step,
                            "wall_s": time.perf_counter() - started,
                            "run_id": self.tracker.run_id,
                            "history": history,
                            "pairs": stats,
                            "final_policy": None,
                            "stopped": self.stop.name,
                        }
                    rows = slice(2 * s * per_step, 2 * (s + 1) * per_step)
                    part, part_ref = batch.select(rows), ref[rows]
                    shards = shard_pairs(part, ranks)
                    refs = list(torch.split(part_ref, [len(x) for x in shards]))
                    lr = lrs[epoch * steps_per_epoch + s]
                    step_timer = PhaseTimer()
                    with step_timer.phase("update"):
                        out = learner.dpo_step(shards, refs, d.beta, d.label_smoothing, lr)
                    self.step += 1
                    metrics = {f"dpo/{k}": v for k, v in out.items()}
                    metrics.update({f"time/{k}_s": v for k, v in step_timer.seconds.items()}, epoch=epoch)
                    self.tracker.log_metrics(metrics, step=self.step)
                    history.append(metrics)
                    printer.update(
                        self.step,
                        {
                            "reward/mean": metrics["dpo/reward_margin"],
                            "reward/accuracy": metrics["dpo/accuracy"],
                            "train/grad_norm": metrics["dpo/grad_norm"],
                            "time/step_s": step_timer.seconds["update"],
                        },
                    )
        with timer.phase("weight_sync"):
            self.roles.sync_weights()
        after = self.evaluate()
        self.tracker.log_metrics({k.replace("eval/", "eval_after/"): v for k, v in after.items()}, self.step)
        self.tracker.log_metrics({f"time/{k}_s": v for k, v in timer.seconds.items()}, self.step)
        final_dir = save_final(cfg, learner, self.tracker, self.step, self.run_dir)
        log_figures(self.tracker, self.run_dir)
        return {
            "before": before,
            "after": after,
            "steps": self.step,
            "wall_s": time.perf_counter() - started,
            "run_id": self.tracker.run_id,
            "history": history,
            "pairs": stats,
            "final_policy": final_dir,
        }
