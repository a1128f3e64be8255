"""The learner role's client: the sharded policy's ranks, its updates, LR schedule and checkpoints.

Ranks are collective (`actors.learner`): every method below calls all of them at once, each with its
own shard. An update is started and finished apart (`start_update` returns at once, `finish_update`
waits), so the driver can generate the next batch meanwhile (`rrm_ray.pipeline`).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import ray
import torch

from actors.learner import LearnerWorker
from rrm_ray import algo
from rrm_ray.batch import TrainBatch, build_batch, interleave_for_balance, mini_batch_tokens, permute, shard
from rrm_ray.clients.group import ActorGroup
from rrm_ray.config import JobConfig, resolved_dtype
from rrm_ray.types import Completion
from rrm_ray.weight_sync import vllm_backend, weight_sync_method

if TYPE_CHECKING:
    from rrm_ray.clients.colocation import Colocation
    from rrm_ray.clients.roles import Placement


class PendingUpdate:
    """One update in flight: per rank its log-prob passes (if any) and its `train_step`, chained as Ray
    refs so the ranks run them back to back. Each ref's completion time is noted when Ray reports it,
    so the phase seconds are the learner's even while the driver was busy elsewhere."""

    def __init__(
        self,
        group: ActorGroup,
        logprob_refs: list[ray.ObjectRef],
        train_refs: list[ray.ObjectRef],
        tokens: int,
    ) -> None:
        self.group, self.train_refs, self.tokens = group, train_refs, tokens
        self.submitted = time.perf_counter()
        self._done: dict[str, list[float]] = {"logprobs": [], "update": []}
        self._lock = threading.Lock()
        for name, refs in (("logprobs", logprob_refs), ("update", train_refs)):
            for ref in refs:
                ref.future().add_done_callback(lambda _f, name=name: self._note(name))
        self.has_logprobs = bool(logprob_refs)
        self.outcome: tuple[dict[str, float], dict[str, float]] | None = None
        self.finished = self.submitted  # when the last rank's train_step ended (set by `result`)

    def _note(self, name: str) -> None:
        with self._lock:
            self._done[name].append(time.perf_counter())

    def result(self) -> tuple[dict[str, float], dict[str, float]]:
        """(rank 0's stats, seconds of the `logprobs` and `update` phases); waits the first time."""
        if self.outcome is None:
            stats = self.group.get(self.train_refs, "train_step")[0]
            now = time.perf_counter()
            with self._lock:  # a callback may trail the result by a moment: then it ended about now
                update_done = max(self._done["update"], default=now)
                logprobs_done = (
                    max(self._done["logprobs"], default=now) if self.has_logprobs else self.submitted
                )
            logprobs_done = min(logprobs_done, update_done)
            self.finished = update_done
            seconds = {"logprobs": logprobs_done - self.submitted, "update": update_done - logprobs_done}
            self.outcome = (stats, seconds)
        return self.outcome


