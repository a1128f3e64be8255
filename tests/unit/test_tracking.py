"""The tracker keeps training going through a tracking outage (a failing inner tracker stands in for a
server that is down; tests/integration/test_mlflow_outage.py does the same with a real server)."""

import pytest

from rrm_ray.tracking import BufferedTracker, sanitize


class FlakyTracker:
    run_id = "run-1"

    def __init__(self):
        self.up = True
        self.metrics = []
        self.closed = None

    def log_metrics(self, metrics, step):
        if not self.up:
            raise ConnectionError("server down")
        self.metrics.append((step, metrics))

    def log_params(self, params): ...
    def log_table(self, rows, name): ...
    def set_tags(self, tags): ...

    def close(self, status="FINISHED"):
        self.closed = status


@pytest.mark.parametrize(("name", "clean"), [("a/b", "a/b"), ("acc@1", "acc_1"), ("x:y", "x_y"), ("", "_")])
def test_sanitize(name, clean):
    assert sanitize(name) == clean


def test_outage_buffers_in_order_and_flushes(tmp_path):
    inner = FlakyTracker()
    tracker = BufferedTracker(inner, tmp_path / "buffer.jsonl")
    tracker.log_metrics({"m": 1.0}, step=1)
    inner.up = False
    with pytest.warns(UserWarning, match="MLflow unavailable"):
        tracker.log_metrics({"m": 2.0}, step=2)
    tracker.log_metrics({"m": 3.0}, step=3)
    assert len(tracker.pending) == 2 and (tmp_path / "buffer.jsonl").read_text().count("\n") >= 2
    inner.up = True
    with pytest.warns(UserWarning, match="reachable again"):
        tracker.log_metrics({"m": 4.0}, step=4)
    assert [s for s, _ in inner.metrics] == [1, 2, 3, 4]
    assert not (tmp_path / "buffer.jsonl").exists()
    tracker.close()
    assert inner.closed == "FINISHED"


def test_still_down_at_close_keeps_the_buffer(tmp_path):
    inner = FlakyTracker()
    inner.up = False
    tracker = BufferedTracker(inner, tmp_path / "buffer.jsonl")
    with pytest.warns(UserWarning):
        tracker.log_metrics({"m": 1.0}, step=1)
    with pytest.warns(UserWarning, match="still unavailable"):
        tracker.close()
    assert inner.closed is None and (tmp_path / "buffer.jsonl").exists()
