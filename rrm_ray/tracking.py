"""One tracker interface, MLflow first: flattened params, sanitised metric names, explicit close.

Only the driver logs. Metric names are sanitised because MLflow rejects characters such as `@`,
and tables/artifacts are written through the same object so a run is one place to look.

A training run should read as one in the MLflow UI: the experiment is tagged as model training
(`mlflow.experimentKind`), the run has a name that says what ran (`default_run_name`), its data files
are dataset inputs (`log_dataset`), the final policy is a logged model that is the run's output
(`log_model`: MLflow 3 lists runs with a model output as training runs), MLflow's system metrics are
sampled while it runs, and figures MLflow does not draw are PNG artifacts (`rrm_ray.figures`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow.parquet as pq

from rrm_ray.config import TrackingConfig

_BAD = re.compile(r"[^A-Za-z0-9_\-\. /]")

# The experiment tag MLflow 3 keeps an experiment's kind in, and the kind of a model-training
# experiment ("Machine learning" / "Model training"; the other kind is "genai_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# The MLflow 3.17 UI picks its view (GenAI or Model training) from this URL parameter (or the
# sidebar switch, remembered per browser), not from the tag: links to a run page carry it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
LOG_MODEL_MODES = ("none", "path", "artifacts")
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow nests a run under another


def sanitize(name: str) -> str:
    """MLflow accepts letters, digits, `_ - . /` and spaces; everything else becomes `_`."""
    return _BAD.sub("_", name).strip() or "_"


def default_run_name(kind: str, model_path: str, now: datetime | None = None) -> str:
    """`grpo-SmolLM2-135M-Instruct-20261201-1932`: what ran (grpo, eval, ...), model directory name,
    local start time."""
    model = sanitize(Path(str(model_path).rstrip("/")).name or str(model_path)).replace(" ", "_")
    return f"{kind}-{model}-{(now or datetime.now()).strftime('%Y%m%d-%H%M')}"


def run_page(experiment_id: str, run_id: str, base: str = "") -> str:
    """The run's page in the MLflow UI (in the model-training view), relative to the UI's address."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def run_line(tracker: Tracker, t: TrackingConfig) -> str | None:
    """What a command prints first about its MLflow run (None without one): its id and store, and on a
    tracking server the run's page, ready to open."""
    if not tracker.run_id:
        return None
    line = f"MLflow run {tracker.run_id} at {t.uri} (experiment {t.experiment!r})"
    experiment_id = getattr(tracker, "experiment_id", None)
    if t.uri.startswith(("http://", "https://")) and experiment_id:
        line += f"\n  {run_page(experiment_id, tracker.run_id, t.uri)}"
    return line


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, path: str, context: str) -> None: ...
    def log_artifact(self, local_path: str, artifact_path: str) -> None: ...
    def log_model(
        self, local_dir: str, mode: str, step: int, name: str, registered_model: str | None = None
    ) -> None: ...
    def metric_history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, path: str, context: str) -> None: ...
    def log_artifact(self, local_path: str, artifact_path: str) -> None: ...
    def log_model(
        self, local_dir: str, mode: str, step: int, name: str, registered_model: str | None = None
    ) -> None: ...

    def metric_history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        return {}

    def close(self, status: str = "FINISHED") -> None: ...


# -- dataset inputs ----------------------------------------------------------------------------------------
def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.lower().endswith(".gz") else path.open()


