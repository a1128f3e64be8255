"""The README's job commands as a user types them, through the installed `rrm-ray` script on the
tiny model: train (a quiet console, a driver killed between checkpoints and resumed), export, dpo,
judge and best-of-n. Assertions read what the user reads: the console, the files, the MLflow store."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pytest

from rrm_ray.checkpoint import is_complete
from tests.integration.conftest import REPO, RRM_RAY, rrm_ray_cli, tiny_overrides
from tests.integration.test_judge_actor import judge_overrides
from tests.readme import runs_command

pytestmark = pytest.mark.integration


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def train_until_checkpoint(args: list[str], step_dir: Path, timeout_s: float = 600) -> list[str]:
    """Start `rrm-ray train ARGS`, and kill -9 its whole session once `step_dir` is a complete
    checkpoint (a driver dying between checkpoints). Returns the console lines it printed."""
    proc = subprocess.Popen(
        [str(RRM_RAY), "train", *args],
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not is_complete(step_dir):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time:\n" + "".join(lines)[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    return lines


def baseline_line(console: str) -> str:
    (line,) = re.findall(r"held-out before training.*: (.*)", console)
    return line


@runs_command("train", "export")
def test_train_console_resume_after_a_kill_and_export(tiny_model, tmp_path):
    overrides = tiny_overrides(
        tiny_model, tmp_path, **{"trainer.total_steps": 3, "checkpoint.every": 1, "checkpoint.keep_last": 3}
    )
    ckpt = tmp_path / "ckpt"
    first = "".join(train_until_checkpoint(["configs/quickstart.yaml", *overrides], ckpt / "step_000001"))

    # A quiet console: the run id, where the actor logs go, the baseline; no worker output.
    assert re.search(r"^MLflow run [0-9a-f]{32} at sqlite:", first, flags=re.M), first
    (log_file,) = re.findall(r"^actor and engine logs: (\S+)$", first, flags=re.M)
    assert Path(log_file).parent == (ckpt / "logs").resolve()
    assert not [line for line in first.splitlines() if re.match(r"\((\w+ )?pid=", line)], first
    worker_output = Path(log_file).read_text()
    assert worker_output.count("--- ray worker pid") >= 4  # engine, 2 learner ranks, reward actor
    baseline = baseline_line(first)

    resumed = ok(rrm_ray_cli("train", "configs/quickstart.yaml", *overrides, "resume=auto", env=cli_env()))
    (start,) = (int(s) for s in re.findall(r"^resumed at step (\d+) from ", resumed, flags=re.M))
    assert start in (1, 2)  # the kill came after step 1's checkpoint, perhaps after step 2's too
    assert "held-out before training (the original run's baseline)" in resumed
    assert baseline_line(resumed) == baseline
    assert "steps 3 in" in resumed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("integration").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_before/reward_mean")] == [0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "reward/mean")]
    assert sorted(set(steps)) == [1, 2, 3]

    out = tmp_path / "hf"
    ok(rrm_ray_cli("export", str(ckpt / "step_000003"), "--out", str(out), "--dtype", "bfloat16"))
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # noqa: SIM118
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


@runs_command("dpo")
def test_dpo_with_rrm_labels(tiny_model, tmp_path):
    """Two samples per prompt, the judge picks (3 votes, forced choice so a random model always
    answers), DPO against reference log-probs taken once; the first update starts at loss log 2."""
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            "judge.enabled": True,
            "judge.model_path": tiny_model,
            "judge.mode": "direct",
            "judge.verdict": "choice",
            "judge.votes": 3,
            "judge.temperature": 1.0,
            "judge.max_new_tokens": 8,
            "judge.max_prompt_tokens": 400,
            "judge.max_model_len": 512,
            "judge.kv_cache_gib": 1,
            "judge.threads": 1,
            "dpo.max_prompts": 4,
            "dpo.pairs_per_step": 2,
            "dpo.epochs": 1,
        },
    )
    summary_file = tmp_path / "summary.json"
    console = ok(
        rrm_ray_cli(
            "dpo", "configs/dpo_rrm_cpu.yaml", "--summary-json", str(summary_file), *overrides, env=cli_env()
        )
    )
    assert "final policy (HF format)" in console
    summary = json.loads(summary_file.read_text())
    pairs = summary["pairs"]
    assert pairs["dpo/pairs_judged"] == 4 and pairs["judge/unparseable"] == 0
    assert pairs["dpo/pairs_used"] + pairs["dpo/pairs_undecided"] == 4  # odd votes: only identical pairs drop
    assert summary["steps"] == pairs["dpo/pairs_used"] // 2
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = summary["run_id"]
    first_loss = client.get_metric_history(run_id, "dpo/loss")[0]
    assert first_loss.step == 1 and abs(first_loss.value - math.log(2)) < 1e-4  # policy == reference
    assert client.get_metric_history(run_id, "dpo/grad_norm")[0].value > 0
    tables = [a.path for a in client.list_artifacts(run_id, "tables")]
    assert any("dpo_pairs" in t for t in tables)
    assert (tmp_path / "ckpt" / "final" / "config.json").is_file()


def forced_choice_judge(tiny_model: str) -> list[str]:
    choice = {"judge.mode": "direct", "judge.verdict": "choice", "judge.votes": 1}
    return [*judge_overrides(tiny_model, **choice), "cluster.local_num_cpus=4"]


@runs_command("judge")
def test_judge_command_writes_a_verdict_per_pair(tiny_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"query": "What is 2 + 2?", "response_a": "4.", "response_b": "5."},
        {"query": "Name a color.", "response_a": "Red.", "response_b": "Tea."},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "verdicts.jsonl"
    console = ok(
        rrm_ray_cli(
            "judge",
            "--data",
            str(pairs),
            "--out",
            str(out),
            "--config",
            "configs/judge_cpu.yaml",
            *forced_choice_judge(tiny_model),
            f"checkpoint.dir={tmp_path / 'run'}",
            env=cli_env(),
        )
    )
    assert f"2 pairs -> {out}" in console
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["query"] for w in written] == [r["query"] for r in rows]
    assert all(w["winner"] in ("a", "b") and w["votes"]["calls"] >= 1 for w in written)


@runs_command("best-of-n")
def test_best_of_n_command_picks_one_response_per_prompt(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Say hi.", "Count to 3.")))
    out = tmp_path / "picks.jsonl"
    console = ok(
        rrm_ray_cli(
            "best-of-n",
            "--data",
            str(prompts),
            "--n",
            "3",
            "--method",
            "knockout",
            "--out",
            str(out),
            "--config",
            "configs/judge_cpu.yaml",
            f"model.path={tiny_model}",
            "model.max_model_len=256",
            "rollout.max_new_tokens=8",
            *forced_choice_judge(tiny_model),
            f"checkpoint.dir={tmp_path / 'run'}",
            env=cli_env(),
        )
    )
    assert f"2 prompts x 3 responses -> {out}" in console
    picks = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(picks) == 2
    for pick in picks:
        assert len(pick["responses"]) == 3 and pick["best"] == pick["responses"][pick["pick"]]
        assert len(pick["comparisons"]) == 2  # knockout over 3: n - 1 matches
