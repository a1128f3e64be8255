"""MLflow in server mode: a real `mlflow server` (sqlite backend), a local run and a submitted job.

    mlflow server 127.0.0.1:<port>  <--HTTP--  GRPOJob in this process (ray_local)
                                    <--HTTP--  driver of a job sent with `rrm-ray submit` to a real
                                               `ray start --head` (token auth on)
Both runs must carry the same metric keys; the submitted one is tagged with its Ray submission id and
its run id appears in the job's logs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest

from rrm_ray.config import load_config
from tests.integration.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.integration

EXPERIMENT = "integration-server"
EXPECTED_METRICS = {"reward/mean", "train/grad_norm", "train/lr", "time/step_s", "sync/buckets"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen, log: Path, log_line: str = "") -> None:
    """Until `url` answers and `log_line` is in the process's log (or the process dies: its log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if log_line not in log.read_text():
            time.sleep(0.5)
            continue
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a 401 from a token-protected dashboard counts)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this module started, with the children in its session (server workers, raylet)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = tmp / "server.log"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        # The server needs a minute to start here; the fixtures set up after it overlap with that.
        yield lambda: _wait_http(f"{uri}/health", 180, proc, log) or uri
    finally:
        _stop(proc)


def _overrides(model: str, tmp: Path, uri: str) -> list[str]:
    return tiny_overrides(
        model,
        tmp,
        **{
            "trainer.total_steps": 1,
            "data.eval_path": "null",
            "checkpoint.save_final": False,
            "tracking.uri": uri,
            "tracking.experiment": EXPERIMENT,
        },
    )


@pytest.fixture(scope="module")
def server_uri(mlflow_server, ray_local, tiny_model) -> str:
    """The server's URI once it answers (`ray_local` and `tiny_model` start while it boots)."""
    return mlflow_server()


@pytest.fixture(scope="module")
def local_run(server_uri, tiny_model, tmp_path_factory):
    from rrm_ray.driver import GRPOJob

    cfg = load_config(None, _overrides(tiny_model, tmp_path_factory.mktemp("local"), server_uri))
    with GRPOJob(cfg) as job:
        job.start()
        summary = job.run()
    return mlflow.MlflowClient(tracking_uri=server_uri).get_run(summary["run_id"])


def test_local_run_logs_to_the_server(local_run, server_uri):
    assert local_run.info.status == "FINISHED"
    assert set(local_run.data.metrics) >= EXPECTED_METRICS
    assert local_run.data.params["trainer.total_steps"] == "1"
    assert local_run.data.tags["rrm_ray.job"] == "grpo"
    client = mlflow.MlflowClient(tracking_uri=server_uri)
    tables = [a.path for a in client.list_artifacts(local_run.info.run_id, "tables")]
    assert "tables/samples_step00001.json" in tables  # artifacts go through the server too
    history = client.get_metric_history(local_run.info.run_id, "reward/mean")
    assert [m.step for m in history] == [1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` in its own session, so teardown stops exactly this cluster."""
    tmp = tmp_path_factory.mktemp("rayhead")
    port, dash, client, agent = (_free_port() for _ in range(4))
    # Token authentication, as on a real cluster: the head and the submitting client both run with
    # RAY_AUTH_MODE=token and find the token in the default file (~/.ray/auth_token). Ray 2.60's job
    # SDK sends no token unless the client's own mode says token.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    # The job's entrypoint runs `python -m rrm_ray.cli`: the venv's python, as on a cluster node.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    log = tmp / "head.log"
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={client}",
        # Not the default 52365: another Ray on this machine holds it, and then no job agent starts.
        f"--dashboard-agent-listen-port={agent}",
        "--num-cpus=8",
        f"--temp-dir={tmp}",
        "--disable-usage-stats",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The dashboard answers before the head's job agent does, and jobs need the agent.
        _wait_http(f"http://127.0.0.1:{dash}/api/version", 180, proc, log, "Ray runtime started")
        _wait_http(f"http://127.0.0.1:{agent}/", 180, proc, log)
        yield {"address": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        _stop(proc)


def test_submitted_job_logs_the_same_metrics_tagged_with_its_id(
    ray_head, server_uri, tiny_model, tmp_path, local_run
):
    submission_id = f"rrm-mlflow-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rrm_ray.cli",
            "submit",
            "configs/quickstart.yaml",
            *_overrides(tiny_model, tmp_path, server_uri),
            "--address",
            ray_head["address"],
            "--job-id",
            submission_id,
        ],
        env=ray_head["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = re.findall(rf"MLflow run ([0-9a-f]{{32}}) at {re.escape(server_uri)}", result.stdout)
    assert printed, result.stdout[-3000:]

    client = mlflow.MlflowClient(tracking_uri=server_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    tagged = client.search_runs([experiment.experiment_id], f"tags.`ray.job_id` = '{submission_id}'")
    assert [r.info.run_id for r in tagged] == [printed[0]]
    submitted = tagged[0]
    assert submitted.info.status == "FINISHED"
    assert set(submitted.data.metrics) == set(local_run.data.metrics)
