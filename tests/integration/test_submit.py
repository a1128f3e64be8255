"""`rrm-ray submit` against a real local cluster (`ray start --head`, token authentication on), its
job logging to a real MLflow tracking server; a run started in this process logs to the same server.

    mlflow server 127.0.0.1:<port>  <--HTTP--  GRPOJob in this process (ray_local)
                                    <--HTTP--  driver of a job sent with `rrm-ray submit` to the head
Both runs must carry the same metric keys; the submitted one is tagged with its Ray submission id and
its run id appears in the job's logs.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import mlflow
import pytest

from rrm_ray.validation import load_config
from tests.integration.conftest import (
    free_port,
    mlflow_server_cmd,
    rrm_ray_cli,
    stop_process_group,
    tiny_overrides,
    wait_http,
)
from tests.readme import runs_command

pytestmark = pytest.mark.integration

EXPERIMENT = "integration-server"
EXPECTED_METRICS = {"reward/mean", "train/grad_norm", "train/lr", "time/step_s", "sync/buckets"}


@pytest.fixture(scope="module")
def cluster(ray_head):
    """A head started the way users start one (`ray start --head`), token authentication on."""
    return ray_head


def rrm_ray(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return rrm_ray_cli(*args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server over a sqlite store; yields a call that waits until it answers and returns
    (its URI, its folder: the store and the artifacts)."""
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
        yield lambda: wait_http(f"{uri}/health", 180, proc, log) or (uri, tmp)
    finally:
        stop_process_group(proc)


def _overrides(model: str, tmp: Path, uri: str, **extra: object) -> list[str]:
    return tiny_overrides(
        model,
        tmp,
        **{
            "trainer.total_steps": 1,
            "data.eval_path": "null",
            "checkpoint.save_final": False,
            "tracking.uri": uri,
            "tracking.experiment": EXPERIMENT,
            **extra,
        },
    )


@pytest.fixture(scope="module")
def server(mlflow_server, ray_local, tiny_model) -> tuple[str, Path]:
    """The server's URI and folder once it answers (`ray_local` and `tiny_model` start while it boots)."""
    return mlflow_server()


@pytest.fixture(scope="module")
def local_run(server, tiny_model, tmp_path_factory):
    from rrm_ray.jobs.grpo import GRPOJob

    uri = server[0]
    cfg = load_config(None, _overrides(tiny_model, tmp_path_factory.mktemp("local"), uri))
    with GRPOJob(cfg) as job:
        job.start()
        summary = job.run()
    return mlflow.MlflowClient(tracking_uri=uri).get_run(summary["run_id"])


def test_local_run_logs_to_the_server(local_run, server):
    assert local_run.info.status == "FINISHED"
    assert set(local_run.data.metrics) >= EXPECTED_METRICS
    assert local_run.data.params["trainer.total_steps"] == "1"
    assert local_run.data.tags["rrm_ray.job"] == "grpo"
    client = mlflow.MlflowClient(tracking_uri=server[0])
    tables = [a.path for a in client.list_artifacts(local_run.info.run_id, "tables")]
    assert "tables/samples_step00001.json" in tables  # artifacts go through the server too
    history = client.get_metric_history(local_run.info.run_id, "reward/mean")
    assert [m.step for m in history] == [1]