def _first_records(path: Path, n: int) -> tuple[list[dict], int]:
    """Up to `n` records from the head of a JSONL / JSON / Parquet file, and the file's record count
    (JSONL: non-empty lines, Parquet: from its metadata; both without parsing every record)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        pf = pq.ParquetFile(path)
        head = next(pf.iter_batches(batch_size=n), None)
        return (head.to_pylist() if head is not None else []), pf.metadata.num_rows
    with _open_text(path) as f:
        if name.endswith((".json", ".json.gz")):
            try:
                data = json.load(f)
            except json.JSONDecodeError:  # a .json file holding JSON lines (rrm_ray.data.io reads it so)
                data = None
            if isinstance(data, (list, dict)):
                rows = data.get("data", []) if isinstance(data, dict) else data
                return [r for r in rows[:n] if isinstance(r, dict)], len(rows)
            f.seek(0)
        records, count = [], 0
        for line in f:
            if line.strip():
                count += 1
                if len(records) < n:
                    records.append(json.loads(line))
        return [r for r in records if isinstance(r, dict)], count


def file_dataset(path: str | Path, context: str):
    """A data file as an MLflow dataset input: name = file name, digest = the first 8 hex digits of
    the file's SHA-256, source = its absolute path, schema inferred by MLflow from the first records,
    profile = record count and size. `context` is MLflow's `mlflow.data.context` tag (training, eval)."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    p = Path(path).resolve()
    with p.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:8]
    head, count = _first_records(p, 100)
    schema = None
    if head:
        try:
            with warnings.catch_warnings():  # MLflow's hints on integer columns and source types
                warnings.simplefilter("ignore")
                inferred = mlflow.data.from_pandas(pd.DataFrame(head), source=str(p)).schema
            schema = json.dumps({"mlflow_colspec": inferred.to_dict()}) if inferred else None
        except Exception:  # a column MLflow cannot type (mixed nesting): the input is logged without schema
            schema = None
    profile = json.dumps({"num_rows": count, "size_bytes": p.stat().st_size})
    dataset = Dataset(p.name, digest, "local", json.dumps({"uri": str(p)}), schema, profile)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


