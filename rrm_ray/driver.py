"""The driver: reserve placement groups, start the role groups, run GRPO, log to MLflow.

    for step in range(total_steps):
        prompts   = next batch of the prompt data
        samples   = rollout.generate(prompts, n)               # vLLM engines
        rewards   = reward.score(samples)                      # rule actor (timeouts, never hangs)
        adv       = group_advantages(rewards)                  # pure math
        learner.train_step(batch shards, token counts)         # FSDP2 ranks
        learner.send_weights()  -> rollout engines             # vLLM weight transfer, checked complete

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, remove_placement_group

from actors.judge import JudgePool
from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from actors.rollout import Completion, RolloutWorker, engine_env
from rrm_ray import algo
from rrm_ray.actor_group import ActorGroup, PlacementError, RemoteCallTimeout, reserve
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
from rrm_ray.colocation import Colocation
from rrm_ray.config import (
    JobConfig,
    resolved_dtype,
    to_flat_dict,
    to_yaml,
    vllm_backend,
    weight_sync_method,
)
from rrm_ray.data.prompts import PromptRow, render_prompt
from rrm_ray.data.tasks import RENDERED, load_task_rows
from rrm_ray.judge.feedback import Agreement, prompts_to_judge, query_text, sample_rewards, verifier_agreement
from rrm_ray.logs import job_log_file, ray_init_kwargs
from rrm_ray.models import resolve_model_path
from rrm_ray.placement import PlacementPlan, cannot_hold_message, placement_problems, plan_placement
from rrm_ray.progress import StepPrinter
from rrm_ray.recovery import Decision, RecoveryPolicy, RoleFailure, attribute
from rrm_ray.rewards.judge_reward import judge_reward, order_accuracy
from rrm_ray.stats import wilson_interval
from rrm_ray.tracking import BufferedTracker, MLflowTracker, NullTracker, Tracker, default_run_name


@dataclass
class PhaseTimer:
    """Seconds per named phase within one step."""

    on_phase: Callable[[str], None] | None = None  # told each phase's name as it starts (the console)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.on_phase is not None:
            self.on_phase(name)
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


def connect_ray(cfg: JobConfig, job: str = "train") -> Path | None:
    """Connect to the configured cluster, or start a local one with the declared logical resources.

    Returns the job's log file for actor and engine output (None when they stream to the console:
    `cluster.stream_worker_logs`); see `rrm_ray.logs`."""
    if ray.is_initialized():
        return None
    log_file = None if cfg.cluster.stream_worker_logs else job_log_file(cfg.checkpoint.dir, job)
    if log_file is not None:
        print(f"actor and engine logs: {log_file}")
    kwargs = ray_init_kwargs(log_file)
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, **kwargs)
    else:
        ray.init(
            address="local",  # a new local instance, even if other clusters run on this machine
            num_cpus=cfg.cluster.local_num_cpus,
            num_gpus=cfg.cluster.local_num_gpus,
            include_dashboard=False,
            **kwargs,
        )
    return log_file


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


def check_fits(plan: PlacementPlan) -> None:
    """Fail at once when the live cluster cannot hold the placement groups, naming what is missing
    (the lines `rrm-ray plan` prints for the same config), instead of waiting out the timeout."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    problems = placement_problems(plan.groups, nodes)
    if problems:
        raise PlacementError(cannot_hold_message(problems))


def reserve_placement(plan: PlacementPlan, timeout_s: float) -> dict[str, PlacementGroup]:
    """Every placement group of the plan, before any actor starts (a role that cannot be placed fails
    before engines spend minutes loading); on failure the groups already reserved are released."""
    pgs: dict[str, PlacementGroup] = {}
    try:
        for name, spec in plan.groups.items():
            pgs[name] = reserve(spec, timeout_s)
    except BaseException:
        for pg in pgs.values():
            remove_placement_group(pg)
        raise
    return pgs


