"""A real `mlflow server` stopped and restarted mid-run, then a process killed (SIGKILL) in the middle of
an outage and the run resumed by another process: every step's metrics are in MLflow exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mlflow
import pytest

from rrm_ray.tracking import BufferedTracker, MLflowTracker
from tests.integration.conftest import REPO, free_port, mlflow_server_cmd, stop_process_group, wait_http

pytestmark = pytest.mark.integration

# The run as a training job's driver logs it: one step's metrics at a time through the outage buffer,
# in a process of its own; it says "logged N" after each step and then waits to be killed.
DRIVER = """
import sys, time, warnings
from rrm_ray.tracking import BufferedTracker, MLflowTracker
uri, journal, run_id, first, last = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
warnings.simplefilter("ignore")
tracker = BufferedTracker(lambda rid: MLflowTracker(uri, "outage", run_id=rid), journal, run_id=run_id,
                          retry_every_s=0.0)
for step in range(first, last + 1):
    tracker.log_metrics({"loss": float(step)}, step=step)
    print(f"logged {step}", flush=True)
time.sleep(600)
"""


def start_server(store: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on `port` over the sqlite file `store` (the same store across restarts)."""
    log = store.parent / f"server-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            mlflow_server_cmd(store, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
    return proc


def test_metrics_survive_a_server_restart_and_a_killed_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")  # a busy 2-core machine answers slowly
    store, port = tmp_path / "mlflow.db", free_port()
    uri = f"http://127.0.0.1:{port}"
    journal = tmp_path / "run" / "mlflow_buffer.jsonl"
    server = start_server(store, port)
    try:
        # 1. The server stops mid-run and comes back: steps 3-4 wait in the journal, then go in order.
        tracker = BufferedTracker(MLflowTracker(uri, "outage"), journal, retry_every_s=0.0)
        run_id = tracker.run_id
        for step in (1, 2):
            tracker.log_metrics({"loss": float(step)}, step=step)
        stop_process_group(server)
        with pytest.warns(UserWarning, match="MLflow unavailable"):
            tracker.log_metrics({"loss": 3.0}, step=3)
        tracker.log_metrics({"loss": 4.0}, step=4)  # training goes on; still buffered
        assert len(tracker.pending) == 2 and journal.is_file()
        server = start_server(store, port)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker.log_metrics({"loss": 5.0}, step=5)
            deadline = time.monotonic() + 120
            while tracker.pending and time.monotonic() < deadline:  # the restarted server may be slow
                time.sleep(2)
                tracker.flush(force=True)
        assert not tracker.pending and not journal.exists()
        assert any("reachable again" in str(w.message) for w in caught)

        # 2. Down again; another process continues the run, accepts steps 6-8 into the journal (the
        # server is down from its start) and is killed with them there.
        stop_process_group(server)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, uri, str(journal), run_id, "6", "8"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("logged 8"):
                break
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        assert "logged 8\n" in lines, "".join(lines)[-3000:]
        assert [e for e in journal.read_text().splitlines() if '"seq"' in e], "the journal holds them"

        # 3. The server is back; a resume of the run sends the journal first, then steps 9-10.
        server = start_server(store, port)
        with pytest.warns(UserWarning, match="3 MLflow calls of an earlier attempt"):
            resumed = BufferedTracker(
                lambda rid: MLflowTracker(uri, "outage", run_id=rid), journal, run_id=run_id, retry_every_s=0
            )
        for step in (9, 10):
            resumed.log_metrics({"loss": float(step)}, step=step)
        resumed.close()
        client = mlflow.MlflowClient(tracking_uri=uri)
        history = client.get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(1, 11)]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        stop_process_group(server)
