"""Issue 15: published benchmark files are read as published, and no data is made up silently.
Both through the installed `rrm-ray` script, as a user runs it."""

from __future__ import annotations

import os

import mlflow
import pytest

from tests.integration.conftest import REPO, rrm_ray_cli
from tests.integration.test_judge_actor import judge_overrides

pytestmark = pytest.mark.integration

SHAPES = "tests/fixtures/pandalm_published_shapes.json"  # the published test set's odd rows, 7 of them


def test_eval_reads_published_pandalm_shapes_and_reports_what_it_coerced(tiny_model, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Fastest judge: a forced choice between "1" and "2", one vote, on the tiny random model.
    judge = judge_overrides(
        tiny_model, **{"judge.mode": "direct", "judge.verdict": "choice", "judge.votes": 1}
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "local"}
    proc = rrm_ray_cli(
        "eval",
        "--benchmark",
        "pandalm",
        "--data",
        SHAPES,
        "--config",
        "configs/judge_cpu.yaml",
        *judge,
        "data.on_error=skip",  # the row without labels is skipped and counted (raise: see the unit tests)
        "cluster.local_num_cpus=4",
        f"tracking.uri={uri}",
        "tracking.experiment=published-files",
        f"checkpoint.dir={tmp_path / 'run'}",
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"data {SHAPES}: 6 items read, 1 rows skipped, 6 evaluated" in out
    assert "text coerced in the evaluated items: empty_string 2, bool 1, number 1, null 0, nan 0" in out
    assert "ties (majority label 0): 1;" in out
    assert f"skipped: {SHAPES}: row 7: field 'annotator1': missing" in out
    assert "PandaLM: 6 items (1 ties" in out
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("published-files").experiment_id])
    metrics = run.data.metrics
    assert (metrics["data/coerced_empty_string"], metrics["data/coerced_bool"]) == (2, 1)
    assert (metrics["data/coerced_number"], metrics["data/skipped_rows"], metrics["data/ties"]) == (1, 1, 1)
    assert metrics["judge/comparisons"] == 6


def test_train_with_a_mistyped_data_path_fails_before_anything_starts(tiny_model, tmp_path):
    # tiny_model has converted the packaged SmolLM2 (quickstart's model.path) into the cache already.
    typo = tmp_path / "typo" / "x.jsonl"
    proc = rrm_ray_cli("train", "configs/quickstart.yaml", f"data.train_path={typo}", timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"config error: data.train_path: {typo} does not exist" in proc.stderr
    assert "data.generate_dir" in proc.stderr
    assert "MLflow run" not in proc.stdout  # the job was never made: no tracker run, no Ray
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not typo.parent.exists()
