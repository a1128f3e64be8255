"""A real `mlflow server` stopped and restarted mid-run: training's tracker buffers and loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import mlflow
import pytest

from rrm_ray.tracking import BufferedTracker, MLflowTracker

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--default-artifact-root",
            str(store.parent / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server's workers stop with it
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def test_metrics_survive_a_server_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")  # a busy 2-core machine answers slowly
    store, port = tmp_path / "mlflow.db", _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port)
    try:
        tracker = BufferedTracker(MLflowTracker(uri, "outage"), tmp_path / "buffer.jsonl")
        tracker.log_metrics({"loss": 1.0}, step=1)
        stop_server(server)
        with pytest.warns(UserWarning, match="MLflow unavailable"):
            tracker.log_metrics({"loss": 2.0}, step=2)
        tracker.log_metrics({"loss": 3.0}, step=3)  # training goes on; still buffered
        assert len(tracker.pending) == 2
        server = start_server(store, port)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker.log_metrics({"loss": 4.0}, step=4)
            deadline = time.monotonic() + 120
            while tracker.pending and time.monotonic() < deadline:  # the restarted server may be slow
                time.sleep(2)
                tracker.flush()
        assert not tracker.pending
        assert any("reachable again" in str(w.message) for w in caught)
        tracker.close()
        history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(tracker.run_id, "loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (1, 1.0),
            (2, 2.0),
            (3, 3.0),
            (4, 4.0),
        ]
    finally:
        stop_server(server)
