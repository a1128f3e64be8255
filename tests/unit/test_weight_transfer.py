"""The gloo weight-transfer engines over a real gloo group, without an inference engine.

The trainer side is `GlooTrainerWeightTransferEngine` (vLLM's NCCL `send_weights` on a gloo group), the
worker side `GlooWeightTransferEngine.receive_weights`; both run in this process (the worker's receive
on a thread, as an engine would block in it), joined by a client that calls the worker directly. The
model is a plain module whose `load_weights` records what arrives, as `actors.vllm_ext` does in vLLM.
"""

from __future__ import annotations

import random
import socket
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

wt = pytest.importorskip("actors.weight_transfer")

from vllm.config.weight_transfer import WeightTransferConfig  # noqa: E402
from vllm.distributed.weight_transfer.packed_tensor import pack_tensors  # noqa: E402

from rrm_ray.weight_sync import SyncReceipt, WeightSyncError  # noqa: E402


def named() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(64, 16, generator=g),  # 4 KiB: above a 1 KiB bound
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(16, 8, generator=g),
        "model.layers.0.input_layernorm.weight": torch.randn(16, generator=g),
        "model.norm.weight": torch.randn(16, generator=g),
        "model.layers.0.step": torch.tensor([7], dtype=torch.int64),  # non-float: keeps its dtype
    }


class RecordingModel(torch.nn.Module):
    def __init__(self, manifest):
        super().__init__()
        self.receipt = SyncReceipt(manifest)
        self.loaded: dict[str, torch.Tensor] = {}

    def load_weights(self, weights):
        batch = [(n, t.clone()) for n, t in weights]
        self.receipt.record(batch)
        self.loaded.update(batch)


class DirectClient:
    """vLLM's client protocol straight onto worker-side engines in this process: each engine's call on
    its own thread (a collective blocks every member until all joined), rank offsets as `EngineClient`."""

    def __init__(self, workers: list[wt.GlooWeightTransferEngine]) -> None:
        self.workers = workers

    def _each(self, call) -> None:
        with ThreadPoolExecutor(len(self.workers)) as pool:
            for future in [pool.submit(call, e, w) for e, w in enumerate(self.workers)]:
                future.result()

    def init_weight_transfer_engine(self, info):
        self._each(lambda e, w: w.init_transfer_engine(w.parse_init_info(wt.engine_init_info(info, e, 1))))

    def start_weight_update(self):
        pass  # vLLM's layerwise reload needs a vLLM model; the integration tests run it

    def update_weights(self, info):
        self._each(lambda e, w: w.update_weights(info))

    def finish_weight_update(self, weight_version=None):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source_of(
    sd: dict[str, torch.Tensor], wire: torch.dtype = torch.float32, skip: frozenset[str] = frozenset()
) -> wt.StreamedWeights:
    """What the learner streams, from a plain dict (a backend's `weight_meta` / `stream_weights`)."""

    def stream(dtype: torch.dtype):
        for name, t in sd.items():
            yield name, t.to(dtype) if t.is_floating_point() else t

    return wt.StreamedWeights(
        lambda: [(n, tuple(t.shape), t.dtype) for n, t in sd.items()], stream, wire, "cpu", skip
    )


def transfer(
    sd: dict[str, torch.Tensor], bucket_bytes: int, manifest=None, engines: int = 1
) -> list[RecordingModel]:
    """One full sync from a trainer engine to `engines` single-worker engines; their models."""
    source = source_of(sd)
    models = [RecordingModel(manifest or wt.manifest_from(source_of(sd))) for _ in range(engines)]
    parallel = SimpleNamespace(data_parallel_index=0, world_size=1, rank=0)
    workers = [
        wt.GlooWeightTransferEngine(
            WeightTransferConfig(backend="gloo"),
            SimpleNamespace(parallel_config=parallel, model_config=None),
            torch.device("cpu"),
            model,
        )
        for model in models
    ]
    info = wt.trainer_init_info("gloo", 0, ("127.0.0.1", free_port()), 1 + engines, bucket_bytes, 60.0)
    trainer = wt.trainer_init(info, DirectClient(workers), source)
    trainer.send_weights()
    trainer.shutdown()
    for worker in workers:
        worker.shutdown()
    return models


