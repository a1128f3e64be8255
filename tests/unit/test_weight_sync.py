import pytest
import torch

from rrm_ray.weight_sync import (
    SyncReceipt,
    WeightSyncError,
    buckets,
    checksums_match,
    layer_checksums,
    manifest_of,
)


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
