"""Learner actor: one rank of the policy, sharded by FSDP2 or DeepSpeed ZeRO (gloo on CPU, NCCL on GPU).

Every rank holds a shard of the parameters and optimizer state. Methods that touch the model are
collective: the driver calls them on all ranks at once (`ActorGroup.call_all` / `call_sharded`), each
rank with its own shard of the batch, and the ranks meet in the backend's all-gathers and reductions.
The loss math lives in `rrm_ray.algo`; which library shards the model lives in `actors.backends`
(`learner.backend: fsdp2 | deepspeed`); this class owns the algorithm's use of them and the process group.
(Over 500 lines: one actor's collective methods, GRPO and DPO steps, weights out and checkpoints, each
short; they share the rank's model, optimizer and transfer state, which is what this class is.)

Checkpoints (`save_checkpoint(dir)`, all ranks): the backend's files (see `actors.backends`), plus

    dir/rng_rank{rank:05d}.pt   each rank: torch CPU (and CUDA) RNG state and the step counter
    dir/learner_meta.json       rank 0, written last: backend, world_size, step, dtype, master_dtype,
                                zero_stage, lora (a LoRA policy's rank, alpha, dropout, target_modules;
                                its backend files then hold the adapter and its optimizer state only)

LoRA (`learner.lora.rank` > 0, `actors.lora_model`): the backend wraps the model with peft before
sharding; the KL reference is the same model with the adapter switched off (no second copy); syncs
send the adapter (`learner.lora.sync: adapter`, `actors.lora_sender`) or the merged weights (`merged`,
through the weight transfer below); HF exports of the policy are merged.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist

from actors.backends import StepOutcome, build_backend
from actors.lora_model import adapter_off, merged_meta, merged_weights
from actors.lora_sender import AdapterSender
from actors.model_io import DTYPES, META_FILE, CheckpointError, read_meta, write_hf
from actors.worker import Worker
from rrm_ray import algo, lora
from rrm_ray.batch import TrainBatch, micro_batch_plan
from rrm_ray.config import AlgorithmConfig, LearnerConfig
from rrm_ray.weight_sync import LORA_ADAPTER


class LearnerWorker(Worker):
    def __init__(
        self,
        model_path: str,
        dtype: str,
        device: str,
        learner: LearnerConfig,
        algorithm: AlgorithmConfig,
        temperature: float,
        seed: int,
    ) -> None:
        self.model_path = model_path
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.device_kind = device
        self.cfg = learner
        self.backend_name = learner.backend
        self.algo_cfg = algorithm
        self.temperature = temperature
        self.seed = seed
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "cpu":
            torch.set_num_threads(learner.threads)
        self.step = 0
        # Seconds each train_step spent on this rank, from its first forward to its stats all-reduce
        # (the Ray call around it excluded): benchmarks read them (bench/step_overhead.py).
        self.update_seconds: list[float] = []
        self.transfer: Any = None  # the vLLM trainer-side weight-transfer engine (init_weight_transfer)
        self.adapter_sync = False  # the transfer is a LoRA adapter's (actors.lora_sender)

    # -- setup -----------------------------------------------------------------------------------------
    def init_process_group(self, master_addr: str, master_port: int) -> None:
        """Join the learner process group, then build the sharded model and the optimizer."""
        from transformers import AutoConfig

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        backend = "gloo" if self.device_kind == "cpu" else "nccl"
        if self.device_kind == "cuda":
            torch.cuda.set_device(0)  # Ray exposes exactly the bundle's GPU to this actor
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        torch.manual_seed(self.seed)
        self.device = torch.device("cpu" if self.device_kind == "cpu" else "cuda")
        self.tied = bool(getattr(AutoConfig.from_pretrained(self.model_path), "tie_word_embeddings", False))
        args = (self.backend_name, self.model_path, self.dtype, self.device, self.cfg)
        self.policy = build_backend(*args)
        # A frozen copy of the initial policy: the KL penalty's reference (a LoRA policy's is its base,
        # the adapter switched off: `_frozen_or_policy`). (DPO's reference log-probs are the policy's
        # own, computed once before it trains.)
        copy = self.algo_cfg.kl_coef > 0 and not self.cfg.lora.rank
        self.reference = build_backend(*args, frozen=True) if copy else None

    @property
    def model(self) -> Any:
        """The policy's forward callable (an FSDP2 module or a DeepSpeed engine)."""
        return self.policy.model

    # -- forward passes ------------------------------------------------------------------------------
    def _token_logprobs(
        self, model: Any, mb: TrainBatch, with_entropy: bool = False, temperature: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [B, L-1] of the tokens that follow each position (default: the sampling temperature),
        fp32, and the (detached) entropy [B, L-1] if asked.

        Straight from the hidden states, `learner.logprob_chunk` positions at a time
        (`actors.model_io.install_logprob_forward`): no [B, L, V] logits, fp32 or otherwise, exist.
        """
        return model(
            input_ids=mb.input_ids.to(self.device),
            attention_mask=mb.attention_mask.to(self.device),
            logprob_temperature=self.temperature if temperature is None else temperature,
            logprob_chunk=self.cfg.logprob_chunk,
            logprob_entropy=with_entropy,
        )

    def _frozen_or_policy(self, reference: bool) -> Any:
        if not reference:
            return self.policy.model
        if self.policy.peft is not None:
            return self._base_forward
        if self.reference is None:
            raise RuntimeError(
                "reference log-probs asked for, but no reference model was built "
                "(it is built when algorithm.kl_coef > 0)"
            )
        return self.reference.model

    def _base_forward(self, **kwargs: Any) -> Any:
        """A LoRA policy's forward with its adapter switched off: the base model, the reference."""
        with adapter_off(self.policy.peft):
            return self.policy.model(**kwargs)

    def _micro_batches(self, batch: TrainBatch, unit: int = 1) -> list[list[int]]:
        """This rank's micro-batches of `batch` as row indices: `learner.micro_batch_size` rows each, or
        filled up to `learner.max_tokens_per_microbatch` padded tokens (`rrm_ray.batch`). Every rank
        must run as many forward/backward passes as the others (FSDP2 all-gathers in each, DeepSpeed
        counts to its accumulation boundary): with a budget the ranks agree on the largest count (an
        all-reduce) and a rank with fewer splits its costliest micro-batches, or, out of rows, gets
        empty ones, which `_rows` runs as zero-weight work. `unit` rows stay together (DPO: 2)."""
        cfg = self.cfg
        plan = micro_batch_plan(batch.lengths, cfg.micro_batch_size, cfg.max_tokens_per_microbatch, unit)
        if not cfg.max_tokens_per_microbatch:
            return plan  # equal shards: equal counts already
        count = int(self._all_reduce_sums({"micro_batches_max": len(plan)})["micro_batches_max"])
        if count == len(plan):
            return plan
        return micro_batch_plan(
            batch.lengths, cfg.micro_batch_size, cfg.max_tokens_per_microbatch, unit, count
        )

    @staticmethod
    def _rows(batch: TrainBatch, rows: list[int], unit: int = 1) -> TrainBatch:
        """The micro-batch of these rows, trimmed; an empty plan entry runs the first unit's rows (its
        loss then counts zero: the pass only keeps this rank in step with the others)."""
        return batch.select(rows or list(range(unit))).trimmed()

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, reference: bool) -> torch.Tensor:
        """Log-probs of the current policy (or the frozen reference) for this rank's shard, [B, L-1]."""
        model = self._frozen_or_policy(reference)
        out = torch.zeros_like(batch.loss_mask)
        for rows in self._micro_batches(batch):
            lp, _ = self._token_logprobs(model, self._rows(batch, rows))
            if rows:
                out[rows, : lp.shape[1]] = lp.cpu()
        return out

    @torch.no_grad()
    def compute_sequence_logps(self, batch: TrainBatch, reference: bool = False) -> torch.Tensor:
        """Summed log-prob of each sequence's response tokens (loss_mask), temperature 1: [B] float32.

        DPO's reference pass: call it once per batch before training (reference=False: the policy,
        which is still the reference then) or at any time with reference=True.
        """
        model = self._frozen_or_policy(reference)
        out = torch.zeros(len(batch), dtype=torch.float32)
        for rows in self._micro_batches(batch):
            mb = self._rows(batch, rows)
            lp, _ = self._token_logprobs(model, mb, temperature=1.0)
            if rows:
                out[rows] = algo.sequence_logps(lp, mb.loss_mask.to(self.device)).cpu()
        return out

    # -- the update ----------------------------------------------------------------------------------
    def train_step(
        self,
        batch: TrainBatch,
        mini_batch_tokens: list[int],
        lr: float | list[float],
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One GRPO update on this rank's shard: `len(mini_batch_tokens)` optimizer steps.

        `mini_batch_tokens[m]` is the number of valid response tokens of mini-batch m summed over ALL
        ranks; dividing the summed token losses by it (times world size, as both backends average
        gradients over ranks) makes the loss a true token mean whatever the micro-batch split and rank
        count. `lr`: one learning rate per optimizer step (`algo.step_lrs`; the schedule counts optimizer
        steps), or one for all of them. A mini-batch whose gradient norm is inf/nan is not applied; the
        stats count it in `skipped_steps`, and `grad_norm` is the mean over the applied steps.
        """
        a = self.algo_cfg
        lrs = [float(lr)] * len(mini_batch_tokens) if isinstance(lr, int | float) else [float(x) for x in lr]
        if len(lrs) != len(mini_batch_tokens):
            raise ValueError(
                f"train_step: {len(lrs)} learning rates for {len(mini_batch_tokens)} mini-batches "
                "(one per optimizer step expected)"
            )
        started = time.perf_counter()
        self.policy.model.train()
        sums: dict[str, float] = {}
        outcomes = []
        size = len(batch) // len(mini_batch_tokens)
        for m, global_tokens in enumerate(mini_batch_tokens):
            mini = batch.select(slice(m * size, (m + 1) * size))
            old_mini = None if old_logprobs is None else old_logprobs[m * size : (m + 1) * size]
            ref_mini = None if ref_logprobs is None else ref_logprobs[m * size : (m + 1) * size]
            self.policy.set_lr(lrs[m])
            self.policy.zero_grad()
            plan = self._micro_batches(mini)
            for k, rows in enumerate(plan):
                self.policy.start_micro_batch(last=k == len(plan) - 1)
                mb = self._rows(mini, rows)
                width = mb.loss_mask.shape[1]
                lp, entropy = self._token_logprobs(self.policy.model, mb, with_entropy=True)
                if not rows:  # zero-weight work: this rank ran out of rows, the others did not
                    self.policy.backward(lp.sum() * 0.0)
                    continue
                mask = mb.loss_mask.to(self.device)
                # One update per batch is exactly on-policy: old log-probs equal the current ones.
                old = lp.detach() if old_mini is None else old_mini[rows][:, :width].to(self.device)
                out = algo.policy_loss(
                    lp,
                    old,
                    mb.advantages.to(self.device),
                    mask,
                    clip_low=a.clip_low,
                    clip_high=a.clip_high,
                    rollout_logprobs=mb.rollout_logprobs.to(self.device),
                    tis_cap=a.tis_cap,
                )
                loss_sum = out.loss_sum
                if ref_mini is not None:
                    kl = algo.masked_sum(algo.kl_k3(lp, ref_mini[rows][:, :width].to(self.device)), mask)
                    loss_sum = loss_sum + a.kl_coef * kl
                    _add(sums, "kl_sum", float(kl))
                self.policy.backward(loss_sum / max(global_tokens, 1) * self.world_size)
                for k, v in out.stats.items():
                    _add(sums, k, float(v))
                _add(sums, "entropy_sum", float(algo.masked_sum(entropy, mask)))
            outcomes.append(self.policy.clip_and_step(self.cfg.grad_clip))
        self.step += 1
        totals = self._all_reduce_sums(sums)
        self.update_seconds.append(time.perf_counter() - started)
        stats = algo.stats_to_means(totals)
        stats.update(_step_stats(outcomes), lr=lrs[-1])
        return stats

    def dpo_step(
        self, batch: TrainBatch, ref_logps: torch.Tensor, beta: float, label_smoothing: float, lr: float
    ) -> dict[str, float]:
        """One DPO optimizer step on this rank's pairs.

        Layout: rows 2i and 2i+1 of `batch` are pair i's chosen and rejected sequence, `loss_mask` marks
        their response tokens, `advantages` and `rollout_logprobs` are unused. `ref_logps` [B] are the
        reference's `compute_sequence_logps` of the same rows. The loss is `algo.dpo_loss` summed over
        pairs, divided by the pair count of ALL ranks (times world size, as gradients are averaged), so
        it is the mean over every pair of the step whatever the split. Micro-batches hold
        max(1, micro_batch_size // 2) whole pairs, or whole pairs up to the token budget. Log-probs at
        temperature 1.
        """
        if len(batch) % 2 or len(ref_logps) != len(batch):
            raise ValueError(
                f"dpo_step: rank {self.rank} got {len(batch)} sequences and {len(ref_logps)} reference "
                f"log-probs; expected an even number of interleaved chosen/rejected rows and one "
                f"reference log-prob per row"
            )
        global_pairs = self._all_reduce_sums({"pairs": len(batch) // 2})["pairs"]
        self.policy.set_lr(lr)
        self.policy.model.train()
        self.policy.zero_grad()
        sums: dict[str, float] = {}
        plan = self._micro_batches(batch, unit=2)
        for k, rows in enumerate(plan):
            self.policy.start_micro_batch(last=k == len(plan) - 1)
            mb = self._rows(batch, rows, unit=2)
            lp, _ = self._token_logprobs(self.policy.model, mb, temperature=1.0)
            if not rows:  # zero-weight work (see _micro_batches)
                self.policy.backward(lp.sum() * 0.0)
                continue
            ref = ref_logps[rows].to(self.device, torch.float32)
            seq = algo.sequence_logps(lp, mb.loss_mask.to(self.device))
            out = algo.dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta, label_smoothing)
            self.policy.backward(out.losses.sum() / max(global_pairs, 1) * self.world_size)
            margin = out.chosen_rewards - out.rejected_rewards
            _add(sums, "loss", float(out.losses.detach().sum()))
            _add(sums, "chosen_reward", float(out.chosen_rewards.sum()))
            _add(sums, "rejected_reward", float(out.rejected_rewards.sum()))
            _add(sums, "reward_margin", float(margin.sum()))
            _add(sums, "accuracy", float((margin > 0).sum()))
        outcome = self.policy.clip_and_step(self.cfg.grad_clip)
        self.step += 1
        stats = {k: v / max(global_pairs, 1) for k, v in self._all_reduce_sums(sums).items()}
        stats.update(_step_stats([outcome]), lr=lr, pairs=global_pairs)
        return stats

    def _all_reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        """Sums over the ranks; `_max` stats (the same keys on every rank) by max."""
        out = {}
        for keys, op in (
            (sorted(k for k in sums if not k.endswith("_max")), dist.ReduceOp.SUM),
            (sorted(k for k in sums if k.endswith("_max")), dist.ReduceOp.MAX),
        ):
            if keys:
                t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
                dist.all_reduce(t, op=op)
                out.update(zip(keys, t.tolist(), strict=True))
        return out

    # -- weights out ----------------------------------------------------------------------------------
    def _full_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Collective: every rank must call it; rank 0 receives the full tensors on CPU, in `dtype`
        (default: model.dtype, what the engines run and HF exports hold; under mixed precision that is
        the bf16 rounding of the fp32 masters). For the HF export only: syncs stream (`send_weights`).
        A LoRA policy's are the merged base's (`actors.lora_model.merged_weights`)."""
        dtype = self.dtype if dtype is None else dtype
        if self.policy.peft is None:
            sd = self.policy.full_state_dict(dtype)
        else:
            rank0 = self.rank == 0
            sd = {}
            for name, full in self._merged_stream(dtype):
                if rank0:
                    sd[name] = full.detach().to("cpu", copy=True)
        if self.tied:
            sd.pop("lm_head.weight", None)  # the engine ties it to the embedding itself
        return sd

    def _merged_meta(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return merged_meta(self.policy.weight_meta())

    def _merged_stream(self, dtype: torch.dtype | None) -> Any:
        return merged_weights(self.policy.stream_weights, self._lora_scale(), dtype)

    def _lora_scale(self) -> float:
        return float(self.cfg.lora.alpha) / self.cfg.lora.rank

    def _lora_settings(self) -> dict[str, Any] | None:
        c = self.cfg.lora
        if not c.rank:
            return None
        return {
            "rank": c.rank,
            "alpha": c.alpha,
            "dropout": c.dropout,
            "target_modules": list(c.target_modules),
        }

    # -- weights out to the engines: vLLM's weight-transfer protocol (actors.weight_transfer) ----------
    def init_weight_transfer(
        self, backend: str, engines: list[Any], workers_per_engine: int, bucket_mb: int, timeout_s: float
    ) -> None:
        """Collective: every rank builds its vLLM trainer engine for `backend`; rank 0, the sender, opens
        the transfer with every engine (nccl/gloo: a group of rank 0 and the engines' workers, with its
        own TCPStore at rank 0, apart from the learner's process group). Called after start and again
        after a restart of either side; the previous transfer is dropped first."""
        from actors import weight_transfer as wt

        if self.transfer is not None:
            self.transfer.shutdown()
        self.adapter_sync = backend == LORA_ADAPTER
        if self.adapter_sync:  # the adapter alone, through vLLM's LoRA loading
            c = self.cfg.lora
            self.transfer = AdapterSender(
                lambda: self.policy.weight_meta(adapter_only=True),
                lambda dtype: self.policy.stream_weights(dtype, adapter_only=True),
                self.dtype,
                engines,
                lora.adapter_config(c.rank, c.alpha, c.dropout, c.target_modules, self.model_path),
                self.rank == 0,
                timeout_s,
            )
            return
        meta, stream = self.policy.weight_meta, self.policy.stream_weights
        if self.policy.peft is not None:  # learner.lora.sync=merged: W + alpha/r B A, rounded once
            meta, stream = self._merged_meta, self._merged_stream
        # Streamed from the shards on every rank (ipc: each rank exports handles to its own full copies).
        self.weight_source = wt.StreamedWeights(
            meta,
            stream,
            self.dtype,
            "cuda" if backend in ("nccl", "ipc") else "cpu",
            frozenset({"lm_head.weight"}) if self.tied else frozenset(),  # the engine ties it itself
        )
        # Only the sender of a collective opens an endpoint; the other ranks' address is never read.
        master = (ray.util.get_node_ip_address(), self.free_port()) if self.rank == 0 else ("", 0)
        world = 1 + len(engines) * workers_per_engine
        largest = max(wt.nbytes(m) for m in self.weight_source.metadata())
        info = wt.trainer_init_info(backend, self.rank, master, world, bucket_mb << 20, timeout_s, largest)
        self.weight_client = wt.EngineClient(engines, workers_per_engine, timeout_s)
        self.transfer = wt.trainer_init(info, self.weight_client, self.weight_source)

    def send_weights(self) -> dict[str, int] | None:
        """Collective: one full sync (vLLM's `send_weights`: start, chunks, finish). Rank 0 returns
        engine 0's completeness report (every engine checked its own; a failed check raises here)."""
        from actors import weight_transfer as wt

        if self.transfer is None:
            raise RuntimeError("send_weights before init_weight_transfer")
        if self.adapter_sync:  # the LoRA adapter (actors.lora_sender)
            try:
                self.transfer.send_weights(self.step)
            except BaseException:
                self.transfer = None  # set up again (the engines reset their folders) before the next
                raise
            return self.transfer.reports[0] if self.rank == 0 else None
        self.weight_client.manifest = wt.manifest_from(self.weight_source)
        try:
            self.transfer.send_weights()
        except BaseException:
            # A sync that failed half-way must not leave the engines inside an update (vLLM refuses to
            # start the next one): the gloo sender has already sent what their receive waited for (zeros,
            # `GlooTrainerWeightTransferEngine._drain`); close our end, then every engine ends its update
            # and refuses to generate until a full sync. The next sync sets the transfer up again
            # (`weight_transfer_ready`) and sends everything.
            self.transfer.shutdown()
            self.transfer = None
            if self.rank == 0:
                self.weight_client.abort_weight_update()
            raise
        return self.weight_client.reports[0] if self.rank == 0 else None

    def release_memory(self) -> int:
        """Return PyTorch's cached blocks to the device: a colocated vLLM engine wakes next, and it maps
        its memory itself, so blocks this process keeps cached would be missing from its budget. Bytes
        released (0 on cpu: no device cache to return)."""
        if self.device_kind != "cuda":
            return 0
        held = torch.cuda.memory_reserved()
        gc.collect()  # tensors only a reference cycle still holds
        torch.cuda.empty_cache()
        return held - torch.cuda.memory_reserved()

    def weight_transfer_ready(self) -> bool:
        """False after a failed sync until `init_weight_transfer` runs again."""
        return self.transfer is not None

    def save_hf(self, out_dir: str, tokenizer_dir: str) -> str | None:
        """Write the full policy in HF format (safetensors + config + tokenizer) from rank 0."""
        sd = self._full_state_dict()
        if self.rank != 0:
            return None
        return str(write_hf(sd, self.model_path, self.dtype, out_dir, tokenizer_dir))

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> dict[str, Any] | None:
        """Collective: write model shards, optimizer state, RNG states and the step into `directory`.

        Rank 0 writes `learner_meta.json` last, after every rank finished, and returns the metadata
        with the list of files written (relative paths); the others return None. The caller makes the
        directory's appearance atomic (rename, completion marker).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.policy.save(d)
        rng = {"cpu": torch.get_rng_state(), "step": self.step}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, d / f"rng_rank{self.rank:05d}.pt")
        dist.barrier()
        if self.rank != 0:
            return None
        meta = {
            "format": 2,  # 2: the shards hold master weights in master_dtype (1: in dtype)
            "backend": self.backend_name,
            "world_size": self.world_size,
            "step": self.step,
            "dtype": self.dtype_name,
            "master_dtype": "float32",
            "zero_stage": self.cfg.zero_stage if self.backend_name == "deepspeed" else None,
            "model_path": self.model_path,
            "lora": self._lora_settings(),
        }
        tmp = d / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.rename(d / META_FILE)
        files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
        return {**meta, "files": files}

    def load_checkpoint(self, directory: str) -> int:
        """Collective: restore what `save_checkpoint` wrote; returns the restored step counter."""
        d = Path(directory)
        meta = read_meta(d)
        if meta["backend"] != self.backend_name:
            raise CheckpointError(
                f"{d / META_FILE}: written by learner.backend={meta['backend']}, this learner is "
                f"{self.backend_name}; export it to HF format and start from that instead"
            )
        same_world = meta["world_size"] == self.world_size
        if not same_world and self.backend_name == "deepspeed":
            raise CheckpointError(
                f"{d / META_FILE}: DeepSpeed checkpoint of {meta['world_size']} ranks, this learner has "
                f"{self.world_size}; resume with learner.num_ranks={meta['world_size']}"
            )
        if meta.get("lora") != self._lora_settings():
            raise CheckpointError(
                f"{d / META_FILE}: written with learner.lora={meta.get('lora')}, this learner has "
                f"{self._lora_settings()}; resume with the same learner.lora settings"
            )
        self.policy.load(d)
        rng_file = d / f"rng_rank{self.rank:05d}.pt"
        if same_world and rng_file.is_file():  # FSDP2 may reshard; RNG streams then start afresh
            rng = torch.load(rng_file, weights_only=True)  # tensors and an int: nothing that runs code
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])
        self.step = int(meta["step"])
        dist.barrier()
        return self.step

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _add(sums: dict[str, float], key: str, value: float) -> None:
    """Accumulate a stat over micro-batches: `_max` stats by max, the rest by sum."""
    if key.endswith("_max"):
        sums[key] = max(sums.get(key, value), value)
    else:
        sums[key] = sums.get(key, 0.0) + value


def _step_stats(outcomes: list[StepOutcome]) -> dict[str, float]:
    """grad_norm: mean over the applied optimizer steps (nan if none was); skipped_steps: how many had
    an inf/nan gradient norm and were dropped (the same on every rank: the norm is all-reduced)."""
    applied = [o.grad_norm for o in outcomes if o.applied]
    return {
        "grad_norm": sum(applied) / len(applied) if applied else float("nan"),
        "skipped_steps": float(len(outcomes) - len(applied)),
    }
