"""Mixed precision on real learner groups: fp32 masters under bf16, bf16 tracks fp32, bad steps are skipped.

Real Ray actors (ActorGroup + LearnerWorker), 2 ranks over gloo (bf16 collectives work on CPU), the tiny
model. Each group runs the same batches:

    masters:  one GRPO step at lr 1e-6 in bf16 must change most fp32 master weights (pure bf16 AdamW
              rounds almost every such update away), and the HF export holds their bf16 rounding
    tracking: 3 GRPO steps at lr 1e-4, bf16-mixed vs fp32: the batch NLL before each step and the
              entropy agree within bf16 compute error
    skipping: a step whose loss is nan leaves the masters as they were and is counted in skipped_steps
    deepspeed: ZeRO-3 in bf16 keeps fp32 masters in its optimizer (the first and last checks again)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rrm_ray.batch import TrainBatch, build_batch, mini_batch_tokens, shard
from rrm_ray.clients.group import ActorGroup
from rrm_ray.config import AlgorithmConfig, LearnerConfig
from tests.integration.conftest import start_learner_group
from tests.integration.conftest import stop_learner_group as stop
from tests.integration.probes import master_weights, on_all

pytestmark = pytest.mark.integration

RANKS = 2
TINY_LR = 1e-6
LR = 1e-4
MOST = 0.5  # the fraction of fp32 masters one bf16 step at TINY_LR must change (measured: see below)
# |NLL_bf16 - NLL_fp32| per step (mean token NLL ~10.8 = ln 49152 on the random tiny model), and the
# same for the entropy. bf16 rounds the projection's inputs to 8 mantissa bits; measured max over the
# 3 steps: see the report printed by the test. Tolerances set with about 5x margin over the measurement.
NLL_TOL = 2.5e-3  # measured max 4.4e-4
ENTROPY_TOL = 5e-6  # measured max 8.3e-7 (a random model's softmax is nearly uniform)


def start(model: str, dtype: str, backend: str = "fsdp2", lr: float = LR, **learner: object) -> ActorGroup:
    cfg = LearnerConfig(backend=backend, num_ranks=RANKS, micro_batch_size=2, lr=lr, weight_decay=0.01)
    return start_learner_group(model, dtype, dataclasses.replace(cfg, **learner), AlgorithmConfig())


def make_batch(seed: int, n: int = 8, vocab: int = 1000, advantage: float | None = None) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(
            5, vocab, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g
        ).tolist()

    prompts = [ids(3, 6) for _ in range(n)]
    responses = [ids(4, 9) for _ in range(n)]
    rollout_lp = [(-11.0 + torch.rand(len(r), generator=g)).tolist() for r in responses]
    adv = torch.randn(n, generator=g).tolist() if advantage is None else [advantage] * n
    return build_batch(prompts, responses, rollout_lp, adv, pad_id=0)


def grpo_step(group: ActorGroup, batch: TrainBatch, lr: float) -> dict[str, float]:
    shards = shard(batch, RANKS)
    return group.call_sharded("train_step", shards, mini_batch_tokens=mini_batch_tokens(shards, 1), lr=lr)[0]


def batch_nll(group: ActorGroup, batch: TrainBatch) -> float:
    """Mean -log p of the response tokens under the current policy (what the loss is built from)."""
    shards = shard(batch, RANKS)
    lps = group.call_sharded("compute_logprobs", shards, reference=False)
    total = sum(float((lp * s.loss_mask).sum()) for lp, s in zip(lps, shards, strict=True))
    return -total / batch.num_tokens


def masters(group: ActorGroup) -> dict[str, torch.Tensor]:
    return on_all(group, master_weights)[0]


def changed_fraction(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    names = [k for k in a if k != "lm_head.weight"]  # tied to the embedding: count it once
    changed = sum(int((a[k] != b[k]).sum()) for k in names)
    return changed / sum(a[k].numel() for k in names)


@pytest.fixture(scope="module")
def bf16_run(ray_local, tiny_model, tmp_path_factory) -> dict:
    """fsdp2 in bf16: the master check at TINY_LR, the 3 tracking steps at LR, then a nan step."""
    tmp = tmp_path_factory.mktemp("mixed")
    group = start(tiny_model, "bfloat16")
    try:
        out: dict = {"before": masters(group)}
        out["step0"] = grpo_step(group, make_batch(0), TINY_LR)
        out["after"] = masters(group)
        out["hf_dir"] = group.call_all("save_hf", str(tmp / "hf"), tiny_model)[0]
        group.call_all("save_checkpoint", str(tmp / "ckpt"))
        out["ckpt"] = tmp / "ckpt"
        out["nll"], out["stats"] = [], []
        for seed in (1, 2, 3):
            out["nll"].append(batch_nll(group, make_batch(seed)))
            out["stats"].append(grpo_step(group, make_batch(seed), LR))
        before_nan = masters(group)
        out["nan_step"] = grpo_step(group, make_batch(4, advantage=float("nan")), LR)
        out["nan_unchanged"] = changed_fraction(before_nan, masters(group)) == 0.0
        out["after_nan"] = grpo_step(group, make_batch(5), LR)  # training goes on normally
        return out
    finally:
        stop(group)


@pytest.fixture(scope="module")
def fp32_run(ray_local, tiny_model) -> dict:
    group = start(tiny_model, "float32")
    try:
        grpo_step(group, make_batch(0), TINY_LR)  # the same first step as the bf16 run
        out: dict = {"nll": [], "stats": []}
        for seed in (1, 2, 3):
            out["nll"].append(batch_nll(group, make_batch(seed)))
            out["stats"].append(grpo_step(group, make_batch(seed), LR))
        return out
    finally:
        stop(group)


def test_one_bf16_step_at_lr_1e6_changes_most_fp32_masters(bf16_run, tiny_model):
    before, after = bf16_run["before"], bf16_run["after"]
    assert all(t.dtype == torch.float32 for t in after.values())  # fp32 masters under bf16 compute
    fraction = changed_fraction(before, after)
    print(f"measured: fraction of fp32 masters changed by one bf16 step at lr {TINY_LR}: {fraction:.4f}")
    assert fraction > MOST
    assert bf16_run["step0"]["skipped_steps"] == 0.0

    from safetensors.torch import load_file

    hf = Path(bf16_run["hf_dir"])
    exported = load_file(hf / "model.safetensors")
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in exported.values())
    # save_hf ran right after step 0: the export is exactly the masters rounded to bf16
    for name, t in exported.items():
        assert torch.equal(t, after[name].to(torch.bfloat16)), name


def test_checkpoint_holds_the_fp32_masters_and_exports_in_either_dtype(bf16_run, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from actors.export import export_checkpoint_to_hf
    from actors.model_io import read_meta

    ckpt, after = bf16_run["ckpt"], bf16_run["after"]
    meta = read_meta(ckpt)
    assert meta["dtype"] == "bfloat16" and meta["master_dtype"] == "float32"
    default = load_file(
        Path(export_checkpoint_to_hf(ckpt, tiny_model, tmp_path / "bf16")) / "model.safetensors"
    )
    full = load_file(
        Path(export_checkpoint_to_hf(ckpt, tiny_model, tmp_path / "fp32", dtype="float32"))
        / "model.safetensors"
    )
    for name, t in full.items():
        assert t.dtype == torch.float32 and torch.equal(t, after[name]), name  # the masters, exactly
        assert default[name].dtype == torch.bfloat16  # default: the run's model dtype
        assert torch.equal(default[name], after[name].to(torch.bfloat16)), name


def test_bf16_mixed_tracks_fp32_over_three_steps(bf16_run, fp32_run):
    nll = [abs(a - b) for a, b in zip(bf16_run["nll"], fp32_run["nll"], strict=True)]
    ent = [
        abs(a["entropy"] - b["entropy"]) for a, b in zip(bf16_run["stats"], fp32_run["stats"], strict=True)
    ]
    print(f"measured: bf16 vs fp32 NLL per step {bf16_run['nll']} vs {fp32_run['nll']}: |d| = {nll}")
    print(f"measured: bf16 vs fp32 entropy |d| per step = {ent}")
    assert max(nll) < NLL_TOL and max(ent) < ENTROPY_TOL
    assert fp32_run["nll"][2] != fp32_run["nll"][0]  # the steps did move the policy


def test_a_nan_step_is_skipped_and_counted(bf16_run):
    nan_step = bf16_run["nan_step"]
    assert nan_step["skipped_steps"] == 1.0
    assert nan_step["grad_norm"] != nan_step["grad_norm"]  # nan: no applied step to average
    assert bf16_run["nan_unchanged"]  # no update reached the masters
    assert bf16_run["after_nan"]["skipped_steps"] == 0.0
    assert bf16_run["after_nan"]["grad_norm"] > 0


@pytest.fixture(scope="module")
def zero3_bf16_run(ray_local, tiny_model) -> dict:
    group = start(tiny_model, "bfloat16", backend="deepspeed", zero_stage=3)
    try:
        out: dict = {"before": masters(group)}
        out["step0"] = grpo_step(group, make_batch(0), TINY_LR)
        out["after"] = masters(group)
        out["nan_step"] = grpo_step(group, make_batch(4, advantage=float("nan")), LR)
        out["nan_unchanged"] = changed_fraction(out["after"], masters(group)) == 0.0
        return out
    finally:
        stop(group)


def test_deepspeed_bf16_keeps_fp32_masters_and_skips_a_nan_step(zero3_bf16_run, bf16_run):
    run = zero3_bf16_run
    assert all(t.dtype == torch.float32 for t in run["after"].values())
    fraction = changed_fraction(run["before"], run["after"])
    print(f"measured: deepspeed zero3 bf16, fraction of fp32 masters changed at lr {TINY_LR}: {fraction:.4f}")
    assert fraction > MOST
    # Both backends start from the same weights and take the same first step in bf16.
    assert (
        abs(run["step0"]["grad_norm"] - bf16_run["step0"]["grad_norm"])
        < 1e-2 * bf16_run["step0"]["grad_norm"]
    )
    assert run["nan_step"]["skipped_steps"] == 1.0 and run["nan_unchanged"]
