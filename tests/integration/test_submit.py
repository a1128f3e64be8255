"""`rrm-ray submit` against a real local cluster (`ray start --head`) with token authentication on."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.integration.conftest import rrm_ray_cli, tiny_overrides
from tests.readme import runs_command

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(ray_head):
    """A head started the way users start one (`ray start --head`), token authentication on."""
    return ray_head


def rrm_ray(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return rrm_ray_cli(*args, env=env, timeout=timeout)


@runs_command("submit", "list", "status", "logs")
def test_submit_follow_list_status_logs(cluster, tiny_model, tmp_path):
    # The job's files live outside the uploaded working dir: give it absolute paths.
    secret = "hf_PLANTEDsubmitSECRET0123456789"
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{"trainer.total_steps": 1, "checkpoint.save_final": False, "cluster.env.HF_TOKEN": secret},
    )
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

    listed = rrm_ray("list", "--address", cluster["address"], env=cluster["env"], timeout=120)
    assert "rrm-e2e-1\tSUCCEEDED" in listed.stdout
    # The token reached the job (its config has it) but not its entrypoint, logs or stored config.
    assert "cluster.env.HF_TOKEN=${oc.env:RRM_RAY_SECRET_0}" in listed.stdout
    assert secret not in listed.stdout + result.stdout + result.stderr
    stored = [tmp_path / "mlflow.db", *(tmp_path / "ckpt").rglob("*")]
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
