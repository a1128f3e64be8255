"""The tracker keeps training going through a tracking outage (a failing inner tracker stands in for a
server that is down; tests/integration/test_mlflow_outage.py does the same with a real server)."""

import gzip
import json
import re
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rrm_ray.config import ConfigError
from rrm_ray.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    BufferedTracker,
    MLflowTracker,
    TrackingBufferFull,
    TrackingUnavailable,
    default_run_name,
    file_dataset,
    is_permanent,
    run_page,
    sanitize,
)
from rrm_ray.validation import load_config


class FlakyTracker:
    """A tracker whose server can be down (`up`) or refuse a call for good (a metric named `rejected`)."""

    run_id = "run-1"

    def __init__(self):
        self.up = True
        self.metrics = []
        self.closed = None

    def log_metrics(self, metrics, step, timestamp_ms=None):
        if not self.up:
            raise ConnectionError("server down")
        if "rejected" in metrics:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value("Invalid metric name")
        self.metrics.append((step, metrics))

    def log_params(self, params): ...
    def log_table(self, rows, name): ...
    def set_tags(self, tags): ...

    def close(self, status="FINISHED"):
        if not self.up:
            raise ConnectionError("server down")
        self.closed = status


def buffered(inner, path, **kwargs):
    return BufferedTracker(inner, path, retry_every_s=0.0, close_wait_s=0.0, **kwargs)


def journal(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("name", "clean"), [("a/b", "a/b"), ("acc@1", "acc_1"), ("x:y", "x_y"), ("", "_")])
def test_sanitize(name, clean):
    assert sanitize(name) == clean


def test_outage_buffers_each_call_once_in_order_and_flushes(tmp_path):
    """Four failed steps leave steps 2-5 in the journal, each once (it used to hold [2, 2, 2, 2])."""
    inner, path = FlakyTracker(), tmp_path / "buffer.jsonl"
    tracker = buffered(inner, path)
    tracker.log_metrics({"m": 1.0}, step=1)
    inner.up = False
    with pytest.warns(UserWarning, match="MLflow unavailable"):
        tracker.log_metrics({"m": 2.0}, step=2)
    for step in (3, 4, 5):
        tracker.log_metrics({"m": float(step)}, step=step)
    assert [e["args"][1] for e in journal(path)] == [2, 3, 4, 5]
    assert [e["seq"] for e in journal(path)] == [0, 1, 2, 3]
    inner.up = True
    with pytest.warns(UserWarning, match="reachable again: flushed 5"):
        tracker.log_metrics({"m": 6.0}, step=6)
    assert [s for s, _ in inner.metrics] == [1, 2, 3, 4, 5, 6]
    assert not path.exists()
    tracker.close()
    assert inner.closed == "FINISHED"


def test_a_killed_process_loses_nothing_the_next_one_replays_the_journal(tmp_path):
    inner, path = FlakyTracker(), tmp_path / "buffer.jsonl"
    inner.up = False
    first = buffered(inner, path)
    with pytest.warns(UserWarning):
        for step in (1, 2, 3):
            first.log_metrics({"m": float(step)}, step=step)
    inner.up = True
    first.flush(force=True)  # step 1 goes through, then the process dies (no close) ...
    inner.up = False
    first.log_metrics({"m": 4.0}, step=4)
    with path.open("a") as f:
        f.write('{"seq": 9, "method": "log_m')  # ... mid-write of a call it never accepted
    del first
    assert [s for s, _ in inner.metrics] == [1, 2, 3]
    inner.up = True
    with pytest.warns(UserWarning, match="1 MLflow calls of an earlier attempt"):
        second = buffered(inner, path)
    assert [s for s, _ in inner.metrics] == [1, 2, 3, 4] and not path.exists()
    second.log_metrics({"m": 5.0}, step=5)
    assert [s for s, _ in inner.metrics] == [1, 2, 3, 4, 5]


def test_a_call_rejected_for_good_is_dropped_and_counted_not_blocking(tmp_path):
    inner = FlakyTracker()
    tracker = buffered(inner, tmp_path / "buffer.jsonl")
    with pytest.warns(UserWarning, match="rejected a log_metrics call for good .*INVALID_PARAMETER_VALUE"):
        tracker.log_metrics({"rejected": 1.0}, step=1)
    tracker.log_metrics({"m": 2.0}, step=2)
    assert inner.metrics == [(2, {"m": 2.0, "tracking/dropped_calls": 1.0})]
    inner.up = False  # rejected behind an outage: dropped when its turn comes, the rest go through
    with pytest.warns(UserWarning, match="MLflow unavailable"):
        tracker.log_metrics({"m": 3.0}, step=3)
    tracker.log_metrics({"rejected": 1.0}, step=4)
    tracker.log_metrics({"m": 5.0}, step=5)
    inner.up = True
    with pytest.warns(UserWarning, match="were rejected"):
        tracker.close()
    assert [s for s, _ in inner.metrics] == [2, 3, 5, 5] and inner.closed == "FINISHED"
    assert inner.metrics[-1] == (5, {"tracking/dropped_calls": 2.0})  # the count at the end


