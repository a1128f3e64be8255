"""What the GRPO and DPO jobs share: phase timers, the prompt stream, the tracker, held-out evaluation,
the final policy and the figures, and the context-manager base that closes a job's roles and run."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from rrm_ray.checkpoint import RunRecord
from rrm_ray.clients.cluster import ray_submission_id
from rrm_ray.clients.learner import LearnerClient
from rrm_ray.clients.roles import Roles
from rrm_ray.config import JobConfig, to_flat_dict, to_yaml
from rrm_ray.data.prompts import PromptRow, render_prompt
from rrm_ray.data.tasks import RENDERED
from rrm_ray.step_metrics import accuracy, verdict_breakdown
from rrm_ray.stopping import GracefulStop
from rrm_ray.tracking import BufferedTracker, NullTracker, Tracker, open_tracker


@dataclass
class PhaseTimer:
    """Seconds per named phase within one step."""

    on_phase: Callable[[str], None] | None = None  # told each phase's name as it starts (the console)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.show(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def show(self, name: str) -> None:
        """Name the phase on the console without timing it here (the learner times its own)."""
        if self.on_phase is not None:
            self.on_phase(name)


class PromptStream:
    """Epoch-wise shuffled prompts; `position` makes the stream resumable. `unit` consecutive rows stay
    together (order-balanced judge training: a pair's two presentation orders form one GRPO group)."""

    def __init__(self, rows: list[PromptRow], batch: int, shuffle: bool, seed: int, unit: int = 1) -> None:
        if len(rows) % unit:
            raise ValueError(f"PromptStream: {len(rows)} rows do not split into units of {unit}")
        self.rows, self.batch, self.shuffle, self.seed, self.unit = rows, batch, shuffle, seed, unit
        self.position = 0  # units (prompts, or pairs in both orders) consumed since the start

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows) // self.unit))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def next(self) -> list[PromptRow]:
        out = []
        for _ in range(self.batch):
            epoch, offset = divmod(self.position, len(self.rows) // self.unit)
            start = self._order(epoch)[offset] * self.unit
            out.extend(self.rows[start : start + self.unit])
            self.position += 1
        return out


# -- what GRPO and DPO jobs share -----------------------------------------------------------------------
def make_tracker(
    cfg: JobConfig, job_kind: str, model_path: str, mlflow_run_id: str | None, run_id: str, folder: Path
) -> Tracker:
    """A training job's MLflow run, buffered through outages in the run folder's journal (an earlier
    attempt's calls kept there are sent first); a resumed run continues `mlflow_run_id`. A new run gets
    the flattened config (secrets redacted) as params, the data files as dataset inputs and the job's
    tags. The MLflow run's id goes to the folder's `run.json` once the run exists (an outage at start
    may delay it past the first checkpoints)."""
    t = cfg.tracking
    if not t.enabled:
        return NullTracker()

    def record(created: str) -> None:
        RunRecord(run_id, created).write(folder)

    tracker = BufferedTracker(
        lambda existing: open_tracker(t, job_kind, model_path, run_id=existing),
        folder / "mlflow_buffer.jsonl",
        run_id=mlflow_run_id,
        required=t.required,
        max_bytes=int(t.buffer_max_mb * 2**20),
        on_run=record,
    )
    if mlflow_run_id is None and not tracker.replayed:  # a new run (a replayed journal logged these)
        tracker.log_params(to_flat_dict(cfg))
        d = cfg.data  # the files as read (generated ones exist by now): MLflow dataset inputs
        for path, context in ((d.train_path, "training"), (d.eval_path, "eval")):
            if path and Path(path).is_file():
                tracker.log_dataset(str(path), context)
    job_id = ray_submission_id() or os.environ.get("RAY_JOB_ID", "")
    tags = {"rrm_ray.job": job_kind, "ray.job_id": job_id, "rrm_ray.run_id": run_id}
    tracker.set_tags({**tags, "rrm_ray.run_dir": str(folder)})
    return tracker


def think_budget(cfg: JobConfig) -> int:
    """Judge training (the policy is the judge) with budget forcing: see rrm_ray.judge.budget."""
    return cfg.judge.think_budget if cfg.data.format == "preference" else 0


def render(cfg: JobConfig, tokenizer: Any, rows: list[PromptRow]) -> list[str]:
    m = cfg.model
    return [
        row.prompt
        if row.extra.get(RENDERED)
        else render_prompt(tokenizer, row.prompt, m.system_prompt, m.use_chat_template)
        for row in rows
    ]


def evaluate_policy(
    cfg: JobConfig, roles: Roles, rows: list[PromptRow], prompts: list[str]
) -> dict[str, float]:
    """Greedy decoding on the held-out prompts, scored by the same rule."""
    if not rows:
        return {}
    completions = roles.rollout.generate(prompts, 1, 0.0, cfg.rollout.eval_max_new_tokens, seed=None)
    scored = roles.reward.score(completions, rows)
    rewards = [r for r in scored.rewards if r is not None]
    if not rewards:
        return {}
    judging = cfg.data.format == "preference"
    j = cfg.judge
    breakdown = (
        verdict_breakdown("eval", rows, completions, j.mode, think_budget(cfg), j.verdict_rule)
        if judging
        else {}
    )
    return {
        "eval/reward_mean": sum(rewards) / len(rewards),
        **accuracy("eval/accuracy", scored.correct, interval=True),
        **breakdown,
        "eval/response_length": sum(len(c.response_ids) for c in completions) / len(completions),
    }


def save_final(
    cfg: JobConfig, learner: LearnerClient, tracker: Tracker, step: int, folder: Path
) -> str | None:
    """The final policy in HF format (and its config, secrets redacted) in the run's folder, so another
    run never replaces it (a registered model version that records its path stays valid); its path
    tagged on the MLflow run."""
    if not cfg.checkpoint.save_final:
        return None
    final_dir = str((folder / "final").resolve())
    Path(final_dir).parent.mkdir(parents=True, exist_ok=True)
    learner.save_hf(final_dir)
    Path(final_dir, "rrm_ray_config.yaml").write_text(to_yaml(cfg))
    tracker.set_tags({"rrm_ray.final_policy": final_dir})
    t = cfg.tracking
    if t.log_model != "none":  # the run's output: MLflow then lists it as a training run
        tracker.log_model(final_dir, t.log_model, step, "policy", t.registered_model)
    return final_dir


def log_figures(tracker: Tracker, folder: Path) -> None:
    """PNG figures of what MLflow does not draw (rrm_ray.figures), from the run's whole metric
    history (earlier attempts of a resumed run included), as artifacts under `figures/`."""
    from rrm_ray import figures

    history = tracker.metric_history(("time/", "judge/", "eval/"))
    out = folder / "figures"
    for draw in (figures.phase_seconds, figures.judge_agreement, figures.learning_curve):
        path = draw(history, out / f"{draw.__name__}.png")
        if path is not None:
            tracker.log_artifact(str(path), "figures")


class RoleJob:
    """A job that owns `self.roles` and `self.tracker`: as a context manager it closes both, the run
    marked FAILED when the block raised (GRPOJob, DPOJob). `stop`: the command's graceful stop
    (SIGTERM/SIGINT), checked at every step boundary."""

    roles: Roles
    tracker: Tracker
    stop: GracefulStop | None = None

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FAILED" if exc_type else "FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        """Shut the roles down and end the run: the run is ended (and its buffer flushed) even when
        shutting the roles down fails."""
        try:
            self.roles.close()
        finally:
            self.tracker.close(status)
