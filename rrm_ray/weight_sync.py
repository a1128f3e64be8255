"""Learner -> rollout weight transfer, the pure part: which method, buckets, the completeness check.

`rollout.weight_sync` (auto | collective | ipc | object_store) names the method
(`rrm_ray.config.resolve_weight_sync` makes it concrete, `vllm_backend` names the vLLM
weight-transfer engine that carries it; the transport itself is `actors.weight_transfer`). The
learner's rank 0 sends the full state dict in size-bounded chunks (`rollout.weight_bucket_mb`; a
parameter larger than the bound travels alone). The engine loads each chunk as it arrives and records
what it saw; `SyncReceipt.verify()` then proves the transfer was complete before generation resumes:
every parameter of the manifest seen exactly once, with the announced shape and dtype, and nothing
unexpected.

Checksums compare the engine's weights with the learner's although the engine fuses some tensors
(q/k/v into `qkv_proj`, gate/up into `gate_up_proj`): per transformer layer we sum the elements and the
squared elements in float64, which concatenation does not change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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


_LAYER = re.compile(r"layers\.(\d+)\.")


def layer_checksums(named: Iterable[tuple[str, torch.Tensor]], skip_lm_head: bool) -> dict[str, list[float]]:
    """Per-layer [sum, sum of squares] in float64; invariant to how a layer's tensors are fused."""
    sums: dict[str, list[float]] = {}
    for name, tensor in named:
        if skip_lm_head and "lm_head" in name:
            continue
        match = _LAYER.search(name)
        group = f"layer{match.group(1)}" if match else ("embed" if "embed" in name else name.split(".")[-2])
        t = tensor.detach().to(torch.float64)
        acc = sums.setdefault(group, [0.0, 0.0])
        acc[0] += float(t.sum())
        acc[1] += float((t * t).sum())
    return sums


def checksums_match(a: dict[str, list[float]], b: dict[str, list[float]], rtol: float = 1e-5) -> list[str]:
    """Names of the groups whose checksums differ (empty when the two sides hold the same weights)."""
    bad = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        for x, y in zip(a[k], b[k], strict=True):
            if abs(x - y) > rtol * max(1.0, abs(x), abs(y)):
                bad.append(k)
                break
    return bad
