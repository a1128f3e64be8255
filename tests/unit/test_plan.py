"""`rrm-ray plan`: parameter counts without weights, and the installed command on GPU and CPU configs,
failing with train's own messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rrm_ray.memory import Memory as Mem
from rrm_ray.memory import count_params, group_peak, param_count
from tests.readme import runs_command

REPO = Path(__file__).resolve().parents[2]
RRM_RAY = str(Path(sys.executable).with_name("rrm-ray"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RRM_RAY, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def table_row(out: str, first: str) -> list[str]:
    """The cells (split on runs of 2+ spaces) of the first table row starting with `first`."""
    import re

    line = next(line for line in out.splitlines() if line.split(" ", 1)[0] == first)
    return re.split(r"\s{2,}", line.strip())


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("llama", {}),
        ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
        ("qwen2", {}),
        ("mistral", {"head_dim": 32}),
        ("qwen3", {"head_dim": 24}),
    ],
)
def test_parameter_count_from_config_matches_the_model(kind, extra):
    """The formula against transformers' own modules (built on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {
        "vocab_size": 1000,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
        **extra,
    }
    config = AutoConfig.for_model(kind, **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert count_params(config.to_dict()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("path", "expected", "source"),
    [
        ("/models/Qwen2.5-7B-Instruct", 7_615_616_512, "built-in Qwen2.5-7B shape"),
        ("/models/DeepSeek-R1-Distill-Qwen-32B", 32_763_876_352, "built-in Qwen2.5-32B shape"),
        ("/shared/models/RRM-7B", 7_615_616_512, "built-in Qwen2.5-7B shape"),
        ("/models/Qwen2.5-72B", None, "unknown"),  # not 7B: no false match on the prefix
        ("/nowhere/mystery", None, "unknown"),
    ],
)
def test_parameter_count_of_paths_not_on_this_machine(path, expected, source):
    count, where = param_count(path)
    assert count == expected and where.startswith(source)


def test_parameter_count_reads_a_local_config_json(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "vocab_size": 10, "hidden_size": 4, "intermediate_size": 8, '
        '"num_hidden_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": true}'
    )
    # embeddings 40 + q,k,v,o 4 x 16 + mlp 3 x 32 + 2 norms 8 + final norm 4
    assert param_count(str(tmp_path)) == (40 + 64 + 96 + 8 + 4, "config.json")


def test_peak_of_a_shared_gpu_is_the_learner_plus_one_awake_engine():
    memory = {"rollout": Mem(60.0, 1.0, ""), "judge": Mem(30.0, 1.0, ""), "learner": Mem(20.0, None, "")}
    assert group_peak(["rollout", "learner", "judge"], memory) == (81.0, "rollout awake")
    assert group_peak(["learner"], memory) == (20.0, "learner works")
    assert group_peak(["rollout", "learner"], {**memory, "learner": Mem(None, None, "")}) == (None, "unknown")


@runs_command("plan")
def test_plan_of_the_1x8_profile_with_a_colocated_judge():
    done = cli(
        "plan", "configs/grpo_gpu_1x8.yaml", "judge.enabled=true", "judge.num_engines=4",
        "cluster.colocate=[[rollout,judge]]",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert table_row(out, "rollout+judge") == [
        "rollout+judge", "4", "CPU 8, GPU 1", "PACK", "rollout 1/2, judge 1/2", "node0: 4 (0-3)"
    ]  # fmt: skip
    assert table_row(out, "learner")[:5] == ["learner", "4", "CPU 8, GPU 1", "STRICT_PACK", "learner 1"]
    assert "GPUs reserved: 8 (rollout+judge 4x1 + learner 4x1; a shared bundle counts once)" in out
    rollout = table_row(out, "rollout")
    assert rollout[:6] == ["rollout", "4", "0.5", "1", "judge", "level 1: weights to CPU memory"]
    assert rollout[7].startswith("7.62B (built-in Qwen2.5-7B shape")
    assert table_row(out, "judge")[:5] == ["judge", "4", "0.5", "1", "rollout"]
    assert "weight sync: collective (rollout.weight_sync=auto; vLLM engine 'nccl')" in out
    peak = next(line for line in out.splitlines() if line.startswith("rollout+judge") and "awake" in line)
    # 0.85 x 80 + the rollout's 2 x 1 GiB sync buffers (weight_bucket_mb) + a sleeping judge's 1 GiB
    assert peak.split()[1:] == ["71.0", "rollout", "awake", "fits"]


@runs_command("plan")
def test_plan_of_a_cpu_config_says_sleep_frees_nothing():
    done = cli("plan", "configs/demo_rrm.yaml", "cluster.colocate=[[rollout,judge]]")
    assert done.returncode == 0, done.stderr
    assert "sleep frees no memory on cpu" in done.stdout
    assert table_row(done.stdout, "rollout+judge")[1:5] == ["1", "CPU 1", "PACK", "rollout 1/2, judge 1/2"]
    assert "level 1: weights to CPU memory; cpu: frees nothing" in table_row(done.stdout, "judge")


@runs_command("plan", "train")
def test_a_bad_config_fails_plan_and_train_alike():
    """12 GPUs on the 8 the profile declares: validation, before Ray, for both commands."""
    args = ["configs/grpo_gpu_1x8.yaml", "rollout.num_engines=8"]
    plan, train = cli("plan", *args), cli("train", *args)
    assert plan.returncode == train.returncode == 2
    assert plan.stderr == train.stderr
    assert (
        "config error: cluster.gpus_per_node: the job asks for 12 GPUs (rollout 8x1 + learner 4x1;"
        in plan.stderr
    )


@runs_command("plan")
def test_a_job_its_declared_cluster_cannot_place_fails_with_trains_lines():
    done = cli(
        "plan", "configs/grpo_gpu_2x8.yaml", "learner.num_ranks=12", "data.prompts_per_step=48",
        "rollout.num_engines=4",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "the cluster cannot hold this job:",
        "  learner: STRICT_PACK needs 12 x {'GPU': 1.0} on one node (2 node(s) with GPU 8/8)",
    ]


def test_the_32b_judge_profile_counts_what_a_first_gpu_run_would_hold():
    """Issue 23, item 9, pinned on one profile (Qwen2.5-7B policy, 8 FSDP2 ranks sharing the rollout's
    GPUs over IPC, an RRM-32B judge at TP 4): the rollout's receive buckets and sleep residue, the
    learner's unsharded root, sync stream and allocator slack, and the learner's resident share (its
    cache released) at the rollout's peak."""
    out = cli("plan", "configs/grpo_rrm32b_judge_2x8.yaml").stdout.split("GPU memory per GPU")[1]
    rollout, learner = table_row(out, "rollout"), table_row(out, "learner")
    assert rollout[1:3] == ["50.0", "1.0"]  # 0.6 x 80 + 2 x 1 GiB buckets; asleep: context + graphs
    assert "+ sync buffers 2.00; asleep: context, CUDA graphs 1" in rollout[3]
    assert learner[1] == "23.1"
    assert learner[3] == (
        "masters 3.5 + Adam 7.1 + grads 3.5 (over 8 ranks) + unsharded root and 2 layers 2.9 + sync stream "
        "3.05 + allocator slack 2.0 + context 1; activations not counted"
    )  # the stream: the 1.02 GiB embedding gathered + IPC's 2 buffers, each >= that embedding
    assert table_row(out, "rollout+learner")[1:3] == ["65.2", "rollout awake"]  # 50.0 + 15.2 resident
    assert table_row(out.split("peak per GPU")[1], "judge")[-1] == "fits"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # ZeRO-2 keeps whole bf16 weights and a whole reference on every rank: not divided by the ranks
        (["learner.backend=deepspeed", "learner.zero_stage=2", "algorithm.kl_coef=0.01"],
         "+ full weights (ZeRO-2) 14.2 + reference 14.2 +"),
        # ZeRO-3 offloading both: bf16 gradients stay; masters, Adam, fp32 grads, weights go to host
        (["learner.backend=deepspeed", "learner.zero_stage=3", "learner.offload_params=true",
          "learner.offload_optimizer=true"], "grads 3.5 (over 4 ranks) + unsharded root and 2 layers 2.9"),
        (["learner.backend=deepspeed", "learner.zero_stage=3"], "+ weights partition (ZeRO-3) 3.5 +"),
    ],
)  # fmt: skip
def test_zero_weights_by_stage(overrides, expected):
    out = cli("plan", "configs/grpo_gpu_1x8.yaml", *overrides).stdout.split("GPU memory per GPU")[1]
    assert expected in table_row(out, "learner")[3], table_row(out, "learner")