class LearnerClient:
    """`learner.num_ranks` ranks of the policy (FSDP2 or DeepSpeed) on the learner's bundles.

    `version` counts the updates applied (`rrm_ray.pipeline`); a restored checkpoint sets it to the
    checkpoint's. `idle_since` is when the last update finished (for `time/generate_wait_s`).
    """

    def __init__(
        self, cfg: JobConfig, model_path: str, pad_id: int, place: Placement, share: Colocation | None
    ) -> None:
        self.cfg, self.model_path, self.pad_id, self.place, self.share = cfg, model_path, pad_id, place, share
        self.version = 0
        self.pending: PendingUpdate | None = None
        self.idle_since: float | None = None
        self.group = self._start()

    def _start(self) -> ActorGroup:
        """The ranks, joined in one process group: rank 0 publishes the rendezvous address."""
        cfg, c = self.cfg, self.cfg.cluster
        if self.share is not None:
            self.share.before("learner")  # engines on its GPUs sleep before it takes memory
        group = self.place(
            "learner",
            LearnerWorker,
            init_args=(
                self.model_path,
                resolved_dtype(cfg),
                c.device,
                cfg.learner,
                cfg.algorithm,
                cfg.rollout.temperature,
                cfg.trainer.seed,
            ),
            env={"OMP_NUM_THREADS": str(cfg.learner.threads), **c.env},
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
        )
        try:
            master = group.placement()[0]  # its node IP, and a free port there
            group.call_all("init_process_group", master["ip"], group.call_rank0("free_port"))
        except BaseException:
            group.shutdown()
            raise
        return group

    def rebuild(self) -> None:
        """A rank died: the ranks share sharded state, so all are replaced by new ones on the same
        bundles (restore a checkpoint next)."""
        self.group.shutdown()
        self.pending = None
        self.group = self._start()

    def __len__(self) -> int:
        return len(self.group)

    # -- GRPO updates --------------------------------------------------------------------------------------
    def start_update(
        self, completions: list[Completion], advantages: torch.Tensor, step: int
    ) -> PendingUpdate:
        """Start the update of 0-based training step `step` on these sequences and return at once.

        The old log-probs (`algorithm.mini_batches` > 1) are the learner's, computed before it updates:
        the proximal policy of the clipped ratio, also when the batch was generated by an older policy
        (max_staleness >= 1). The engine's own log-probs, kept in the batch, enter the loss only through
        the truncated importance weight (`algorithm.tis_cap`), which corrects for both the vLLM-vs-learner
        mismatch and the policy lag.
        """
        cfg = self.cfg
        batch = build_batch(
            [c.prompt_ids for c in completions],
            [c.response_ids for c in completions],
            [c.response_logprobs for c in completions],
            advantages.tolist(),
            pad_id=self.pad_id,
            response_masks=[c.response_mask for c in completions],
        )
        ranks = len(self.group)
        shards = shard(permute(batch, interleave_for_balance(len(batch), ranks)), ranks)
        tokens = mini_batch_tokens(shards, cfg.algorithm.mini_batches)
        if self.share is not None:
            self.share.before("learner")  # engines that share the learner's GPUs sleep through the update
        old = self._logprob_refs(shards, reference=False) if cfg.algorithm.mini_batches > 1 else None
        ref = self._logprob_refs(shards, reference=True) if cfg.algorithm.kl_coef > 0 else None
        lr = algo.step_lrs(  # one per optimizer step: the schedule counts optimizer steps
            step,
            cfg.algorithm.mini_batches,
            cfg.learner.lr,
            cfg.learner.warmup_steps,
            cfg.trainer.total_steps,
            cfg.learner.lr_schedule,
            cfg.learner.min_lr_ratio,
        )
        train = [  # a ref argument reaches the rank as its value, once the rank computed it
            actor.train_step.remote(
                s, tokens, lr, None if old is None else old[i], None if ref is None else ref[i]
            )
            for i, (actor, s) in enumerate(zip(self.group.actors, shards, strict=True))
        ]
        self.pending = PendingUpdate(self.group, [*(old or []), *(ref or [])], train, batch.num_tokens)
        return self.pending

    def _logprob_refs(self, shards: list[TrainBatch], reference: bool) -> list[ray.ObjectRef]:
        return self.group.async_call_sharded("compute_logprobs", shards, reference=reference)

    def finish_update(self) -> tuple[dict[str, float], dict[str, float], int]:
        """Wait for the update in flight: (stats, phase seconds, tokens trained on)."""
        assert self.pending is not None, "no update in flight"
        self._settle()
        pending, self.pending = self.pending, None
        stats, seconds = pending.result()
        return stats, seconds, pending.tokens

    def _settle(self) -> None:
        """The update in flight has applied (waits for it): the version moves on once per update."""
        if self.pending is not None and self.pending.outcome is None:
            self.pending.result()
            self.version += 1
            self.idle_since = self.pending.finished

    # -- DPO -----------------------------------------------------------------------------------------------
    def sequence_logps(self, shards: list[TrainBatch]) -> torch.Tensor:
        """Summed response log-probs per sequence of the current policy (DPO's reference pass), [B]."""
        if self.share is not None:
            self.share.before("learner")
        return torch.cat(self.group.call_sharded("compute_sequence_logps", shards))

    def dpo_step(
        self,
        shards: list[TrainBatch],
        ref_logps: list[torch.Tensor],
        beta: float,
        label_smoothing: float,
        lr: float,
    ) -> dict[str, float]:
        """One DPO optimizer step over every rank's pairs; rank 0's stats."""
        refs = [
            a.dpo_step.remote(x, r, beta, label_smoothing, lr)
            for a, x, r in zip(self.group.actors, shards, ref_logps, strict=True)
        ]
        stats = self.group.get(refs, "dpo_step")[0]
        self.version += 1
        return stats

    # -- weights out -----------------------------------------------------------------------------------
    def init_weight_transfer(self, engines: list[Any]) -> None:
        """Every rank builds its vLLM trainer engine; rank 0 opens the transfer with every engine
        (`rollout.weight_sync`; a collective method forms its group here)."""
        c, r = self.cfg.cluster, self.cfg.rollout
        backend = vllm_backend(weight_sync_method(self.cfg), c.device)
        workers = r.tensor_parallel_size  # each tensor-parallel worker of an engine joins the transfer
        self.group.call_all(
            "init_weight_transfer", backend, engines, workers, r.weight_bucket_mb, c.call_timeout_s
        )

    def transfer_ready(self) -> bool:
        """False after a sync failed half-way (its ranks closed their end), until it is set up again."""
        return all(self.group.call_all("weight_transfer_ready"))

    def send_weights(self) -> dict[str, int]:
        """One full sync to the engines (after the update in flight, if any); engine 0's report."""
        self._settle()
        return self.group.call_all("send_weights")[0]

    def save_hf(self, out_dir: str) -> None:
        self.group.call_all("save_hf", out_dir, self.model_path)

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> None:
        self.group.call_all("save_checkpoint", directory)

    def load_checkpoint(self, directory: str) -> int:
        """Shards, optimizer state and RNGs back; the version is the checkpoint's update count."""
        self.pending = None
        self.version = int(self.group.call_all("load_checkpoint", directory)[0])
        return self.version