class MLflowTracker:
    """An MLflow run; `run_id` given -> the same run is continued (resume).

    `system_metrics_interval_s`: sample MLflow's system metrics (CPU, memory, disk, network; GPU when
    `nvidia-ml-py` is installed and a GPU is visible) on the driver's machine every that many seconds,
    as `mlflow.start_run(log_system_metrics=True)` does; None: off.
    `parent_run_id`: a new run is nested under that run (MLflow's `mlflow.parentRunId` tag), as the
    points of `rrm-ray eval --sweep` are under the sweep's run.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        *,
        experiment_kind: str = MODEL_TRAINING,
        system_metrics_interval_s: float | None = None,
        parent_run_id: str | None = None,
    ):
        import mlflow

        self._mlflow = mlflow
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = self.client.create_experiment(experiment, tags={EXPERIMENT_KIND_TAG: experiment_kind})
        else:
            exp_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # an older experiment: say what it holds, keep a choice
                self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, experiment_kind)
        resumed = run_id is not None
        if run_id is None:
            tags = {PARENT_RUN_TAG: parent_run_id} if parent_run_id else None
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
            run_id = run.info.run_id
        self.run_id = run_id
        self.experiment_id = exp_id
        self.uri = uri
        self._monitor = None
        if system_metrics_interval_s is not None:
            self._monitor = self._start_system_metrics(system_metrics_interval_s, resumed)

    def _start_system_metrics(self, interval_s: float, resumed: bool):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval_s, resume_logging=resumed, tracking_uri=self.uri
            )
        except Exception as exc:  # psutil missing, say: the run goes on without system metrics
            warnings.warn(f"MLflow system metrics are off: {type(exc).__name__}: {exc}", stacklevel=3)
            return None
        monitor.start()
        return monitor

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

    def log_dataset(self, path: str, context: str) -> None:
        self.client.log_inputs(self.run_id, datasets=[file_dataset(path, context)])

    def log_artifact(self, local_path: str, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, local_path, artifact_path)

    def log_model(
        self, local_dir: str, mode: str, step: int, name: str, registered_model: str | None = None
    ) -> None:
        """The HF directory `local_dir` as an MLflow logged model and the run's output at `step`.

        mode "path": the model records where the directory is (tag `rrm_ray.path`), no copy;
        "artifacts": the directory is also copied into the model's artifacts (`models:/<id>` loads it).
        `registered_model`: also a new version of that registered model, whose source is the logged
        model (`models:/<id>`; a tracking server accepts no local path as a source) and which carries
        the directory's path as the tag `rrm_ray.path` too.
        """
        from mlflow.entities import LoggedModelOutput

        if mode not in ("path", "artifacts"):
            raise ValueError(f"log_model mode must be one of path, artifacts; got {mode!r}")
        c = self.client
        tags = {"rrm_ray.path": local_dir}
        model = c.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id, tags=tags, model_type="hf-causal-lm"
        )
        try:
            if mode == "artifacts":
                c.log_model_artifacts(model.model_id, local_dir)
            c.finalize_logged_model(model.model_id, "READY")
        except Exception:
            c.finalize_logged_model(model.model_id, "FAILED")
            raise
        c.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        if registered_model:
            from mlflow.exceptions import MlflowException

            try:
                c.create_registered_model(registered_model)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            c.create_model_version(
                registered_model, f"models:/{model.model_id}", self.run_id, tags, model_id=model.model_id
            )

    def metric_history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        """Every logged value of the run's metrics whose names start with one of `prefixes`, as
        (step, value) in logging order (a step logged again after a resume comes later)."""
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if k.startswith(prefixes)]
        out = {}
        for key in keys:
            history = sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.timestamp)
            out[key] = [(m.step, m.value) for m in history]
        return out

    def close(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()  # its last samples go in while the run is still open
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)


class BufferedTracker:
    """Keeps training going when the tracking server is down: failed calls are queued (and mirrored to
    a local JSONL file so nothing is lost if the job dies), retried before every later call, and
    flushed in order once the server is back. A warning says so, once per outage.

    Reads (`metric_history`) are not buffered: during an outage they return nothing. MLflow's system
    metrics thread logs on its own and stops at the first failure."""

    def __init__(self, inner: Tracker, buffer_path: str | Path) -> None:
        self.inner = inner
        self.run_id = inner.run_id
        self.experiment_id = getattr(inner, "experiment_id", None)
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

    def log_dataset(self, path: str, context: str) -> None:
        self._call("log_dataset", path, context)

    def log_artifact(self, local_path: str, artifact_path: str) -> None:
        self._call("log_artifact", local_path, artifact_path)

    def log_model(
        self, local_dir: str, mode: str, step: int, name: str, registered_model: str | None = None
    ) -> None:
        self._call("log_model", local_dir, mode, step, name, registered_model)

    def metric_history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        self.flush()
        if self.pending:
            return {}
        try:
            return self.inner.metric_history(prefixes)
        except Exception as exc:  # a read that fails must not stop training either
            warnings.warn(f"MLflow metric history unavailable ({type(exc).__name__})", stacklevel=2)
            return {}

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.pending:
            warnings.warn(
                f"MLflow still unavailable at the end: {len(self.pending)} calls kept in {self.buffer_path}",
                stacklevel=2,
            )
            return
        self.inner.close(status)


def open_tracker(
    t: TrackingConfig,
    kind: str,
    model_path: str,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Tracker:
    """Every command's MLflow run (a NullTracker when `tracking.enabled` is false), named after what
    ran (`kind`: grpo, eval, ...) and the model unless `tracking.run_name` or `run_name` says otherwise.
    `run_id` continues a run (resume); `parent_run_id` nests a new run under that one (a sweep's
    point), and such a run samples no system metrics of its own (its parent does)."""
    if not t.enabled:
        return NullTracker()
    # Fail over quickly (to the job's buffer, or the command's error) instead of MLflow's minutes of
    # HTTP retries; a user's own MLFLOW_HTTP_* settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(t.http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(t.http_timeout_s)))
    system = t.system_metrics and parent_run_id is None
    return MLflowTracker(
        t.uri,
        t.experiment,
        run_name or t.run_name or default_run_name(kind, model_path),
        run_id=run_id,
        system_metrics_interval_s=t.system_metrics_interval_s if system else None,
        parent_run_id=parent_run_id,
    )
