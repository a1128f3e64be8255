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
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

from rrm_ray.validation import load_config
from tests.integration.conftest import (
    REPO,
    free_port,
    mlflow_server_cmd,
    stop_process_group,
    tiny_overrides,
    wait_http,
)

pytestmark = pytest.mark.integration

EXPERIMENT = "integration-server"
EXPECTED_METRICS = {"reward/mean", "train/grad_norm", "train/lr", "time/step_s", "sync/buckets"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = tmp / "server.log"
    cmd = mlflow_server_cmd(tmp / "mlflow.db", port)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        # The server needs a minute to start here; the fixtures set up after it overlap with that.
        yield lambda: wait_http(f"{uri}/health", 180, proc, log) or uri
    finally:
        stop_process_group(proc)


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
    from rrm_ray.jobs.grpo import GRPOJob

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
            "--submission-id",
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