def place_role(
    plan: PlacementPlan, pgs: dict[str, PlacementGroup], role: str, actor_cls: type, **kwargs: Any
) -> ActorGroup:
    """The actors of `role` on its placement group, each asking for its share of one bundle."""
    share = plan.roles[role]
    return ActorGroup(actor_cls, share.spec, pg=pgs[share.group], **kwargs)


class GRPOJob:
    """Owns the Ray roles of a GRPO run and runs the loop; use as a context manager."""

    def __init__(self, cfg: JobConfig, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.model_path = resolve_model_path(cfg.model.path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
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
        self.tracker = tracker or self._make_tracker()
        self.groups: list[ActorGroup] = []
        self.plan = plan_placement(cfg)  # placement groups, and each role's share of them
        self.pgs: dict[str, PlacementGroup] = {}
        levels = {"rollout": cfg.rollout.sleep_level, "judge": cfg.judge.sleep_level}
        self.share = Colocation(self.plan, levels, self.sync_weights)  # roles sharing GPUs take turns
        self.faults: dict[str, int] = {
            "rollout_restarts": 0,
            "judge_restarts": 0,
            "reward_restarts": 0,
            "learner_recoveries": 0,
        }
        self.recovery = RecoveryPolicy(cfg.cluster.max_actor_restarts)  # dead actor -> action, per role
        self.judge: JudgePool | None = None
        self.agreement = Agreement()  # judge vs verifier over the whole run
        self.before: dict[str, float] = {}  # the held-out baseline, kept across resumes
        self.on_phase: Callable[[str], None] | None = None
        # Judge training (the policy is the judge) with budget forcing: see rrm_ray.judge.budget.
        self.think_budget = cfg.judge.think_budget if cfg.data.format == "preference" else 0

    # -- set-up ------------------------------------------------------------------------------------------
    job_kind = "grpo"  # the `rrm_ray.job` tag and the first word of the default run name

    def _make_tracker(self) -> Tracker:
        t = self.cfg.tracking
        if not t.enabled:
            return NullTracker()
        # Fail over to the local buffer quickly instead of MLflow's minutes of HTTP retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(t.http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(t.http_timeout_s)))
        run_id = self.resumed_state.mlflow_run_id if self.resumed_state else None
        inner = MLflowTracker(
            t.uri,
            t.experiment,
            t.run_name or default_run_name(self.job_kind, self.model_path),
            run_id=run_id,
            system_metrics_interval_s=t.system_metrics_interval_s if t.system_metrics else None,
        )
        tracker = BufferedTracker(inner, Path(self.cfg.checkpoint.dir) / "mlflow_buffer.jsonl")
        if run_id is None:
            tracker.log_params(to_flat_dict(self.cfg))
            d = self.cfg.data  # the files as read (generated ones exist by now): MLflow dataset inputs
            for path, context in ((d.train_path, "training"), (d.eval_path, "eval")):
                if path and Path(path).is_file():
                    tracker.log_dataset(str(path), context)
        job_id = ray_submission_id() or os.environ.get("RAY_JOB_ID", "")
        tracker.set_tags({"rrm_ray.job": self.job_kind, "ray.job_id": job_id})
        return tracker

    def start(self) -> None:
        """Connect to Ray, check the job fits, reserve every placement group, start the actors. Roles
        that share bundles (`cluster.colocate`) take turns on them: `self.share` puts engines to sleep."""
        cfg = self.cfg
        c, r = cfg.cluster, cfg.rollout
        connect_ray(cfg)
        check_fits(self.plan)
        self.pgs = reserve_placement(self.plan, c.placement_timeout_s)
        dtype = resolved_dtype(cfg)
        common = dict(placement_timeout_s=c.placement_timeout_s, call_timeout_s=c.call_timeout_s)
        self.rollout = self._group(
            RolloutWorker,
            "rollout",
            init_args=(self.model_path, dtype, cfg.model.max_model_len, cfg.trainer.seed, c.device),
            init_kwargs={
                "gpu_memory_utilization": r.gpu_memory_utilization,
                "max_num_batched_tokens": r.max_num_batched_tokens,
                "tensor_parallel_size": r.tensor_parallel_size,
                "weight_transfer_backend": vllm_backend(weight_sync_method(cfg), c.device),
                "enable_sleep_mode": self.plan.roles["rollout"].shared,
            },
            env={**engine_env(c.device, r.kv_cache_gib, r.threads), **c.env},
            max_restarts=c.max_actor_restarts,
            **common,
        )
        self.share.register("rollout", self.rollout)
        self._start_learner()
        self.reward = self._group(
            RewardWorker,
            "reward",
            init_args=(
                dict(cfg.reward.rule_weights) or cfg.reward.rule,
                cfg.reward.timeout_s,
                cfg.reward.fallback,
                cfg.reward.num_workers,
                cfg.reward.accuracy_rule or next(iter(cfg.reward.rule_weights), cfg.reward.rule),
            ),
            env=dict(c.env),
            max_restarts=c.max_actor_restarts,
            **common,
        )
        self.judge = self._start_judge() if cfg.judge.enabled else None
        self.rollout.call_all("ping")  # engines are up
        self.placement = [p for g in self.groups for p in g.placement()]
        if self.resume_from:
            self._restore(self.resume_from)

    def _start_learner(self) -> None:
        cfg, c = self.cfg, self.cfg.cluster
        self.share.before("learner")  # engines on its GPUs sleep before it takes memory
        self.learner = self._group(
            LearnerWorker,
            "learner",
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
        self.share.before("weight_transfer")
        self._init_weight_transfer()  # a rebuilt learner sets the transfer up anew

    def _start_judge(self) -> JudgePool:
        """The RRM judge on its bundles: its own, or shared (`cluster.colocate`), each role taking 1/k."""
        share = self.plan.roles["judge"]
        self.share.before("judge")  # engines on its bundles sleep before it sizes its KV cache
        pool = JudgePool(self.cfg, share.spec, pg=self.pgs[share.group])
        self.groups.append(pool.group)
        self.share.register("judge", pool.group)
        return pool

    def _group(self, actor_cls: type, role: str, **kwargs: Any) -> ActorGroup:
        group = place_role(self.plan, self.pgs, role, actor_cls, **kwargs)
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
        for pg in self.pgs.values():  # the groups share these, so the job releases them
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
        self.pgs = {}
        self.tracker.close(status)

    # -- checkpoints and recovery --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Learner shards + driver state into `step_N.partial`, then marked complete and renamed."""
        root = Path(self.cfg.checkpoint.dir)
        partial = begin(root, self.step)
        self.learner.call_all("save_checkpoint", str(partial / "learner"))
        state = DriverState(
            self.step,
            self.stream.position,
            self.tracker.run_id,
            {"faults": dict(self.faults), "eval_before": dict(self.before)},
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

    def _recover_learner(self, error: ray.exceptions.RayActorError) -> None:
        """A learner rank died: rebuild the learner group and continue from the last checkpoint."""
        decision = self._decide("learner", error)
        if decision.action == "fail":
            raise RoleFailure("learner", f"{decision.message}\n  Ray: {str(error)[:500]}") from error
        latest = resolve_resume("auto", self.cfg.checkpoint.dir)
        self._count_fault(decision.counter)
        warnings.warn(f"a learner rank failed ({type(error).__name__}); resuming from {latest}", stacklevel=2)
        self.groups.remove(self.learner)
        self.learner.shutdown()
        self._start_learner()  # on the same placement group (and bundles) as before
        self._restore(latest)

    def train_step_or_recover(self) -> dict[str, float]:
        """`train_step`, but a dead learner rank rolls back to the last checkpoint and trains on from there;
        rollout, judge and reward actors recover inside their own calls (`_with_restarts`), never
        touching the learner. A failure beyond `cluster.max_actor_restarts` raises `RoleFailure`."""
        while True:
            try:
                return self.train_step()
            except ray.exceptions.RayActorError as exc:
                role = self._role_of(exc)
                if role != "learner":  # the other roles retry inside their calls: this one escaped them
                    raise RoleFailure(
                        role, f"a {role or 'unknown'} actor died outside a retried call: {exc}"
                    ) from exc
                self._recover_learner(exc)

    def _role_of(self, error: ray.exceptions.RayActorError, default: str | None = None) -> str | None:
        """The role of the actor `error` is about, by actor id (Ray keeps an actor's id over restarts)."""
        return attribute(error.actor_id, {g.spec.name: g.actor_ids() for g in self.groups}, default)

    def _decide(self, role: str | None, error: ray.exceptions.RayActorError) -> Decision:
        has_checkpoint = role == "learner" and resolve_resume("auto", self.cfg.checkpoint.dir) is not None
        return self.recovery.on_death(
            role,
            error.actor_id,
            gone_for_good=isinstance(error, ray.exceptions.ActorDiedError),
            weights_trained=self.step > 0 or self.resume_from is not None,
            has_checkpoint=has_checkpoint,
            learner_recoveries=self.faults["learner_recoveries"],
        )

    def _count_fault(self, counter: str) -> None:
        self.faults[counter] = self.faults.get(counter, 0) + 1
        self.tracker.log_metrics({f"faults/{counter}": self.faults[counter]}, self.step)

    def _with_restarts(self, role: str, call: Callable[[int], Any], resync: bool = True) -> Any:
        """`call(attempt)` against the `role` group, retried after one of its actors died and Ray restarted
        it (`rrm_ray.recovery`): an engine of a trained role first gets the learner's weights again
        (unless `resync` is False: the call is the sync). An error about another role's actor passes
        through, e.g. a learner rank dying inside `sync_weights` is the learner's to recover."""
        group = next(g for g in self.groups if g.spec.name == role)
        attempt, resync_first = 0, False
        while True:
            try:
                if resync_first:
                    self.sync_weights()
                return call(attempt)
            except ray.exceptions.RayActorError as exc:
                if self._role_of(exc, default=role) != role:
                    raise
                decision = self._decide(role, exc)
                if decision.action == "fail":
                    raise RoleFailure(role, f"{decision.message}\n  Ray: {str(exc)[:500]}") from exc
                self._count_fault(decision.counter)
                warnings.warn(
                    f"a {role} actor died ({type(exc).__name__}); Ray restarts it and the call is retried",
                    stacklevel=3,
                )
                self._wait_for_restart(group)
                resync_first = decision.resync_weights and resync
                attempt += 1

    def _wait_for_restart(self, group: ActorGroup) -> None:
        """Until every actor of `group` answers again (a restart re-runs `__init__`: an engine reloads its
        model). Ray reports an actor unavailable while it restarts, dead once it never will."""
        role = group.spec.name
        deadline = time.monotonic() + self.cfg.cluster.call_timeout_s
        while True:
            try:
                group.call_all("ping")
                return
            except ray.exceptions.ActorDiedError as exc:
                raise RoleFailure(
                    role, f"{self._decide(role, exc).message}\n  Ray: {str(exc)[:500]}"
                ) from exc
            except ray.exceptions.RayActorError as exc:
                if time.monotonic() > deadline:
                    raise RemoteCallTimeout(
                        f"the {role} actors did not come back from a restart within "
                        f"cluster.call_timeout_s={self.cfg.cluster.call_timeout_s:g}s"
                    ) from exc
                time.sleep(1.0)

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
        """`_generate_once`; an engine that died is restarted by Ray and the batch retried, after the
        learner's weights are synced to it again (it comes back with the initial ones)."""
        return self._with_restarts(
            "rollout", lambda _: self._generate_once(prompts, n, temperature, max_tokens, seed)
        )

    def _generate_once(
        self, prompts: list[str], n: int, temperature: float, max_tokens: int, seed: int | None
    ):
        """Split prompts over the engines (contiguous chunks), gather completions prompt-major."""
        self.share.before("rollout")
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

    def score(
        self, completions: list[Completion], rows: list[PromptRow], in_flight: ray.ObjectRef | None = None
    ):
        """Rule rewards; `in_flight` is this batch's `score_async` ref when it was sent already. A reward
        actor that died is restarted and asked again: rule scoring is pure, so the retry scores the same."""

        def once(attempt: int):
            ref = in_flight if attempt == 0 and in_flight is not None else self.score_async(completions, rows)
            return self.reward.get([ref], "score")[0]

        return self._with_restarts("reward", once)

    def score_async(self, completions: list[Completion], rows: list[PromptRow]) -> ray.ObjectRef:
        answers = [rows[c.prompt_index].answer for c in completions]
        return self.reward.actors[0].score.remote([c.text for c in completions], answers)

    def judge_rewards(self, rows: list[PromptRow], completions: list[Completion], n: int):
        """Rank each judged prompt's samples with the RRM (one batched call for the whole step)."""
        judged = prompts_to_judge([r.answer for r in rows], self.cfg.judge.reward_mix)
        items = [
            (query_text(rows[p].prompt), [c.text for c in completions[p * n : (p + 1) * n]]) for p in judged
        ]
        results = self._with_restarts("judge", lambda _: self._rank(items)) if items else []
        return dict(zip(judged, results, strict=True))

    def _rank(self, items: list[tuple[str, list[str]]]) -> list[Any]:
        self.share.before("judge")
        return self.judge.rank(items)

    def _init_weight_transfer(self) -> None:
        """Every learner rank builds its vLLM trainer engine; rank 0 opens the transfer with every engine
        (rollout.weight_sync; a collective method forms its group here)."""
        c, r = self.cfg.cluster, self.cfg.rollout
        backend = vllm_backend(weight_sync_method(self.cfg), c.device)
        workers = r.tensor_parallel_size if c.device == "cuda" else 1
        engines, timeout = self.rollout.actors, c.call_timeout_s
        self.learner.call_all("init_weight_transfer", backend, engines, workers, r.weight_bucket_mb, timeout)

    def sync_weights(self) -> dict[str, int]:
        """Learner -> engines through vLLM's weight-transfer protocol, the same calls for every method;
        each engine verifies completeness. An engine that Ray restarted lost its end of the transfer
        (and a collective group that held it is dead for all), so the transfer is set up again first."""
        self.share.before("weight_sync")  # the engines that take weights are awake
        if not all(self.rollout.call_all("weight_transfer_ready")):
            self._init_weight_transfer()
        return self.learner.call_all("send_weights")[0]

    def filter_solved(self) -> int:
        """Drop training prompts the starting model already solves k out of k times (as the RRM paper
        does before judge training): they carry no GRPO signal. Returns how many were dropped."""
        r, k, rows = self.cfg.rollout, self.cfg.data.difficulty_filter_k, self.train_rows
        completions = self.generate(self.render(rows), k, r.temperature, r.max_new_tokens, None)
        correct = self.score(completions, rows).correct
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
            **_accuracy("eval/accuracy", scored.correct, interval=True),
            **breakdown,
            "eval/response_length": sum(len(c.response_ids) for c in completions) / len(completions),
        }

    def train_step(self) -> dict[str, float]:
        """One GRPO step; returns the step's metrics (also logged)."""
        cfg, timer = self.cfg, PhaseTimer(self.on_phase)
        n = cfg.rollout.n_samples  # the group: one prompt's samples, or one pair's in both orders
        rows = self.stream.next()
        with timer.phase("generate"):
            seed = cfg.trainer.seed * 1_000_003 + self.step * 1009
            completions = self.generate(
                self.render(rows), n // self.orders, cfg.rollout.temperature, cfg.rollout.max_new_tokens, seed
            )
        with timer.phase("reward"):  # the rule actor scores while the judge ranks
            rule_ref = self.score_async(completions, rows)
            judged = self.judge_rewards(rows, completions, n) if self.judge else {}
            scored = self.score(completions, rows, in_flight=rule_ref)
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
        advantages = algo.group_advantages(
            rewards, n, scale_by_std=cfg.algorithm.scale_by_std, subgroups=self.orders
        )
        used = list(range(len(completions)))
        if cfg.algorithm.filter_flat_groups:
            used = algo.informative_sequences(rewards, n, subgroups=self.orders)
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
        self.share.before("learner")  # engines that share the learner's GPUs sleep through the update
        with timer.phase("logprobs"):
            if cfg.algorithm.mini_batches > 1:
                old_lp = self.learner.call_sharded("compute_logprobs", shards, reference=False)
            if cfg.algorithm.kl_coef > 0:
                ref_lp = self.learner.call_sharded("compute_logprobs", shards, reference=True)
        lr = algo.step_lrs(  # one per optimizer step: the schedule counts optimizer steps
            self.step,
            cfg.algorithm.mini_batches,
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
            sync = self._with_restarts("rollout", lambda _: self.sync_weights(), resync=False)
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
        labels = [int(rows[c.prompt_index].answer) for c in completions]
        return {
            **(budget if self.think_budget else {}),
            **order_accuracy(prefix, labels, [r.correct for r in results]),
            f"{prefix}/verdict_correct_rate": sum(r.correct for r in results) / total,
            f"{prefix}/verdict_wrong_rate": sum(r.format_ok and not r.correct for r in results) / total,
            f"{prefix}/format_fail_rate": sum(not r.format_ok for r in results) / total,
            # position bias: labels are balanced, so an unbiased judge names Assistant 1 about half the time
            f"{prefix}/verdict_first_rate": sum(r.format_ok and r.verdict == 1 for r in results)
            / max(sum(r.format_ok for r in results), 1),
        }

    def _judge_metrics(self, judged: dict, rule_rewards: list[float | None], n: int) -> dict[str, float]:
        """Judge counters, agreement with the verifier, and sampled traces/brackets as MLflow tables."""
        stats = self._with_restarts("judge", lambda _: self.judge.stats(reset=True))
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
        t = self.cfg.tracking
        if t.log_model != "none":  # the run's output: MLflow then lists it as a training run
            self.tracker.log_model(final_dir, t.log_model, self.step, "policy", t.registered_model)
        return final_dir

    def log_figures(self) -> None:
        """PNG figures of what MLflow does not draw (rrm_ray.figures), from the run's whole metric
        history (earlier attempts of a resumed run included), as artifacts under `figures/`."""
        from rrm_ray import figures

        history = self.tracker.metric_history(("time/", "judge/", "eval/"))
        out = Path(self.cfg.checkpoint.dir, "figures")
        for draw in (figures.phase_seconds, figures.judge_agreement, figures.learning_curve):
            path = draw(history, out / f"{draw.__name__}.png")
            if path is not None:
                self.tracker.log_artifact(str(path), "figures")

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate, train `total_steps`, evaluate again, save the policy; returns a summary."""
        cfg = self.cfg
        started = time.perf_counter()
        if self.data_counts:
            self.tracker.log_metrics({f"data/{k}": v for k, v in self.data_counts.items()}, step=0)
        if cfg.data.difficulty_filter_k and self.step == 0:
            self.filter_solved()
        if self.resumed_state is None:
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
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every:
            self.save_checkpoint()  # the last steps, too
        after = self.evaluate()
        if after:
            self.tracker.log_metrics(after, step=self.step)
            self.tracker.log_metrics(
                {k.replace("eval/", "eval_after/"): v for k, v in after.items()}, self.step
            )
        final_dir = self.save_final()
        self.log_figures()
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


def _accuracy(name: str, correct: list[bool | None], interval: bool = False) -> dict[str, float]:
    """Fraction correct among items that have a reference answer (none: no metric); `interval` adds
    how many were scored and the 95% Wilson interval (`<name>_ci_low`, `<name>_ci_high`)."""
    known = [c for c in correct if c is not None]
    if not known:
        return {}
    out = {name: sum(known) / len(known)}
    if interval:
        low, high = wilson_interval(sum(known), len(known))
        out |= {f"{name}_n": float(len(known)), f"{name}_ci_low": low, f"{name}_ci_high": high}
    return out
