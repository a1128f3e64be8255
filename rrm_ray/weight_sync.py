"""Learner -> rollout weight transfer, the pure part: which method, buckets, the completeness check.

`rollout.weight_sync` (auto | collective | ipc | object_store) names the method
(`resolve_weight_sync` makes it concrete, `vllm_backend` names the vLLM
weight-transfer engine that carries it; the transport itself is `actors.weight_transfer`). The
learner's rank 0 sends the full state dict in size-bounded chunks (`rollout.weight_bucket_mb`; a
parameter larger than the bound travels alone). The engine loads each chunk as it arrives and records
what it saw; `SyncReceipt.verify()` then proves the transfer was complete before generation resumes:
every parameter of the manifest seen exactly once, with the announced shape and dtype, and nothing
unexpected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rrm_ray.config import JobConfig, one_of, require
from rrm_ray.placement import placement_layout

if TYPE_CHECKING:  # names and sizes of tensors only: config validation imports this module without torch
    import torch


class WeightSyncError(RuntimeError):
    """The engine did not receive exactly the learner's parameters."""


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str


def manifest_of(named: Iterable[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(n, tuple(t.shape), str(t.dtype)) for n, t in named]


def buckets(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors in order into lists whose total size stays within `bucket_bytes`."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    current: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > bucket_bytes:
            yield current
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    if current:
        yield current


@dataclass
class SyncReceipt:
    """What an engine received during one sync, checked against the learner's manifest."""

    manifest: list[TensorMeta]
    seen: dict[str, int] = field(default_factory=dict)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    buckets: int = 0
    bytes: int = 0

    def record(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        expected = {m.name: m for m in self.manifest}
        self.buckets += 1
        for name, tensor in bucket:
            self.seen[name] = self.seen.get(name, 0) + 1
            self.bytes += tensor.numel() * tensor.element_size()
            meta = expected.get(name)
            if meta is None:
                self.unexpected.append(name)
            elif tuple(tensor.shape) != meta.shape or str(tensor.dtype) != meta.dtype:
                self.mismatched.append(
                    f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, expected {meta.shape} {meta.dtype}"
                )

    def verify(self) -> dict[str, int]:
        missing = [m.name for m in self.manifest if m.name not in self.seen]
        duplicated = [n for n, c in self.seen.items() if c > 1]
        problems = []
        for label, items in (
            ("missing", missing),
            ("received twice", duplicated),
            ("not in the manifest", self.unexpected),
            ("shape/dtype mismatch", self.mismatched),
        ):
            if items:
                shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
                problems.append(f"{len(items)} {label}: {shown}")
        if problems:
            raise WeightSyncError("weight sync incomplete: " + "; ".join(problems))
        return {"params": len(self.seen), "buckets": self.buckets, "bytes": self.bytes}


WEIGHT_SYNC_METHODS = ("auto", "collective", "ipc", "object_store")


def resolve_weight_sync(requested: str, device: str, colocated: bool, fsdp2: bool) -> str:
    """`rollout.weight_sync` made concrete (the engines receive through `vllm_backend` of it).

    auto: engines on other GPUs (or on cpu) -> collective (nccl on cuda, gloo on cpu); engines sharing
    the learner's GPUs -> ipc, which needs every learner rank to hold full tensors on its own GPU, one
    parameter at a time (FSDP2's DTensors do; DeepSpeed ZeRO's gather does not fit vLLM's IPC engine),
    else object_store (NCCL cannot put two ranks of one group on one GPU). object_store is otherwise
    never chosen: it stays for engines that cannot join a collective with the learner (no NCCL/gloo
    route between their nodes, e.g. across clusters or firewalls) and for debugging a transfer.
    """
    key = "rollout.weight_sync"
    one_of(requested, key, WEIGHT_SYNC_METHODS)
    gpu_shared = device == "cuda" and colocated
    if requested == "auto":
        return ("ipc" if fsdp2 else "object_store") if gpu_shared else "collective"
    require(
        requested != "ipc" or (device == "cuda" and fsdp2),
        key,
        "ipc (CUDA IPC) needs cluster.device=cuda and learner.backend=fsdp2; use collective or object_store",
    )
    require(
        requested != "collective" or not gpu_shared,
        key,
        "collective: the engines share the learner's GPUs and NCCL cannot hold two ranks on one GPU; "
        "use ipc (fsdp2) or object_store",
    )
    return requested


LORA_ADAPTER = "lora_adapter"  # learner.lora.sync=adapter: vLLM's LoRA loading, not its weight transfer


def weight_sync_method(cfg: JobConfig) -> str:
    """The job's method; colocated = the rollout shares the learner's bundles (`cluster.colocate`).
    A LoRA policy with `learner.lora.sync=adapter` syncs its adapter only (`LORA_ADAPTER`: through
    vLLM's LoRA loading, `actors.lora_receiver`), whatever `rollout.weight_sync` says."""
    if cfg.learner.lora.rank and cfg.learner.lora.sync == "adapter":
        return LORA_ADAPTER
    colocated = "rollout" in placement_layout(cfg).roles["learner"].peers
    return resolve_weight_sync(
        cfg.rollout.weight_sync, cfg.cluster.device, colocated, cfg.learner.backend == "fsdp2"
    )


def vllm_backend(method: str, device: str) -> str:
    """The method's engine name in vLLM's `WeightTransferEngineFactory` (see actors.weight_transfer);
    `LORA_ADAPTER` is no such engine: it names itself."""
    if method == LORA_ADAPTER:
        return LORA_ADAPTER
    if method == "collective":
        return "nccl" if device == "cuda" else "gloo"
    return {"ipc": "ipc", "object_store": "rrm_object_store"}[method]
