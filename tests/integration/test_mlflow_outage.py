"""A real `mlflow server` stopped and restarted mid-run: training's tracker buffers and loses nothing."""

from __future__ import annotations

import subprocess
import time
import warnings
from pathlib import Path

import mlflow
import pytest

from rrm_ray.tracking import BufferedTracker, MLflowTracker
from tests.integration.conftest import free_port, mlflow_server_cmd, stop_process_group, wait_http

pytestmark = pytest.mark.integration


def start_server(store: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on `port` over the sqlite file `store` (the same store across restarts)."""
    log = store.parent / f"server-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            mlflow_server_cmd(store, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
    return proc


def test_metrics_survive_a_server_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")  # a busy 2-core machine answers slowly
    store, port = tmp_path / "mlflow.db", free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port)
    try:
        tracker = BufferedTracker(MLflowTracker(uri, "outage"), tmp_path / "buffer.jsonl")
        tracker.log_metrics({"loss": 1.0}, step=1)
        stop_process_group(server)
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
        stop_process_group(server)
