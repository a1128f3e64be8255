"""One judge served for many jobs: `rrm-ray serve-judge` on a running Ray cluster (the session's
`ray start --head`, token authentication on), then `rrm-ray judge`, `rrm-ray eval` and a two-step
`rrm-ray train` against it through the console script. One served engine for the module.

A greedy judge behind the endpoint gives the same verdicts as the in-job judge on the same pairs (the
same seeded presentations, the same token ids, the same model); a wrong key and a dead endpoint fail
with errors that name what is wrong; the key itself reaches no output, log, MLflow store or checkpoint.
"""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from rrm_ray.judge.evaluation import judgment_fields
from rrm_ray.judge.records import JudgePair
from rrm_ray.validation import load_config
from tests.integration.conftest import CHOICE_JUDGE, REPO, free_port, rrm_ray_cli, tiny_overrides
from tests.readme import runs_command

pytestmark = pytest.mark.integration

NAME = "itest"
KEY_ENV = "RRM_JUDGE_API_KEY"


def served_model(model: str) -> list[str]:
    """What the server needs: the tiny model and its context (1024 positions)."""
    return [
        f"judge.model_path={model}",
        "judge.max_model_len=1024",
        "judge.max_prompt_tokens=768",
        "judge.max_new_tokens=8",
        "judge.kv_cache_gib=1",
        "judge.threads=1",
    ]


def greedy_choice(model: str, **extra: object) -> list[str]:
    """A greedy forced-choice DirectJudge on the tiny model (a verdict per vote), in both orders."""
    base = {"judge.mode": "direct", "judge.verdict": "choice", "judge.temperature": 0, "judge.votes": 2}
    return [*served_model(model), *(f"{k}={v}" for k, v in {**base, **extra}.items())]


def endpoint(served: dict, **extra: object) -> list[str]:
    keys = {
        "judge.endpoint.url": served["url"],
        "judge.endpoint.model": "tiny-llama",
        "judge.endpoint.api_key_env": KEY_ENV,
        **extra,
    }
    return [f"{k}={v}" for k, v in keys.items()]


def client_env(key: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), KEY_ENV: key}


def ok(proc) -> str:
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def key_nowhere(key: str, outputs: list[str], *roots: Path) -> None:
    """The key value is in no command output and no file under these folders (MLflow stores, logs,
    checkpoints)."""
    assert all(key not in text for text in outputs)
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def served(ray_head, tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("judge-home")
    env = {**ray_head["env"], "RRM_RAY_HOME": str(home)}
    args = ["--address", ray_head["gcs"], "--name", NAME]
    proc = rrm_ray_cli("serve-judge", "configs/judge_cpu.yaml", *args, *served_model(tiny_model), env=env)
    stdout = ok(proc)
    (url,) = [line.strip() for line in stdout.splitlines() if line.startswith("  http://")]
    key_file = home / "judges" / f"{NAME}.key"
    try:
        yield {"url": url, "key": key_file.read_text().strip(), "key_file": key_file, "stdout": stdout}
    finally:
        stop = rrm_ray_cli("serve-judge", "--stop", NAME, "--address", ray_head["gcs"], env=env)
        assert stop.returncode == 0 and f"stopped judge '{NAME}'" in stop.stdout, stop.stderr[-2000:]
        assert not key_file.exists()
        again = rrm_ray_cli("serve-judge", "--stop", NAME, "--address", ray_head["gcs"], env=env)
        assert again.returncode == 1 and f"no judge named '{NAME}'" in again.stderr


def _get(url: str, key: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@runs_command("serve-judge")
def test_the_served_judge_outlives_its_command_and_answers_only_with_its_key(served):
    # serve-judge has exited; its detached server still answers
    assert stat.S_IMODE(served["key_file"].stat().st_mode) == 0o600
    assert f"export {KEY_ENV}=$(cat {served['key_file']})" in served["stdout"]
    assert f"judge.endpoint.url={served['url']}" in served["stdout"] and served["key"] not in served["stdout"]
    assert _get(f"{served['url']}/v1/models", None) == (401, {"error": "Unauthorized"})
    assert _get(f"{served['url']}/v1/models", "not-the-key")[0] == 401
    status, models = _get(f"{served['url']}/v1/models", served["key"])
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny-llama"]
    assert models["data"][0]["max_model_len"] == 1024


def _pairs(tmp_path: Path, n: int = 24) -> tuple[Path, list[JudgePair]]:
    rows = [
        json.loads(line) for line in (REPO / "tests/fixtures/judge_eval_small.jsonl").read_text().splitlines()
    ]
    pairs = [JudgePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows[:n]]
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"query": p.query, "response_a": p.response_a, "response_b": p.response_b}) + "\n"
            for p in pairs
        )
    )
    return path, pairs


def _served_verdicts(served: dict, tmp_path: Path, data: Path, judge: list[str], tag: str) -> list[dict]:
    out = tmp_path / f"{tag}.jsonl"
    args = ["--data", str(data), "--out", str(out), "--config", "configs/judge_cpu.yaml"]
    console = ok(rrm_ray_cli("judge", *args, *judge, *endpoint(served), env=client_env(served["key"])))
    assert "no judge engines in this job" in console and "0 endpoint errors" in console
    return [json.loads(line) for line in out.read_text().splitlines()]