def test_a_real_mlflow_store_rejection_is_permanent_and_an_outage_is_not(tmp_path):
    """The classifier against MLflow itself: an over-long key is a 400; a refused connection is not."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, REQUEST_LIMIT_EXCEEDED

    real = MLflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "x")
    with pytest.raises(MlflowException) as rejected:
        real.log_metrics({"k" * 300: 1.0}, step=1)
    assert is_permanent(rejected.value)
    assert not is_permanent(ConnectionRefusedError("down"))
    assert not is_permanent(MlflowException("API request to http://x failed", error_code=INTERNAL_ERROR))
    assert not is_permanent(MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED))  # 429
    real.close()


def test_the_buffer_is_capped(tmp_path):
    inner = FlakyTracker()
    inner.up = False
    tracker = buffered(inner, tmp_path / "buffer.jsonl", max_bytes=400)
    with pytest.warns(UserWarning), pytest.raises(TrackingBufferFull, match=r"tracking\.buffer_max_mb"):
        for step in range(100):
            tracker.log_metrics({"loss": 1.0}, step=step)


def test_a_journal_that_cannot_be_written_does_not_stop_training(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the journal's folder should be: every write fails
    inner = FlakyTracker()
    inner.up = False
    tracker = buffered(inner, blocked / "buffer.jsonl")
    with pytest.warns(UserWarning, match="cannot write the MLflow buffer"):
        tracker.log_metrics({"m": 1.0}, step=1)
    tracker.log_metrics({"m": 2.0}, step=2)
    inner.up = True
    with pytest.warns(UserWarning, match="reachable again"):
        tracker.flush(force=True)
    assert [s for s, _ in inner.metrics] == [1, 2]


def test_mlflow_down_at_start_is_buffered_or_fatal_when_required(tmp_path):
    inner, created = FlakyTracker(), []
    attempts = []

    def connect(run_id):
        attempts.append(run_id)
        if len(attempts) < 3:
            raise ConnectionRefusedError("no server yet")
        return inner

    with pytest.warns(UserWarning, match="at the start of the job"):
        tracker = buffered(connect, tmp_path / "buffer.jsonl", on_run=created.append)
    assert tracker.run_id is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"m": 1.0}, step=1)  # third attempt: the run is created, the queue sent
    assert tracker.run_id == "run-1" and created == ["run-1"] and inner.metrics[0][0] == 1
    with pytest.raises(TrackingUnavailable, match=r"tracking.required=true.*no server"):
        buffered(
            lambda _: (_ for _ in ()).throw(ConnectionRefusedError("no server")),
            tmp_path / "b",
            required=True,
        )


def test_still_down_at_close_keeps_the_journal_for_a_resume(tmp_path):
    inner = FlakyTracker()
    inner.up = False
    tracker = buffered(inner, tmp_path / "buffer.jsonl")
    with pytest.warns(UserWarning):
        tracker.log_metrics({"m": 1.0}, step=1)
    with pytest.warns(UserWarning, match="still unavailable"):
        tracker.close()
    assert inner.closed is None and (tmp_path / "buffer.jsonl").exists()


def test_new_calls_are_buffered_too(tmp_path):
    """Datasets, artifacts and the logged model go through the same outage buffer as metrics."""

    class Recorder(FlakyTracker):
        def __init__(self):
            super().__init__()
            self.calls = []

        def log_dataset(self, path, context):
            if not self.up:
                raise ConnectionError("server down")
            self.calls.append(("dataset", path, context))

        def log_artifact(self, local_path, artifact_path):
            self.calls.append(("artifact", local_path, artifact_path))

        def log_model(self, local_dir, mode, step, name, registered_model=None):
            self.calls.append(("model", local_dir, mode, step, name, registered_model))

        def metric_history(self, prefixes):
            return {"time/generate_s": [(1, 2.0)]}

    inner = Recorder()
    tracker = buffered(inner, tmp_path / "buffer.jsonl")
    inner.up = False
    with pytest.warns(UserWarning, match="MLflow unavailable"):
        tracker.log_dataset("train.jsonl", "training")
    tracker.log_artifact("phase_seconds.png", "figures")
    tracker.log_model("/ckpt/final", "path", 2, "policy", "rrm")
    assert tracker.metric_history(("time/",)) == {}  # a read during an outage: nothing, no raise
    assert inner.calls == []
    inner.up = True
    with pytest.warns(UserWarning, match="reachable again"):
        history = tracker.metric_history(("time/",))
    assert history == {"time/generate_s": [(1, 2.0)]}
    assert inner.calls == [
        ("dataset", "train.jsonl", "training"),
        ("artifact", "phase_seconds.png", "figures"),
        ("model", "/ckpt/final", "path", 2, "policy", "rrm"),
    ]


def test_default_run_name_says_job_model_and_time():
    when = datetime(2026, 12, 1, 19, 32, 5)
    name = default_run_name("grpo", "/cache/SmolLM2-135M-Instruct/", when)
    assert name == "grpo-SmolLM2-135M-Instruct-20261201-1932"
    assert default_run_name("eval", "smollm2", when) == "eval-smollm2-20261201-1932"


def test_run_page_opens_the_model_training_view():
    assert run_page("3", "abc", "http://127.0.0.1:5000/") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("train.jsonl", lambda p, rows: p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")),
        ("train.json", lambda p, rows: p.write_text(json.dumps(rows))),
        ("train.json.gz", lambda p, rows: p.write_bytes(gzip.compress(json.dumps({"data": rows}).encode()))),
        ("train.parquet", lambda p, rows: pq.write_table(pa.Table.from_pylist(rows), p)),
    ],
)
def test_file_dataset_describes_the_file(tmp_path, name, write):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "id": i} for i in range(150)]
    path = tmp_path / name
    write(path, rows)
    ds = file_dataset(path, "training")
    assert ds.dataset.name == name and ds.dataset.source_type == "local"
    assert json.loads(ds.dataset.source) == {"uri": str(path.resolve())}
    assert len(ds.dataset.digest) == 8
    assert json.loads(ds.dataset.profile) == {"num_rows": 150, "size_bytes": path.stat().st_size}
    columns = [c["name"] for c in json.loads(ds.dataset.schema)["mlflow_colspec"]]
    assert columns == ["prompt", "answer", "id"]
    assert [(t.key, t.value) for t in ds.tags] == [("mlflow.data.context", "training")]
    if name == "train.jsonl":  # another content, another digest
        path.write_text(path.read_text() + '{"prompt": "x", "answer": "y", "id": 150}\n')
        assert file_dataset(path, "training").dataset.digest != ds.dataset.digest


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_mlflow_run_reads_as_a_training_run(store, tmp_path):
    """Experiment kind, run name, dataset inputs, the final policy as the run's logged model (both modes),
    a registered-model version, figures as artifacts, metric history; system metrics start and stop."""
    import mlflow

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n')
    policy = tmp_path / "final"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    tracker = MLflowTracker(store, "training", "grpo-tiny-20261201-1932", system_metrics_interval_s=0.5)
    tracker.log_dataset(str(data), "training")
    tracker.log_metrics({"time/generate_s": 1.0, "reward/mean": 0.5}, step=1)
    tracker.log_metrics({"time/generate_s": 2.0}, step=2)
    tracker.log_model(str(policy), "path", 2, "policy", registered_model="tiny-policy")
    tracker.log_model(str(policy), "artifacts", 2, "policy")
    png = tmp_path / "phase_seconds.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    tracker.log_artifact(str(png), "figures")
    assert tracker.metric_history(("time/",)) == {"time/generate_s": [(1, 1.0), (2, 2.0)]}
    tracker.close()

    client = mlflow.MlflowClient(tracking_uri=store)
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "grpo-tiny-20261201-1932" and run.info.status == "FINISHED"
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "train.jsonl" and ds.tags[0].value == "training"
    models = [client.get_logged_model(o.model_id) for o in run.outputs.model_outputs]
    assert sorted(m.tags["rrm_ray.path"] for m in models) == [str(policy)] * 2
    assert all(m.source_run_id == tracker.run_id and m.status == "READY" for m in models)
    copied = next(m for m in models if client.list_logged_model_artifacts(m.model_id))
    assert [f.path for f in client.list_logged_model_artifacts(copied.model_id)] == ["config.json"]
    (version,) = client.search_model_versions("name='tiny-policy'")
    assert version.source.startswith("models:/") and version.tags["rrm_ray.path"] == str(policy)
    assert [f.path for f in client.list_artifacts(tracker.run_id, "figures")] == ["figures/phase_seconds.png"]

    # an existing experiment keeps its kind; a resumed run keeps its name
    client.set_experiment_tag(tracker.experiment_id, EXPERIMENT_KIND_TAG, "finetuning")
    again = MLflowTracker(store, "training", run_id=tracker.run_id)
    again.close()
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"
    assert client.get_run(tracker.run_id).info.run_name == "grpo-tiny-20261201-1932"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["tracking.log_model=copy"], "tracking.log_model: got 'copy', allowed: none, path, artifacts"),
        (["tracking.system_metrics_interval_s=0"], "tracking.system_metrics_interval_s: must be > 0"),
        (
            ["tracking.registered_model=rrm", "tracking.log_model=none"],
            "tracking.registered_model: registers",
        ),
        (["tracking.registered_model=rrm", "checkpoint.save_final=false"], "needs tracking.log_model=path"),
        (['tracking.run_name=""'], "tracking.run_name: must be null or non-empty"),
    ],
)
def test_tracking_config_is_validated(overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(None, overrides)
