"""The DeepSpeed config the learner builds, and the checkpoint-metadata errors (no processes started)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from actors.backends.zero import ds_config
from actors.export import export_checkpoint_to_hf
from actors.model_io import CheckpointError, read_meta
from rrm_ray.config import LearnerConfig

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def learner(**kw: object) -> LearnerConfig:
    return dataclasses.replace(
        LearnerConfig(lr=3e-4, adam_beta1=0.8, adam_beta2=0.95, weight_decay=0.1), **kw
    )


def test_training_config_matches_torch_adamw_and_never_rescales_the_loss():
    c = ds_config(learner(grad_clip=0.5), torch.float32, CPU, frozen=False)
    assert c["gradient_accumulation_steps"] == 1  # the engine must not divide our loss
    assert c["zero_optimization"] == {"stage": 3}  # default stage
    assert c["gradient_clipping"] == 0.5
    opt = c["optimizer"]
    assert opt["type"] == "AdamW"
    assert opt["params"] == {
        "lr": 3e-4,
        "betas": [0.8, 0.95],
        "eps": 1e-8,
        "weight_decay": 0.1,
        "torch_adam": True,
    }
    assert not c["bf16"]["enabled"] and not c["fp16"]["enabled"]


def test_frozen_reference_has_no_optimizer():
    c = ds_config(learner(zero_stage=3), torch.float32, CPU, frozen=True)
    assert "optimizer" not in c and "gradient_clipping" not in c


@pytest.mark.parametrize(
    ("dtype", "bf16", "fp16"),
    [(torch.bfloat16, True, False), (torch.float16, False, True), (torch.float32, False, False)],
)
def test_precision_follows_the_model_dtype(dtype, bf16, fp16):
    c = ds_config(learner(), dtype, CUDA, frozen=False)
    assert c["bf16"]["enabled"] is bf16 and c["fp16"]["enabled"] is fp16


def test_offload_on_gpu():
    c = ds_config(
        learner(zero_stage=3, offload_optimizer=True, offload_params=True), torch.bfloat16, CUDA, False
    )
    assert c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("overrides", "device", "message"),
    [
        ({"zero_stage": 1}, CPU, "zero_stage must be 2 or 3"),
        ({"zero_stage": 2, "offload_params": True}, CUDA, "offload_params needs learner.zero_stage=3"),
        ({"offload_optimizer": True}, CPU, "cuda only"),
    ],
)
def test_bad_deepspeed_settings_name_the_key(overrides, device, message):
    with pytest.raises(ValueError, match=message):
        ds_config(learner(**overrides), torch.float32, device, frozen=False)


def test_missing_metadata_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no learner_meta\.json"):
        read_meta(tmp_path)


def test_export_rejects_an_unknown_backend(tmp_path):
    (tmp_path / "learner_meta.json").write_text(json.dumps({"backend": "megatron", "dtype": "float32"}))
    with pytest.raises(CheckpointError, match="unknown backend 'megatron'"):
        export_checkpoint_to_hf(tmp_path, "unused", tmp_path / "out")
