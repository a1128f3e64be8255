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


def start_train(args: list[str]) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`rrm-ray train ARGS` in its own session, its console lines collected as they come."""
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
    return proc, lines, reader


def own_checkpoint(root: Path, name: str, other: Path) -> Path | None:
    """The complete checkpoint `name` of the run under `root` that is not `other`'s, if there is one."""
    found = [p for p in root.glob(f"*/{name}") if is_complete(p) and p.parent != other]
    return found[0] if found else None


def train_until_checkpoint(args: list[str], root: Path, name: str, other: Path, timeout_s: float = 600):
    """Start `rrm-ray train ARGS`, and kill -9 its whole session once its run's checkpoint `name` is
    complete under `root` (a driver dying between checkpoints). Returns the console lines it printed."""
    proc, lines, reader = start_train(args)
    deadline = time.monotonic() + timeout_s
    try:
        while own_checkpoint(root, name, other) is None:
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time:\n" + "".join(lines)[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    return lines


def train_until_sigterm(args: list[str], timeout_s: float = 600) -> tuple[int, str]:
    """Start `rrm-ray train ARGS`, send its driver SIGTERM (as `rrm-ray stop` does) once it printed a
    step line, and wait for it to stop by itself. Returns (exit status, console)."""
    proc, lines, reader = start_train(args)
    deadline = time.monotonic() + timeout_s
    try:
        while not any(re.match(r"step +\d+ ", line) for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no step in time:\n" + "".join(lines)[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # the driver only, not its session
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        reader.join(timeout=10)
    return rc, "".join(lines)


def foreign_run(root: Path) -> Path:
    """Another run's complete checkpoint at a later step, written long ago, in the same checkpoint.dir."""
    other = root / "grpo-20200101-000000-beef"
    step = other / "step_000010"
    step.mkdir(parents=True)
    (step / "driver_state.json").write_text(
        json.dumps(
            {"step": 10, "data_position": 20, "mlflow_run_id": None, "extra": {}, "run_id": other.name}
        )
    )
    (step / "COMPLETE").write_text(
        json.dumps({"written_at": 0.0, "run_id": other.name, "step": 10, "files": {}})
    )
    return other


def baseline_line(console: str) -> str:
    (line,) = re.findall(r"held-out before training.*: (.*)", console)
    return line


SECRET = "hf_PLANTEDsecretVALUE0123456789"


@runs_command("train", "export")
def test_train_console_kill_sigterm_resume_and_export(tiny_model, tmp_path):
    """One run through the console script: killed (SIGKILL) after its first checkpoint, resumed and
    stopped by SIGTERM (a checkpoint, the run KILLED, exit 143), resumed again to the end, exported.
    Another run's later checkpoint sits in the same checkpoint.dir all along and is never used or
    touched; a token planted in cluster.env shows nowhere: console, job log, MLflow store, checkpoints."""
    mmlu = REPO / "tests" / "fixtures" / "downstream" / "mmlu_pro_sample.jsonl"
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            "trainer.total_steps": 5,
            "checkpoint.every": 1,
            "checkpoint.keep_last": 5,
            "cluster.env.HF_TOKEN": SECRET,
            # lm-eval on the starting policy (first run) and the final one (the resumed run's end)
            "trainer.downstream_eval.enabled": "true",
            "trainer.downstream_eval.tasks.mmlu_pro": str(mmlu),
            "trainer.downstream_eval.limit": 4,
        },
    )
    ckpt = tmp_path / "ckpt"
    other = foreign_run(ckpt)
    args = ["configs/quickstart.yaml", *overrides]
    first = "".join(train_until_checkpoint(args, ckpt, "step_000001", other))
    run_dir = own_checkpoint(ckpt, "step_000001", other).parent

    # A quiet console: the run and its folder, the run id, where the actor logs go, the baseline.
    assert f"run {run_dir.name}: checkpoints and the final policy go to {run_dir}" in first
    assert re.search(r"^MLflow run [0-9a-f]{32} at sqlite:", first, flags=re.M), first
    (log_file,) = re.findall(r"^actor and engine logs: (\S+)$", first, flags=re.M)
    assert Path(log_file).parent == (ckpt / "logs").resolve()
    assert not [line for line in first.splitlines() if re.match(r"\((\w+ )?pid=", line)], first
    worker_output = Path(log_file).read_text()
    assert worker_output.count("--- ray worker pid") >= 4  # engine, 2 learner ranks, reward actor
    baseline = baseline_line(first)

    # SIGTERM mid-run: the step in flight ends, a checkpoint is written, the run is KILLED, exit 143.
    rc, stopped = train_until_sigterm([*args, "resume=auto"])
    assert rc == 143, stopped[-3000:]
    assert "SIGTERM: stopping after the step in flight" in stopped
    (at,) = (
        int(s) for s in re.findall(r"stopped by SIGTERM after step (\d+); `resume=auto` continues", stopped)
    )
    assert is_complete(run_dir / f"step_{at:06d}") and f"from {run_dir}" in stopped
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("integration").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["rrm_ray.stopped_by"] == "SIGTERM"

    resumed = ok(rrm_ray_cli("train", *args, "resume=auto", env=cli_env()))
    (start,) = (int(s) for s in re.findall(r"^resumed at step (\d+) from ", resumed, flags=re.M))
    assert start == at  # exactly where the stop left it
    assert "held-out before training (the original run's baseline)" in resumed
    assert baseline_line(resumed) == baseline
    assert "steps 5 in" in resumed

    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_before/reward_mean")] == [0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "reward/mean")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]
    # downstream accuracy of the initial policy at step 0, of the final one at the last step; the
    # resumed run does not evaluate the initial policy again
    acc = client.get_metric_history(run.info.run_id, "downstream/mmlu_pro/acc")
    assert [m.step for m in acc] == [0, 5] and all(0 <= m.value <= 1 for m in acc)
    assert re.search(r"^downstream mmlu_pro: after \d\.\d{3}$", resumed, flags=re.M), resumed
    assert (run_dir / "final" / "config.json").is_file()
    assert sorted(p.name for p in other.iterdir()) == ["step_000010"]  # the other run: untouched

    # The planted token is nowhere: consoles, the job logs, the MLflow store, the checkpoints.
    assert client.get_run(run.info.run_id).data.params["cluster.env.HF_TOKEN"] == "***"
    for console in (first, stopped, resumed):
        assert SECRET not in console
    stored = [tmp_path / "mlflow.db", *ckpt.rglob("*")]
    leaks = [str(p) for p in stored if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks

    out = tmp_path / "hf"
    ok(rrm_ray_cli("export", str(run_dir / "step_000005"), "--out", str(out), "--dtype", "bfloat16"))
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # noqa: SIM118
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0
    again = rrm_ray_cli("export", str(run_dir / "step_000005"), "--out", str(out))
    assert again.returncode == 2 and "exists and is not empty; pass --overwrite" in again.stderr


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
    assert len(list((tmp_path / "ckpt").glob("dpo-*/final/config.json"))) == 1  # the run's own folder


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


@runs_command("eval")
def test_eval_sweep_evaluates_every_point_in_one_session_as_child_runs(tiny_model, tmp_path):
    """A 2x2 grid of sampling-time keys: one judge engine for all four points, a child run per point
    under the sweep's run, the table on the console and in --out, the figure on the parent."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    swept = ("judge.votes=", "judge.max_new_tokens=")
    judge = [o for o in judge_overrides(tiny_model) if not o.startswith(swept)]
    table_file = tmp_path / "sweep.csv"
    console = ok(
        rrm_ray_cli(
            "eval",
            "--benchmark",
            "rewardbench",
            "--data",
            str(REPO / "tests/fixtures/rewardbench_tiny.jsonl"),
            "--limit",
            "3",
            "--sweep",
            "judge.max_new_tokens=4,8",
            "--sweep",
            "votes=1,2",
            "--out",
            str(table_file),
            *judge,
            f"tracking.uri={uri}",
            "tracking.experiment=sweep",
            "cluster.local_num_cpus=4",
            f"checkpoint.dir={tmp_path / 'run'}",
            env=cli_env(),
        )
    )
    assert "sweep: 4 points over judge.max_new_tokens, judge.votes, 3 items each; one judge" in console
    sessions = [line for line in console.splitlines() if line.startswith("judge session ")]
    assert sessions == ["judge session 1/1: points 1, 2, 3, 4"]  # the engine started once
    points = [line for line in console.splitlines() if line.startswith("point ")]
    assert len(points) == 4 and "accuracy 0.500 (95% CI" in points[0]  # a line per point as it ends
    header = next(line for line in console.splitlines() if line.split()[:2] == ["max_new_tokens", "votes"])
    assert header.split()[2:4] == ["n", "accuracy"]
    table = console[console.index(header) :].splitlines()[2:6]
    # no verdicts from random weights: every point earns the half credit
    expected = [[b, k, "3", "0.500"] for b in ("4", "8") for k in ("1", "2")]
    assert [line.split()[:4] for line in table] == expected
    written = table_file.read_text().splitlines()
    assert written[0].startswith("judge.max_new_tokens,judge.votes,point,") and len(written) == 5

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rrm_ray.job") == "eval-sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    assert parent.data.params["sweep.judge.votes"] == "1,2" and parent.data.params["sweep.sessions"] == "1"
    assert "judge.votes" not in parent.data.params and parent.data.params["judge.max_model_len"] == "1024"
    for child in children:
        votes = int(child.data.params["judge.votes"])
        assert child.data.params["judge.max_new_tokens"] in ("4", "8")
        assert child.data.metrics["judge/comparisons"] == 3
        assert child.data.metrics["judge/judge_calls"] == 3 * votes  # a fresh cache per point
        assert child.data.metrics["accuracy/all_items"] == 0.5
        assert child.data.metrics["judge/generated_tokens"] > 0 and child.data.metrics["judge/seconds"] > 0
    figures = [a.path for a in client.list_artifacts(parent.info.run_id, "figures")]
    assert figures == ["figures/sweep_accuracy.png"]
    tables = [a.path for a in client.list_artifacts(parent.info.run_id, "tables")]
    assert "tables/sweep.json" in tables


@runs_command("best-of-n")
def test_best_of_n_scores_picks_against_the_verifier_per_setting(tiny_model, tmp_path):
    """Arithmetic prompts with answers (and one without): generated once, judged per (method, votes),
    one pick per prompt and setting, every response scored with the arithmetic rule; the table agrees
    with the flags written."""
    from rrm_ray.data.arithmetic import make_arithmetic_rows
    from rrm_ray.rewards.rules import arithmetic_reward

    prompts = tmp_path / "prompts.jsonl"
    rows = [*make_arithmetic_rows(3, seed=0, max_operand=9), {"prompt": "Say hi."}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "picks.jsonl"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    console = ok(
        rrm_ray_cli(
            "best-of-n",
            "--data",
            str(prompts),
            "--n",
            "3",
            "--method",
            "knockout,elo",
            "--votes",
            "1,2",
            "--out",
            str(out),
            "--config",
            "configs/judge_cpu.yaml",
            f"model.path={tiny_model}",
            "model.max_model_len=256",
            "rollout.max_new_tokens=8",
            *forced_choice_judge(tiny_model),
            f"checkpoint.dir={tmp_path / 'run'}",
            f"tracking.uri={uri}",
            "tracking.experiment=best-of-n",
            env=cli_env(),
        )
    )
    assert f"4 prompts x 3 responses x 4 settings -> {out}" in console
    picks = [json.loads(line) for line in out.read_text().splitlines()]
    settings = [("knockout", 1), ("knockout", 2), ("elo", 1), ("elo", 2)]
    assert len(picks) == 16 and [(p["method"], p["votes"]) for p in picks[::4]] == settings
    responses = [p["responses"] for p in picks[:4]]
    for p in picks:
        assert p["responses"] == responses[picks.index(p) % 4]  # the same samples for every setting
        assert len(p["responses"]) == 3 and p["best"] == p["responses"][p["pick"]]
        if p["method"] == "knockout":
            assert len(p["comparisons"]) == 2  # knockout over 3: n - 1 matches
        if p["answer"] is None:
            assert p["correct"] is None and p["pick_correct"] is None
        else:
            assert p["correct"] == [arithmetic_reward(r, p["answer"]) > 0 for r in p["responses"]]
            assert p["pick_correct"] == p["correct"][p["pick"]]
    assert "accuracies over the 3 of 4 prompts with a reference answer; the other 1 have picks" in console

    scored = [p for p in picks[:4] if p["correct"] is not None]
    oracle = sum(any(p["correct"]) for p in scored) / 3
    random_pick = sum(sum(p["correct"]) / 3 for p in scored) / 3
    lines = console.splitlines()
    for i, (method, votes) in enumerate(settings):
        setting = [p for p in picks[4 * i : 4 * i + 4] if p["correct"] is not None]
        pick_acc = sum(p["pick_correct"] for p in setting) / 3
        (line,) = [ln for ln in lines if ln.split()[:3] == [method, str(votes), "3"]]
        assert line.split()[3:6] == [f"{pick_acc:.3f}", f"{oracle:.3f}", f"{random_pick:.3f}"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("best-of-n").experiment_id])
    assert run.data.tags["rrm_ray.job"] == "best-of-n"
    params = run.data.params
    assert params["best_of_n.methods"] == "knockout,elo" and params["best_of_n.votes"] == "1,2"
    assert run.data.metrics["best_of_n/oracle"] == pytest.approx(oracle)
    assert run.data.metrics["best_of_n/random_pick"] == pytest.approx(random_pick)
    assert run.data.metrics["best_of_n/elo/votes_2/judge_calls"] > 0
    assert "tables/best_of_n.json" in [a.path for a in client.list_artifacts(run.info.run_id, "tables")]
