"""`rrm-ray submit` against a real local cluster (`ray start --head`) with token authentication on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node started the way users start one; token auth is Ray 2.60's default."""
    ray_bin = Path(sys.executable).with_name("ray")
    # The job runs `python -m rrm_ray.cli`: on this cluster that must be the venv's python.
    path = os.pathsep.join([str(ray_bin.parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path}
    env.pop("RAY_AUTH_MODE", None)
    temp_dir = tmp_path_factory.mktemp("raytmp")
    port, dash = _free_port(), _free_port()
    # --block keeps `ray start` in the foreground, in its own process group: the teardown stops exactly
    # this cluster (`ray stop` would kill every Ray instance on the machine, other tests' included).
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--num-cpus=8",
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            break
        except urllib.error.HTTPError:  # answering (auth refused the anonymous request): up
            break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        raise RuntimeError("the Ray head did not start")
    yield {"address": address, "env": env}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def rrm_ray(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rrm_ray.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_follow_list_status_logs(cluster, tiny_model, tmp_path):
    # The job's files live outside the uploaded working dir: give it absolute paths.
    overrides = tiny_overrides(
        tiny_model, tmp_path, **{"trainer.total_steps": 1, "checkpoint.save_final": False}
    )
    config = "configs/quickstart.yaml"
    result = rrm_ray(
        "submit",
        config,
        *overrides,
        "--address",
        cluster["address"],
        "--job-id",
        "rrm-e2e-1",
        env=cluster["env"],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "job rrm-e2e-1 SUCCEEDED" in result.stdout
    assert "steps 1 in" in result.stdout  # the driver's summary came back through the logs

    listed = rrm_ray("list", "--address", cluster["address"], env=cluster["env"], timeout=120)
    assert "rrm-e2e-1\tSUCCEEDED" in listed.stdout
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


def test_stop_ends_a_running_job(cluster, tiny_model, tmp_path):
    overrides = tiny_overrides(tiny_model, tmp_path, **{"trainer.total_steps": 50})
    result = rrm_ray(
        "submit",
        "configs/quickstart.yaml",
        *overrides,
        "--address",
        cluster["address"],
        "--job-id",
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