@runs_command("judge")
def test_a_greedy_judge_gives_the_same_verdicts_served_or_in_job(served, ray_local, tiny_model, tmp_path):
    """The same pairs judged by the served judge (through `rrm-ray judge`) and by an in-job engine of
    the same model: greedy forced choices in both orders, then choice probabilities (one forward per
    order), must agree pair by pair, texts and probabilities included."""
    from rrm_ray.jobs.judging import judge_session

    data, pairs = _pairs(tmp_path)
    settings = {
        "greedy_choice": greedy_choice(tiny_model),
        "choice_prob": greedy_choice(tiny_model, **{"judge.verdict": "choice_prob", "judge.votes": 1}),
    }
    remote = {tag: _served_verdicts(served, tmp_path, data, judge, tag) for tag, judge in settings.items()}
    local = {}
    with judge_session(load_config("configs/judge_cpu.yaml", settings["greedy_choice"])) as judge:
        for tag, judge_args in settings.items():
            judge.configure(load_config("configs/judge_cpu.yaml", judge_args).judge)
            local[tag] = [judgment_fields(j) for j in judge.compare(pairs)]
    for tag in settings:
        agree = [
            (r["verdict"], [(t["order"], t["text"]) for t in r["traces"]])
            == (m["verdict"], [(t["order"], t["text"]) for t in m["traces"]])
            for r, m in zip(remote[tag], local[tag], strict=True)
        ]
        print(f"{tag}: served vs in-job agreement {sum(agree)}/{len(agree)}")
        assert all(agree), tag
    assert any(r["verdict"] for r in remote["choice_prob"])  # real verdicts, not a row of ties


@runs_command("eval")
def test_eval_against_the_served_judge_logs_its_counters_and_never_the_key(served, tiny_model, tmp_path):
    store = tmp_path / "mlflow.db"
    run_dir = tmp_path / "run"
    proc = rrm_ray_cli(
        "eval",
        "--benchmark",
        "rewardbench",
        "--data",
        str(REPO / "tests/fixtures/rewardbench_tiny.jsonl"),
        "--limit",
        "6",
        "--config",
        "configs/judge_cpu.yaml",
        *greedy_choice(tiny_model),
        *endpoint(served),
        f"tracking.uri=sqlite:///{store}",
        "tracking.experiment=served-eval",
        f"checkpoint.dir={run_dir}",
        env=client_env(served["key"]),
    )
    console = ok(proc)
    assert "mean credit over all items" in console and "0 endpoint errors" in console
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("served-eval").experiment_id])
    metrics = run.data.metrics
    assert metrics["judge/comparisons"] == 6 and metrics["judge/endpoint_errors"] == 0
    assert metrics["judge/over_length_pairs"] == 0 and metrics["judge/judge_calls"] == 12
    assert run.data.params["judge.endpoint.api_key_env"] == KEY_ENV
    key_nowhere(served["key"], [proc.stdout, proc.stderr], store, run_dir, tmp_path)


@runs_command("train")
def test_two_training_steps_against_the_served_judge(served, tiny_model, tmp_path):
    judge = {**CHOICE_JUDGE, "judge.model_path": tiny_model, "judge.temperature": 0}
    overrides = [*tiny_overrides(tiny_model, tmp_path, **judge), *endpoint(served)]
    proc = rrm_ray_cli(
        "train", "configs/quickstart.yaml", *overrides, env=client_env(served["key"]), timeout=900
    )
    console = ok(proc)
    assert "no judge engines in this job" in console and "steps 2" in console
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("integration").experiment_id])
    history = client.get_metric_history(run.info.run_id, "judge/comparisons")
    assert len(history) == 2 and all(m.value > 0 for m in history)  # both steps judged over HTTP
    assert run.data.metrics["judge/endpoint_errors"] == 0
    assert run.data.metrics["judge/stream_rank_calls"] >= 1  # groups judged as they streamed in, over HTTP
    key_nowhere(served["key"], [proc.stdout, proc.stderr], tmp_path)


@runs_command("eval")
def test_a_wrong_key_and_a_dead_endpoint_fail_naming_what_is_wrong(served, tiny_model, tmp_path):
    base = [
        "eval",
        "--benchmark",
        "rewardbench",
        "--data",
        str(REPO / "tests/fixtures/rewardbench_tiny.jsonl"),
        "--config",
        "configs/judge_cpu.yaml",
        *greedy_choice(tiny_model),
        "tracking.enabled=false",
        f"checkpoint.dir={tmp_path / 'run'}",
    ]
    wrong = rrm_ray_cli(*base, *endpoint(served), env=client_env("wrong-key-3c9d"))
    assert wrong.returncode == 1
    assert f"the judge endpoint {served['url']} refused the request (HTTP 401 Unauthorized)" in wrong.stderr
    assert f"${KEY_ENV} (judge.endpoint.api_key_env)" in wrong.stderr and "wrong-key-3c9d" not in wrong.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    gone = rrm_ray_cli(
        *base,
        *endpoint(served, **{"judge.endpoint.url": dead, "judge.endpoint.retries": 1}),
        env=client_env(served["key"]),
    )
    assert gone.returncode == 1
    assert (
        f"the judge endpoint {dead} failed 2 times" in gone.stderr
        and "judge.endpoint.retries=1" in gone.stderr
    )
