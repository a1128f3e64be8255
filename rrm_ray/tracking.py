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

import contextlib
import gzip
import hashlib
import json
import os
import re
import time
import warnings
from collections import deque
from collections.abc import Callable
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
DROPPED_CALLS = "tracking/dropped_calls"  # calls MLflow rejected for good (BufferedTracker)


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
    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None: ...
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
    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None: ...
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
        else:  # a resumed run runs again (it was left FINISHED, KILLED or FAILED); a deleted one raises
            self.client.update_run(run_id, status="RUNNING")
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

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        now = timestamp_ms or int(time.time() * 1000)
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


class TrackingUnavailable(RuntimeError):
    """MLflow cannot be reached at the start of a job that requires it (`tracking.required`), or it
    refused the run itself (a deleted run to resume, say)."""


class TrackingBufferFull(RuntimeError):
    """An outage outlasted the buffer's cap (`tracking.buffer_max_mb`)."""


def is_permanent(exc: BaseException) -> bool:
    """Whether a failed tracking call can never succeed as it is (so retrying it would block every later
    call): MLflow answered with a 4xx other than 408/429 (an invalid key or value, a deleted run, no
    permission), or the call raised something that is no transport error. A refused connection, a
    timeout, or a 5xx / 408 / 429 (after MLflow's own retries: MLflow reports a failed request as an
    INTERNAL_ERROR, HTTP 500) is an outage: retry later."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, OSError):  # connection refused, DNS, timeouts (requests' errors are OSErrors)
        return False
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429)
    return True


class BufferedTracker:
    """Keeps training going through a tracking outage and loses nothing it accepted.

    A call MLflow cannot take now is kept, in order, in memory and in a journal file (append-only JSON
    lines, each call written once; a line `{"done": seq}` when it went through), and retried, oldest
    first, at the next call once `retry_every_s` passed since the last try. A process killed meanwhile
    loses nothing: the next `BufferedTracker` on the same journal (a resume of the run) sends what the
    journal holds first. Metric timestamps are fixed when a call is accepted, so a call sent twice
    (the process died between sending it and noting it done) is stored once: MLflow keeps one row per
    (key, step, timestamp, value).

    - A call MLflow rejects for good (`is_permanent`: an invalid key, a deleted run) is dropped with a
      warning (once per kind of error) and counted in the metric `tracking/dropped_calls`, instead of
      blocking every later call.
    - The buffer is capped (`max_bytes`): an outage beyond it raises `TrackingBufferFull`.
    - A journal that cannot be written (a full disk) is warned about once; calls are then kept in memory.
    - MLflow down at start (the run cannot even be created): `required` raises `TrackingUnavailable`;
      otherwise the run is created once MLflow answers, and `on_run(mlflow_run_id)` is told its id.
    - `close` sends what is buffered (trying for up to `close_wait_s`) and always ends the run when
      MLflow answers, whatever was dropped; when it does not, the journal stays for a resume.

    Reads (`metric_history`) are not buffered: during an outage they return nothing. MLflow's system
    metrics thread logs on its own and stops at the first failure."""

    def __init__(
        self,
        inner: Tracker | Callable[[str | None], Tracker],
        journal: str | Path,
        *,
        run_id: str | None = None,
        required: bool = False,
        max_bytes: int = 256 << 20,
        retry_every_s: float = 30.0,
        close_wait_s: float = 30.0,
        on_run: Callable[[str], None] | None = None,
    ) -> None:
        self._connect = (lambda _run_id: inner) if hasattr(inner, "log_metrics") else inner
        self.journal = Path(journal)
        self.inner: Tracker | None = None
        self._run_id = run_id
        self.on_run = on_run
        self.max_bytes, self.retry_every_s, self.close_wait_s = max_bytes, retry_every_s, close_wait_s
        self.pending: deque[tuple[int, str, list[Any], int]] = deque()  # (seq, method, args, bytes)
        self.pending_bytes = 0
        self.seq = 0
        self.outage = False
        self.next_try = 0.0
        self.dropped = 0
        self._dropped_reported = 0
        self.last_step = 0
        self._warned: set[tuple[str, str]] = set()
        self.journal_ok = True
        self.flushed_after_outage = 0
        self.replayed = self._read_journal()
        try:
            self._open()
        except Exception as exc:
            if required or is_permanent(exc):
                what = "is required (tracking.required=true)" if required else "refused the run"
                raise TrackingUnavailable(f"MLflow {what}: {type(exc).__name__}: {str(exc)[:300]}") from exc
            self._enter_outage(exc, "at the start of the job (the run is created once it answers)")
        if self.replayed:
            warnings.warn(
                f"{self.replayed} MLflow calls of an earlier attempt of this run were kept in "
                f"{self.journal}: sending them first",
                stacklevel=2,
            )
        self.flush(force=True)

    # -- the run -------------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self.inner.run_id if self.inner is not None else self._run_id

    @property
    def experiment_id(self) -> str | None:
        return getattr(self.inner, "experiment_id", None)

    def _open(self) -> None:
        self.inner = self._connect(self._run_id)
        if self._run_id is None and self.inner.run_id is not None:
            self._run_id = self.inner.run_id
            if self.on_run is not None:
                self.on_run(self._run_id)

    # -- the journal ---------------------------------------------------------------------------------------
    def _read_journal(self) -> int:
        """Calls an earlier process accepted but never got through, back into the queue, in order."""
        if not self.journal.is_file():
            return 0
        calls: dict[int, tuple[str, list[Any]]] = {}
        with self.journal.open() as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by the kill: the call was never accepted
                    continue
                if "done" in entry:
                    calls.pop(entry["done"], None)
                elif "seq" in entry:
                    calls[entry["seq"]] = (entry["method"], entry["args"])
                    self.seq = max(self.seq, entry["seq"] + 1)
        for seq in sorted(calls):
            method, args = calls[seq]
            size = len(json.dumps(args, default=str))
            self.pending.append((seq, method, args, size))
            self.pending_bytes += size
        return len(calls)

    def _append(self, entry: dict[str, Any]) -> None:
        if not self.journal_ok:
            return
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            with self.journal.open("a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        except OSError as exc:  # a full disk, a read-only mount: keep going in memory
            self.journal_ok = False
            warnings.warn(
                f"cannot write the MLflow buffer {self.journal} ({type(exc).__name__}: {exc}); buffered "
                "calls are kept in memory only, and lost if this process dies before MLflow is back",
                stacklevel=4,
            )

    # -- calls ---------------------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> None:
        if not self.pending and self.inner is not None:
            try:
                getattr(self.inner, method)(*args)
                return
            except Exception as exc:  # a tracking failure must not stop training
                if is_permanent(exc):
                    self._drop(method, exc)
                    return
                self._enter_outage(exc, "")
        self._enqueue(method, list(args))
        self.flush()

    def _enqueue(self, method: str, args: list[Any]) -> None:
        text = json.dumps({"seq": self.seq, "method": method, "args": args}, default=str)
        if self.pending_bytes + len(text) > self.max_bytes:
            raise TrackingBufferFull(
                f"MLflow has been unavailable for {len(self.pending)} calls, which fill the buffer's "
                f"tracking.buffer_max_mb={self.max_bytes / 2**20:g} MB ({self.journal}); training stops "
                "here (the journal keeps them for a resume): bring MLflow back, or raise the cap"
            )
        self._append(json.loads(text))
        self.pending.append((self.seq, method, args, len(text)))
        self.pending_bytes += len(text)
        self.seq += 1

    def _enter_outage(self, exc: BaseException, when: str) -> None:
        self.next_try = time.monotonic() + self.retry_every_s
        if not self.outage:
            self.outage = True
            warnings.warn(
                f"MLflow unavailable{' ' + when if when else ''} ({type(exc).__name__}: {str(exc)[:200]}); "
                f"buffering calls in {self.journal} and retrying every {self.retry_every_s:g}s",
                stacklevel=4,
            )

    def _drop(self, method: str, exc: BaseException) -> None:
        self.dropped += 1
        code = getattr(exc, "error_code", type(exc).__name__)
        if (method, code) not in self._warned:
            self._warned.add((method, code))
            warnings.warn(
                f"MLflow rejected a {method} call for good ({code}: {str(exc)[:300]}); it is dropped, and "
                "further such calls are counted in tracking/dropped_calls",
                stacklevel=4,
            )

    def flush(self, force: bool = False) -> None:
        """Send what is buffered, in order; stops at the first call that still meets an outage. Between
        tries during an outage, calls only queue (`retry_every_s`), unless `force`."""
        if not self.pending and self.inner is not None:
            return
        if self.outage and not force and time.monotonic() < self.next_try:
            return
        try:
            if self.inner is None:
                self._open()
        except Exception as exc:
            if is_permanent(exc):
                raise TrackingUnavailable(f"MLflow refused the run: {str(exc)[:300]}") from exc
            self._enter_outage(exc, "")
            return
        while self.pending:
            seq, method, args, size = self.pending[0]
            try:
                getattr(self.inner, method)(*args)
            except Exception as exc:
                if not is_permanent(exc):
                    self._enter_outage(exc, "")
                    return
                self._drop(method, exc)
            self.pending.popleft()
            self.pending_bytes -= size
            self._append({"done": seq})
            self.flushed_after_outage += 1
        if self.outage:
            self.outage = False
            warnings.warn(
                f"MLflow reachable again: flushed {self.flushed_after_outage} buffered calls", stacklevel=3
            )
        self.flushed_after_outage = 0
        if self.journal_ok:
            self.journal.unlink(missing_ok=True)  # everything went through: nothing to replay

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", {k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        if self.dropped != self._dropped_reported:
            metrics[DROPPED_CALLS] = float(self.dropped)
            self._dropped_reported = self.dropped
        self.last_step = max(self.last_step, step)
        self._call("log_metrics", metrics, step, timestamp_ms or int(time.time() * 1000))

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
        self.flush(force=True)
        if self.pending or self.inner is None:
            return {}
        try:
            return self.inner.metric_history(prefixes)
        except Exception as exc:  # a read that fails must not stop training either
            warnings.warn(f"MLflow metric history unavailable ({type(exc).__name__})", stacklevel=2)
            return {}

    def close(self, status: str = "FINISHED") -> None:
        """Send what is buffered (for up to `close_wait_s`), then end the run with `status`; a run whose
        calls were dropped is ended all the same. MLflow still down: the journal stays for a resume."""
        deadline = time.monotonic() + self.close_wait_s
        self.flush(force=True)
        while (self.pending or self.inner is None) and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            self.flush(force=True)
        if self.dropped:
            warnings.warn(f"{self.dropped} MLflow calls were rejected for good and dropped", stacklevel=2)
        if self.pending or self.inner is None:
            warnings.warn(
                f"MLflow still unavailable at the end: {len(self.pending)} calls kept in {self.journal}; "
                f"the run stays {'un' if self.inner is None else ''}created/RUNNING in MLflow until a "
                "resume of this run sends them",
                stacklevel=2,
            )
            return
        if self.dropped != self._dropped_reported:
            with contextlib.suppress(Exception):
                now = int(time.time() * 1000)
                self.inner.log_metrics({DROPPED_CALLS: float(self.dropped)}, self.last_step, now)
        try:
            self.inner.close(status)
        except Exception as exc:
            warnings.warn(f"MLflow could not end the run ({type(exc).__name__}: {exc})", stacklevel=2)


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
