"""One tracker interface, MLflow first: flattened params, sanitised metric names, explicit close.

Only the driver logs. Metric names are sanitised because MLflow rejects characters such as `@`,
and tables/artifacts are written through the same object so a run is one place to look.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

_BAD = re.compile(r"[^A-Za-z0-9_\-\. /]")


def sanitize(name: str) -> str:
    """MLflow accepts letters, digits, `_ - . /` and spaces; everything else becomes `_`."""
    return _BAD.sub("_", name).strip() or "_"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class MLflowTracker:
    """An MLflow run; `run_id` given -> the same run is continued (resume)."""

    def __init__(self, uri: str, experiment: str, run_name: str | None = None, run_id: str | None = None):
        import mlflow

        self._mlflow = mlflow
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        if run_id is None:
            run = self.client.create_run(exp_id, run_name=run_name)
            run_id = run.info.run_id
        self.run_id = run_id
        self.uri = uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(sanitize(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(sanitize(k), float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        if not rows:
            return
        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        self.client.log_table(self.run_id, data=columns, artifact_file=f"tables/{name}.json")

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, sanitize(k), v)

    def log_artifacts(self, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class BufferedTracker:
    """Keeps training going when the tracking server is down: failed calls are queued (and mirrored to
    a local JSONL file so nothing is lost if the job dies), retried before every later call, and
    flushed in order once the server is back. A warning says so, once per outage."""

    def __init__(self, inner: Tracker, buffer_path: str | Path) -> None:
        self.inner = inner
        self.run_id = inner.run_id
        self.buffer_path = Path(buffer_path)
        self.pending: list[tuple[str, tuple[Any, ...]]] = []
        self.outage = False
        self.flushed_after_outage = 0

    def _call(self, method: str, *args: Any) -> None:
        self.pending.append((method, args))
        self.flush()

    def flush(self) -> None:
        """Send what is buffered, in order; stops at the first call that still fails."""
        while self.pending:
            method, args = self.pending[0]
            try:
                getattr(self.inner, method)(*args)
            except Exception as exc:  # any tracking failure must not stop training
                if not self.outage:
                    self.outage = True
                    warnings.warn(
                        f"MLflow unavailable ({type(exc).__name__}: {str(exc)[:200]}); buffering metrics "
                        f"locally in {self.buffer_path} and retrying at every step",
                        stacklevel=3,
                    )
                self._mirror(method, args)
                return
            self.pending.pop(0)
            if self.outage:
                self.flushed_after_outage += 1
        if self.outage:
            self.outage = False
            warnings.warn(
                f"MLflow reachable again: flushed {self.flushed_after_outage} buffered calls", stacklevel=3
            )
            self.flushed_after_outage = 0
            self.buffer_path.unlink(missing_ok=True)

    def _mirror(self, method: str, args: tuple[Any, ...]) -> None:
        self.buffer_path.parent.mkdir(parents=True, exist_ok=True)
        with self.buffer_path.open("a") as f:
            f.write(json.dumps({"method": method, "args": args}, default=str) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        self._call("log_table", rows, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", tags)

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.pending:
            warnings.warn(
                f"MLflow still unavailable at the end: {len(self.pending)} calls kept in {self.buffer_path}",
                stacklevel=2,
            )
            return
        self.inner.close(status)