@runs_command("plan")
def test_plan_of_the_lora_profile_shows_the_smaller_learner_and_sync():
    full, lora = cli("plan", "configs/train_rrm_7b.yaml"), cli("plan", "configs/train_rrm_7b_lora.yaml")
    assert full.returncode == lora.returncode == 0, (full.stderr, lora.stderr)
    assert "per sync and engine: 14.2 GiB, the full weights in bfloat16" in full.stdout
    assert "per sync and engine: 308.0 MiB, the LoRA adapter (rank 64 on 7 linears per layer)" in lora.stdout
    assert "weight sync: the LoRA adapter only, through vLLM's LoRA loading" in lora.stdout
    memory = [line for line in full.stdout.splitlines() if line.startswith("learner") and "masters" in line]
    assert memory[0].split()[1] == "36.6"
    memory = [line for line in lora.stdout.splitlines() if line.startswith("learner") and "LoRA" in line]
    assert memory[0].split()[1] == "13.6" and "frozen base 7.1 (over 2 ranks) + LoRA 161.5M" in memory[0]
    merged = cli("plan", "configs/train_rrm_7b_lora.yaml", "learner.lora.sync=merged")
    assert (
        "per sync and engine: 14.2 GiB, the full weights (LoRA merged into them) in bfloat16" in merged.stdout
    )
