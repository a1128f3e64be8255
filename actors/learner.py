"""Learner actor: one rank of an FSDP2-sharded policy (gloo on CPU, NCCL on GPU).

Every rank holds a shard of the parameters and optimizer state. Methods that touch the model are
collective: the driver calls them on all ranks at once (`ActorGroup.call_all` / `call_sharded`), each
rank with its own shard of the batch, and the ranks meet in FSDP's all-gathers and reduce-scatters.
The loss math lives in `rrm_ray.algo`; this class owns the model, the optimizer and the process group.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch
import torch.distributed as dist

from rrm_ray import algo
from rrm_ray.actor_group import Worker
from rrm_ray.batch import TrainBatch
from rrm_ray.weight_sync import buckets, manifest_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LearnerWorker(Worker):
    def __init__(
        self,
        model_path: str,
        dtype: str,
        device: str,
        learner: dict[str, Any],
        algorithm: dict[str, Any],
        temperature: float,
        seed: int,
    ) -> None:
        self.model_path = model_path
        self.dtype = DTYPES[dtype]
        self.device_kind = device
        self.cfg = learner
        self.algo_cfg = algorithm
        self.temperature = temperature
        self.seed = seed
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "cpu":
            torch.set_num_threads(int(learner["threads"]))
        self.step = 0

    # -- setup -----------------------------------------------------------------------------------------
    def init_process_group(self, master_addr: str, master_port: int) -> None:
        """Join the learner process group, then build the sharded model and the optimizer."""
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        backend = "gloo" if self.device_kind == "cpu" else "nccl"
        if self.device_kind == "cuda":
            torch.cuda.set_device(0)  # Ray exposes exactly the bundle's GPU to this actor
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        torch.manual_seed(self.seed)
        self.device = torch.device("cpu" if self.device_kind == "cpu" else "cuda")
        self.model = self._build_model()
        self.reference = self._build_model(frozen=True) if self.algo_cfg["kl_coef"] > 0 else None
        c = self.cfg
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=c["lr"],
            betas=(c["adam_beta1"], c["adam_beta2"]),
            weight_decay=c["weight_decay"],
        )

    def _build_model(self, frozen: bool = False) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device)
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        if self.cfg["gradient_checkpointing"] and not frozen:
            model.gradient_checkpointing_enable()
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in model.model.layers:  # one FSDP unit per decoder layer, then the root
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if frozen:
            model.eval()
            model.requires_grad_(False)
        return model

    # -- forward passes ------------------------------------------------------------------------------
    def _token_logprobs(self, model: torch.nn.Module, mb: TrainBatch, with_entropy: bool = False):
        """Log-probs [B, L-1] of the tokens that follow each position, at the sampling temperature."""
        input_ids = mb.input_ids.to(self.device)
        logits = model(input_ids=input_ids, attention_mask=mb.attention_mask.to(self.device)).logits
        logits = logits[:, :-1].float() / self.temperature
        logprobs = algo.gather_logprobs(logits, input_ids[:, 1:], chunk_size=self.cfg["logprob_chunk"])
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = algo.entropy_from_logits(logits.detach(), chunk_size=self.cfg["logprob_chunk"])
        return logprobs, entropy

    def _micro_batches(self, batch: TrainBatch) -> list[TrainBatch]:
        size = self.cfg["micro_batch_size"]
        return [batch.select(slice(i, i + size)).trimmed() for i in range(0, len(batch), size)]

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, reference: bool) -> torch.Tensor:
        """Log-probs of the current policy (or the frozen reference) for this rank's shard, [B, L-1]."""
        model = self.reference if reference else self.model
        assert model is not None, "reference log-probs asked for but algorithm.kl_coef == 0"
        out = torch.zeros_like(batch.loss_mask)
        for start in range(0, len(batch), self.cfg["micro_batch_size"]):
            mb = batch.select(slice(start, start + self.cfg["micro_batch_size"])).trimmed()
            lp, _ = self._token_logprobs(model, mb)
            out[start : start + len(mb), : lp.shape[1]] = lp.cpu()
        return out

    # -- the update ----------------------------------------------------------------------------------
    def train_step(
        self,
        batch: TrainBatch,
        mini_batch_tokens: list[int],
        lr: float,
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One GRPO update on this rank's shard: `len(mini_batch_tokens)` optimizer steps.

        `mini_batch_tokens[m]` is the number of valid response tokens of mini-batch m summed over ALL
        ranks; dividing the summed token losses by it (times world size, as FSDP averages gradients)
        makes the loss a true token mean whatever the micro-batch split and rank count.
        """
        a = self.algo_cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        sums: dict[str, float] = {}
        grad_norms = []
        size = len(batch) // len(mini_batch_tokens)
        for m, global_tokens in enumerate(mini_batch_tokens):
            mini = batch.select(slice(m * size, (m + 1) * size))
            old_mini = None if old_logprobs is None else old_logprobs[m * size : (m + 1) * size]
            ref_mini = None if ref_logprobs is None else ref_logprobs[m * size : (m + 1) * size]
            self.optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(mini), self.cfg["micro_batch_size"]):
                sl = slice(start, start + self.cfg["micro_batch_size"])
                mb = mini.select(sl).trimmed()
                width = mb.loss_mask.shape[1]
                lp, entropy = self._token_logprobs(self.model, mb, with_entropy=True)
                mask = mb.loss_mask.to(self.device)
                # One update per batch is exactly on-policy: old log-probs equal the current ones.
                old = lp.detach() if old_mini is None else old_mini[sl][:, :width].to(self.device)
                out = algo.policy_loss(
                    lp,
                    old,
                    mb.advantages.to(self.device),
                    mask,
                    clip_low=a["clip_low"],
                    clip_high=a["clip_high"],
                    rollout_logprobs=mb.rollout_logprobs.to(self.device),
                    tis_cap=a["tis_cap"],
                )
                loss_sum = out.loss_sum
                if ref_mini is not None:
                    kl = algo.masked_sum(algo.kl_k3(lp, ref_mini[sl][:, :width].to(self.device)), mask)
                    loss_sum = loss_sum + a["kl_coef"] * kl
                    _add(sums, "kl_sum", float(kl))
                (loss_sum / max(global_tokens, 1) * self.world_size).backward()
                for k, v in out.stats.items():
                    _add(sums, k, float(v))
                _add(sums, "entropy_sum", float(algo.masked_sum(entropy, mask)))
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            grad_norms.append(float(grad_norm))
            self.optimizer.step()
        self.step += 1
        totals = self._all_reduce_sums(sums)
        stats = algo.stats_to_means(totals)
        stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
        stats["lr"] = lr
        return stats

    def _all_reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    # -- weights out ----------------------------------------------------------------------------------
    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: every rank must call it; rank 0 receives the full tensors on CPU."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.tied:
            sd.pop("lm_head.weight", None)  # the engine ties it to the embedding itself
        return sd

    def export_weights(self, bucket_mb: int) -> tuple[list, list[ray.ObjectRef]] | None:
        """Rank 0 returns (manifest, bucket refs) in the object store; the others return None."""
        sd = self._full_state_dict()
        if self.rank != 0:
            return None
        named = list(sd.items())
        refs = [ray.put(b) for b in buckets(named, bucket_mb * 1024 * 1024)]
        return manifest_of(named), refs

    def save_hf(self, out_dir: str, tokenizer_dir: str) -> str | None:
        """Write the full policy in HF format (safetensors + config + tokenizer) from rank 0."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        sd = self._full_state_dict()
        if self.rank != 0:
            return None
        config = AutoConfig.from_pretrained(self.model_path)
        model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        model.load_state_dict(sd, strict=not self.tied)
        if self.tied:
            model.tie_weights()
        tmp = out_dir + ".partial"
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        if os.path.isdir(out_dir):
            import shutil

            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
        return out_dir

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """Log-probs (temperature 1) of a fixed sequence: a functional checksum of the weights."""
        ids = torch.tensor([token_ids], device=self.device)
        logits = self.model(input_ids=ids).logits[:, :-1].float()
        return algo.gather_logprobs(logits, ids[:, 1:])[0].tolist()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value
