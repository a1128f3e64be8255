"""Checksums of a model's weights that survive the engine's fusing: the learner's q/k/v and gate/up
tensors arrive in vLLM as `qkv_proj` and `gate_up_proj`, so per transformer layer the tests sum the
elements and the squared elements in float64, which concatenation does not change."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

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