@pytest.mark.parametrize(("bucket_bytes", "engines"), [(1024, 1), (1 << 20, 1), (0, 1), (1024, 3)])
def test_gloo_transfer_delivers_every_tensor_once(bucket_bytes, engines):
    sd = named()
    (model, *others) = transfer(sd, bucket_bytes, engines=engines)
    assert len(others) == engines - 1  # ranks 1..engines of one group: each got the same broadcast
    for other in others:
        assert other.receipt.verify() == model.receipt.verify()
    report = model.receipt.verify()
    assert report["params"] == len(sd)
    # 1 KiB: [embed] alone, [q, down] crosses the bound, [the rest]; 0: unpacked, one per tensor
    assert report["buckets"] == {1024: 3, 1 << 20: 1, 0: len(sd)}[bucket_bytes]
    for name, t in sd.items():
        assert torch.equal(model.loaded[name], t) and model.loaded[name].dtype == t.dtype


def test_a_parameter_the_learner_did_not_send_fails_the_check():
    sd = named()
    manifest = wt.manifest_from(source_of(sd))
    del sd["model.norm.weight"]
    with pytest.raises(WeightSyncError, match=r"1 missing: model\.norm\.weight"):
        transfer(sd, 1024, manifest=manifest)[0].receipt.verify()


def test_wire_dtype_casts_floats_only():
    source = source_of(named(), torch.bfloat16)
    dtypes = {m.name: m.dtype for m in source.metadata()}
    assert dtypes["model.norm.weight"] == torch.bfloat16 and dtypes["model.layers.0.step"] == torch.int64
    assert {n: t.dtype for n, t in source} == dtypes


def test_a_skipped_weight_is_neither_announced_nor_sent():
    """A tied lm_head: the engine ties it to the embedding itself, so the learner never sends it."""
    sd = {**named(), "lm_head.weight": torch.ones(64, 16)}
    source = source_of(sd, skip=frozenset({"lm_head.weight"}))
    assert "lm_head.weight" not in {m.name for m in source.metadata()}
    assert [n for n, _ in source] == list(named())


def test_the_ipc_buffer_holds_the_largest_tensor():
    """vLLM's packed IPC producer raises for any tensor bigger than its one reusable buffer
    (packed_tensor.py: "exceeds buffer_size_bytes"), and Qwen2.5-7B's bf16 embedding alone is
    152064 x 3584 x 2 bytes = 1039.5 MiB: the buffer grows to the largest tensor of the sync, never
    below the configured bucket."""
    embedding = wt.nbytes(wt.ParamMeta("model.embed_tokens.weight", torch.bfloat16, (152064, 3584)))
    assert embedding == 1_089_994_752
    info = wt.trainer_init_info("ipc", 0, ("", 0), 1, 64 << 20, 60.0, embedding)
    assert info.packed_buffer_size_bytes == embedding
    small = wt.trainer_init_info("ipc", 0, ("", 0), 1, 64 << 20, 60.0, 1 << 20)
    assert small.packed_buffer_size_bytes == 64 << 20


@pytest.mark.filterwarnings("ignore:.*exceeds buffer_size_bytes")  # vLLM's note: the tensor goes alone
@pytest.mark.parametrize("bound", [0, 1, 100, 1000, 5000])
def test_chunk_plan_cuts_where_vllm_packs(bound):
    rng = random.Random(bound)
    tensors = [(f"t{i}", torch.zeros(rng.randint(0, 600), dtype=torch.uint8)) for i in range(40)]
    it = iter(tensors)
    counts = []
    while (chunk := pack_tensors(it, lambda item: item[1], bound)) is not None:
        counts.append(len(chunk.names))
    assert wt.packed_chunks([t.numel() for _, t in tensors], bound) == counts
