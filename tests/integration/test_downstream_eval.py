"""`rrm-ray downstream-eval` through the installed console script: lm-eval's HF backend on the tiny
random-weight model over the MMLU-Pro / GPQA fixtures, offline; the table and the MLflow metrics. And
the training hook's Ray task (`downstream_metrics`) on the session's Ray."""

from __future__ import annotations

import re

import mlflow
import pytest

from rrm_ray.clients.downstream import downstream_metrics
from rrm_ray.validation import load_config
from tests.integration.conftest import REPO, rrm_ray_cli
from tests.readme import runs_command

pytestmark = pytest.mark.integration
FIXTURES = REPO / "tests" / "fixtures" / "downstream"
MMLU_PRO, GPQA = FIXTURES / "mmlu_pro_sample.jsonl", FIXTURES / "gpqa_sample.jsonl"
NUMBER = r"(\d+\.\d{3})"


@runs_command("downstream-eval")
def test_downstream_eval_prints_the_table_and_logs_to_mlflow(tiny_model, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = rrm_ray_cli(
        "downstream-eval",
        "--model",
        tiny_model,
        "--tasks",
        f"mmlu_pro={MMLU_PRO},gpqa_sample={GPQA}",
        f"tracking.uri={uri}",
        "tracking.experiment=downstream",
        "tracking.system_metrics=false",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"mmlu_pro: 12 of 12 rows of {MMLU_PRO} (mmlu_pro)" in out
    assert f"gpqa_sample: 8 of 8 rows of {GPQA} (gpqa)" in out
    assert re.search(r"^task\s+n\s+acc\s+stderr\s+acc_norm\s+stderr$", out, flags=re.M), out
    printed = {}
    for task, n in (("mmlu_pro", 12), ("gpqa_sample", 8)):
        row = re.search(rf"^{task}\s+{n}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, flags=re.M)
        assert row, out
        acc, _, acc_norm, _ = map(float, row.groups())
        assert 0 <= acc <= 1 and 0 <= acc_norm <= 1
        printed[task] = acc

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("downstream").experiment_id])
    metrics = run.data.metrics
    for task, n in (("mmlu_pro", 12), ("gpqa_sample", 8)):
        assert metrics[f"downstream/{task}/n"] == n
        assert round(metrics[f"downstream/{task}/acc"], 3) == printed[task]
    assert run.data.tags["rrm_ray.job"] == "downstream-eval" and run.info.status == "FINISHED"


def test_the_training_hook_runs_in_a_ray_task(tiny_model, ray_local):
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model}",
            "trainer.downstream_eval.enabled=true",
            f"trainer.downstream_eval.tasks.gpqa={GPQA}",
            "trainer.downstream_eval.limit=2",
        ],
    )
    metrics = downstream_metrics(cfg, tiny_model, "before")
    assert metrics["downstream/gpqa/n"] == metrics["downstream_before/gpqa/n"] == 2
    assert 0 <= metrics["downstream_before/gpqa/acc"] <= 1
    assert metrics["downstream/gpqa/acc"] == metrics["downstream_before/gpqa/acc"]