@runs_command("submit", "list", "status", "logs")
def test_submit_follow_list_status_logs(cluster, server, local_run, tiny_model, tmp_path):
    """Submitted and followed to the end; the job logs to the server the same metrics as the local run,
    tagged with its submission id; a planted token reaches the job but no log, store or checkpoint."""
    uri, server_dir = server
    secret = "hf_PLANTEDsubmitSECRET0123456789"
    # The job's files live outside the uploaded working dir: give it absolute paths.
    overrides = _overrides(tiny_model, tmp_path, uri, **{"cluster.env.HF_TOKEN": secret})
    config = "configs/quickstart.yaml"
    # As the README writes it: options first, the overrides after `--`.
    result = rrm_ray(
        "submit",
        config,
        "--address",
        cluster["address"],
        "--submission-id",
        "rrm-e2e-1",
        "--",
        *overrides,
        env=cluster["env"],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submission rrm-e2e-1 SUCCEEDED" in result.stdout
    assert "steps 1 in" in result.stdout  # the driver's summary came back through the logs
    assert re.search(r"^uploading .*: \d+ files, [\d.]+ MiB \(left out: .*\.env\*", result.stdout, re.M)
    assert "1 secret override value(s) travel in the job's environment" in result.stdout

    # The job's MLflow run: its id in the job's logs, tagged with the submission id, the local run's keys.
    printed = re.findall(rf"MLflow run ([0-9a-f]{{32}}) at {re.escape(uri)}", result.stdout)
    assert printed, result.stdout[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    tagged = client.search_runs([experiment.experiment_id], "tags.`ray.job_id` = 'rrm-e2e-1'")
    assert [r.info.run_id for r in tagged] == [printed[0]]
    assert tagged[0].info.status == "FINISHED"
    assert set(tagged[0].data.metrics) == set(local_run.data.metrics)

    listed = rrm_ray("list", "--address", cluster["address"], env=cluster["env"], timeout=120)
    assert "rrm-e2e-1\tSUCCEEDED" in listed.stdout
    # The token reached the job (its config has it) but not its entrypoint, logs or stored config.
    assert "cluster.env.HF_TOKEN=${oc.env:RRM_RAY_SECRET_0}" in listed.stdout
    assert secret not in listed.stdout + result.stdout + result.stderr
    stored = [*server_dir.rglob("*"), *(tmp_path / "ckpt").rglob("*")]  # the MLflow store and artifacts
    assert not [str(p) for p in stored if p.is_file() and secret.encode() in p.read_bytes()]
    status = rrm_ray("status", "rrm-e2e-1", "--address", cluster["address"], env=cluster["env"], timeout=120)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = rrm_ray("logs", "rrm-e2e-1", "--address", cluster["address"], env=cluster["env"], timeout=120)
    assert "steps 1 in" in logs.stdout


def test_wrong_token_is_refused(cluster):
    env = {**cluster["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    result = rrm_ray("list", "--address", cluster["address"], env=env, timeout=120)
    assert result.returncode != 0
    assert "auth" in (result.stdout + result.stderr).lower()


def test_bad_config_fails_before_upload(cluster):
    result = rrm_ray(
        "submit",
        "configs/quickstart.yaml",
        "learner.lrr=1",
        "--address",
        cluster["address"],
        env=cluster["env"],
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown config key 'learner.lrr'" in result.stderr


@runs_command("stop", "logs")
def test_stop_ends_a_running_job(cluster, tiny_model, tmp_path):
    overrides = tiny_overrides(tiny_model, tmp_path, **{"trainer.total_steps": 50})
    result = rrm_ray(
        "submit",
        "configs/quickstart.yaml",
        *overrides,
        "--address",
        cluster["address"],
        "--submission-id",
        "rrm-e2e-stop",
        "--no-follow",
        env=cluster["env"],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    stopped = rrm_ray(
        "stop", "rrm-e2e-stop", "--address", cluster["address"], env=cluster["env"], timeout=120
    )
    assert stopped.returncode == 0
    followed = rrm_ray(
        "logs", "rrm-e2e-stop", "--follow", "--address", cluster["address"], env=cluster["env"], timeout=300
    )
    assert "STOPPED" in followed.stdout
    assert followed.returncode == 1


@runs_command("submit")
def test_submit_names_what_the_clusters_python_lacks(cluster, tmp_path):
    """The job's `python` is whatever the node's PATH finds first: here a bare system interpreter
    (what `ray start` from a shell without the venv gives). The probe says so before any upload."""
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to("/usr/bin/python3")
    result = rrm_ray(
        "submit",
        "configs/quickstart.yaml",
        "--address",
        cluster["address"],
        "--env",
        f"PATH={bare}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "--",
        "trainer.total_steps=1",
        env=cluster["env"],
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"the cluster's python ({bare / 'python'}) cannot import" in result.stderr
    assert "omegaconf" in result.stderr and "start Ray from the environment" in result.stderr
    assert "submitted " not in result.stdout
