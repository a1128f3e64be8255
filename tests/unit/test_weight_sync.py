import pytest
import torch

from rrm_ray.weight_sync import SyncReceipt, WeightSyncError, buckets, manifest_of
from tests.weight_checks import checksums_match, layer_checksums


def named():
    torch.manual_seed(0)
    return [
        ("model.embed_tokens.weight", torch.randn(10, 4)),
        ("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 4)),
        ("model.layers.0.self_attn.k_proj.weight", torch.randn(2, 4)),
        ("model.layers.0.self_attn.v_proj.weight", torch.randn(2, 4)),
        ("model.layers.1.mlp.down_proj.weight", torch.randn(4, 8)),
        ("model.norm.weight", torch.ones(4)),
    ]


def test_buckets_respect_the_bound_and_keep_order():
    items = named()
    out = list(buckets(items, bucket_bytes=64 * 4))  # 64 floats per bucket
    assert [n for b in out for n, _ in b] == [n for n, _ in items]
    for b in out:
        size = sum(t.numel() * 4 for _, t in b)
        assert size <= 64 * 4 or len(b) == 1  # an oversized tensor travels alone


def test_complete_transfer_verifies():
    items = named()
    receipt = SyncReceipt(manifest_of(items))
    for b in buckets(items, 100):
        receipt.record(b)
    report = receipt.verify()
    assert report["params"] == len(items) and report["buckets"] >= 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda items: items[:-1], "1 missing: model.norm.weight"),
        (lambda items: [*items, items[0]], "received twice: model.embed_tokens.weight"),
        (lambda items: [*items, ("extra.weight", torch.zeros(1))], "not in the manifest: extra.weight"),
        (
            lambda items: [(n, t.double()) if "norm" in n else (n, t) for n, t in items],
            "shape/dtype mismatch",
        ),
        (lambda items: [(n, t[:2]) if "embed" in n else (n, t) for n, t in items], "shape/dtype mismatch"),
    ],
)
def test_incomplete_transfer_is_an_error(mutate, message):
    items = named()
    receipt = SyncReceipt(manifest_of(items))
    for b in buckets(mutate(items), 100):
        receipt.record(b)
    with pytest.raises(WeightSyncError, match=message):
        receipt.verify()


def test_checksums_are_invariant_to_fusing_qkv():
    items = named()
    fused = [
        items[0],
        ("model.layers.0.self_attn.qkv_proj.weight", torch.cat([items[1][1], items[2][1], items[3][1]])),
        *items[4:],
    ]
    assert checksums_match(layer_checksums(items, True), layer_checksums(fused, True)) == []
    changed = [(n, t + 0.1 if "layers.1" in n else t) for n, t in fused]
    assert checksums_match(layer_checksums(items, True), layer_checksums(changed, True)) == ["layer1"]


# -- rollout.weight_sync: which method, which vLLM engine ---------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "device", "colocated", "fsdp2", "method"),
    [
        ("auto", "cpu", False, True, "collective"),
        ("auto", "cpu", True, True, "collective"),  # gloo: sharing CPU bundles is fine
        ("auto", "cuda", False, True, "collective"),
        ("auto", "cuda", True, True, "ipc"),
        ("auto", "cuda", True, False, "object_store"),  # deepspeed: neither IPC nor one-GPU NCCL
        ("object_store", "cpu", False, True, "object_store"),
        ("ipc", "cuda", True, True, "ipc"),
    ],
)
def test_weight_sync_resolution(requested, device, colocated, fsdp2, method):
    from rrm_ray.weight_sync import resolve_weight_sync

    assert resolve_weight_sync(requested, device, colocated, fsdp2) == method


@pytest.mark.parametrize(
    ("requested", "device", "colocated", "fsdp2", "message"),
    [
        ("nccl", "cuda", False, True, "allowed: auto, collective, ipc, object_store"),
        ("ipc", "cpu", False, True, "ipc .CUDA IPC. needs cluster.device=cuda"),
        ("ipc", "cuda", True, False, "learner.backend=fsdp2"),
        ("collective", "cuda", True, True, "NCCL cannot hold two ranks on one GPU"),
    ],
)
def test_weight_sync_rejects_what_cannot_work(requested, device, colocated, fsdp2, message):
    from rrm_ray.config import ConfigError
    from rrm_ray.weight_sync import resolve_weight_sync

    with pytest.raises(ConfigError, match=f"rollout.weight_sync: .*{message}"):
        resolve_weight_sync(requested, device, colocated, fsdp2)


def test_weight_sync_is_validated_with_the_config():
    from rrm_ray.config import ConfigError
    from rrm_ray.validation import load_config
    from rrm_ray.weight_sync import vllm_backend, weight_sync_method

    cfg = load_config(None, [])
    assert (weight_sync_method(cfg), vllm_backend("collective", "cpu")) == ("collective", "gloo")
    assert [vllm_backend(m, "cuda") for m in ("collective", "ipc", "object_store")] == [
        "nccl",
        "ipc",
        "rrm_object_store",
    ]
    with pytest.raises(ConfigError, match=r"rollout\.weight_sync"):
        load_config(None, ["rollout.weight_sync=ipc"])  # cpu
