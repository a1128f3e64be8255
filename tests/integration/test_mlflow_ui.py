"""A finished tiny GRPO run, opened as a user would: `mlflow ui` on its store, the run page in headless
Chromium (Debian's `chromium`; `make test` installs it when missing). The run page must show the run's
name, a metric and its dataset inputs; the artifact pages a table and a figure.

The React app renders in the browser, so the checks read the DOM Chromium has after running the page's
scripts (`--dump-dom` with a virtual-time budget, which waits for pending fetches). Set
RRM_RAY_UI_SCREENSHOT=docs/mlflow_run_page.png to refresh the README's screenshot from this run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from rrm_ray.tracking import run_page
from tests.integration.conftest import free_port, stop_process_group, wait_http

pytestmark = pytest.mark.integration

WINDOW = (1920, 2100)  # two columns (datasets beside the metrics), tall enough for the logged model


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's `chromium` is not on PATH: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def finished_run(grpo_run):
    cfg, summary = grpo_run["cfg"], grpo_run["summary"]
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(summary["run_id"])
    return {"cfg": cfg, "run": run, "tmp": Path(cfg.checkpoint.dir).parent}


@pytest.fixture(scope="module")
def ui(finished_run):
    """`mlflow ui` over the run's sqlite store, on loopback (no job workers: nothing here needs them)."""
    tmp, port = finished_run["tmp"], free_port()
    log = tmp / "ui.log"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "ui",
        "--backend-store-uri",
        finished_run["cfg"].tracking.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


def browse(url: str, profile: Path, *args: str) -> str:
    """Chromium's rendered DOM of `url` (or whatever `args` ask for, such as a screenshot)."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        *(args or ("--dump-dom",)),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(url: str, profile: Path, expected: list[str]) -> str:
    """The DOM once every expected text is in it (the app fetches in stages); three tries."""
    for _ in range(3):
        dom = browse(url, profile)
        if all(text in dom for text in expected):
            break
    missing = [text for text in expected if text not in dom]
    assert not missing, f"{url} does not show {missing}; the page had {len(dom)} characters"
    return dom


def test_run_page_shows_name_metrics_datasets_and_model(finished_run, ui, tmp_path):
    run = finished_run["run"]
    url = run_page(run.info.experiment_id, run.info.run_id, ui)
    expected = [run.info.run_name, "reward/mean", "system/cpu_utilization_percentage"]
    expected += ["train.jsonl", "eval.jsonl", "Logged models", "policy"]  # datasets, the final policy
    rendered(url, tmp_path / "chrome", expected)
    # what the page draws from: MLflow's system metrics, the final policy as the run's output
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert len(run.outputs.model_outputs) == 1
    assert run.info.run_name.startswith("grpo-tiny-llama-")


def test_artifact_pages_show_a_table_and_a_figure(finished_run, ui, tmp_path):
    run = finished_run["run"]
    base = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts"
    figure = rendered(f"{base}/figures/phase_seconds.png", tmp_path / "chrome", ["phase_seconds.png"])
    assert 'alt="figures/phase_seconds.png"' in figure  # the image itself, not only its name
    table = f"{base}/tables/samples_step00001.json"
    rendered(table, tmp_path / "chrome", ["samples_step00001.json", "response"])


def test_run_page_screenshot(finished_run, ui, tmp_path):
    run = finished_run["run"]
    shot = tmp_path / "run_page.png"
    url = run_page(run.info.experiment_id, run.info.run_id, ui)
    browse(url, tmp_path / "chrome", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}")
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == WINDOW
    if target := os.environ.get("RRM_RAY_UI_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as im:  # a palette PNG keeps the README's picture small
            im.convert("RGB").quantize(colors=128).save(target, optimize=True)
