"""The learner's side of adapter-only weight sync (`learner.lora.sync: adapter`; the engine's side is
`actors.lora_receiver`).

Every learner rank streams the adapter's tensors from its shards (collective, in lockstep, the frozen
base never gathered); rank 0 keeps them, in the engines' dtype, under their PEFT file keys, puts them
into the object store once, and has every engine load them as a new adapter version
(`AdapterReceiver.load_adapter`), each checking that every tensor of the manifest arrived exactly once.
It offers what the learner asks of a vLLM trainer engine (`send_weights`, `shutdown`) and keeps the
engines' completeness reports in `reports`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ray
import torch

from rrm_ray import lora
from rrm_ray.weight_sync import TensorMeta


class AdapterSender:
    def __init__(
        self,
        meta: Callable[[], list[tuple[str, tuple[int, ...], torch.dtype]]],
        stream: Callable[[torch.dtype], Iterator[tuple[str, torch.Tensor]]],
        wire_dtype: torch.dtype,
        engines: list[Any],
        config: dict[str, Any],
        is_sender: bool,
        timeout_s: float,
    ) -> None:
        """`meta`/`stream`: the adapter's names, shapes and tensors (`Backend.weight_meta` /
        `stream_weights` with adapter_only); `config`: its `adapter_config.json`. The sender (rank 0)
        has every engine take adapters from now on (a restarted engine empties its folder)."""
        self.meta, self.stream, self.wire_dtype = meta, stream, wire_dtype
        self.engines, self.config, self.is_sender, self.timeout_s = engines, config, is_sender, timeout_s
        self.reports: list[dict[str, int]] = []
        if is_sender:
            ray.get([e.init_adapter_sync.remote() for e in engines], timeout=timeout_s)

    def manifest(self) -> list[TensorMeta]:
        return [TensorMeta(lora.file_key(n), shape, str(self.wire_dtype)) for n, shape, _ in self.meta()]

    def send_weights(self, version: int) -> None:
        """Collective: one adapter version to every engine, under a name never used before
        (`rrm_ray.lora.version_name`); raises if an engine's check or vLLM's load failed."""
        tensors = {}
        for name, full in self.stream(self.wire_dtype):
            if self.is_sender:
                tensors[lora.file_key(name)] = full.detach().to("cpu", copy=True)
        if not self.is_sender:
            return
        name = lora.version_name(uuid.uuid4().hex[:8], version)
        ref = ray.put(tensors)
        manifest = self.manifest()
        calls = [e.load_adapter.remote(name, self.config, ref, manifest) for e in self.engines]
        self.reports = ray.get(calls, timeout=self.timeout_s)

    def shutdown(self) -> None:
        """Nothing held open: every load is one call."""
