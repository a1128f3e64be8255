"""lm-eval on a local model: the downstream evaluation's work, in `rrm-ray downstream-eval`'s own
process or in a Ray task of `rrm-ray train` (`rrm_ray.clients.downstream`). It owns the model while
it runs; the files were read and checked before (`rrm_ray.data.downstream`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rrm_ray.config import DownstreamEvalConfig
from rrm_ray.data.downstream import OFFLINE_ENV, TaskData, lm_eval_task_name, read_tasks, write_task_dir
from rrm_ray.models import resolve_model_path


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a stderr it cannot compute (a single row)."""
    return float(value) if isinstance(value, int | float) else None


def evaluate_tasks(
    tasks: dict[str, TaskData],
    model_path: str,
    device: str,
    dtype: str,
    batch_size: int,
    num_fewshot: int = 0,
) -> dict[str, dict[str, float | None]]:
    """lm-eval over `tasks` with its HF backend on a local model: {task: {acc, acc_stderr, acc_norm,
    acc_norm_stderr, n}}. Sets the hub-offline variables first (read by the libraries at import)."""
    os.environ.update(OFFLINE_ENV)
    import lm_eval
    from lm_eval.tasks import TaskManager

    # An absolute path is no valid hub repo id, so lm-eval's model-info lookup cannot become a request.
    model_path = str(Path(model_path).resolve())
    with tempfile.TemporaryDirectory(prefix="rrm-downstream-") as tmp:
        task_dir = write_task_dir(tasks, tmp, num_fewshot)
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": model_path, "dtype": dtype},
            tasks=[lm_eval_task_name(name) for name in tasks],
            batch_size=batch_size,
            device=device,
            task_manager=manager,
            log_samples=False,
        )
    results: dict[str, dict[str, float | None]] = {}
    for name in tasks:
        scores = out["results"][lm_eval_task_name(name)]
        results[name] = {
            "acc": _number(scores["acc,none"]),
            "acc_stderr": _number(scores.get("acc_stderr,none")),
            "acc_norm": _number(scores["acc_norm,none"]),
            "acc_norm_stderr": _number(scores.get("acc_norm_stderr,none")),
            "n": float(out["n-samples"][lm_eval_task_name(name)]["effective"]),
        }
    return results


def run_downstream_eval(
    d: DownstreamEvalConfig, model_path: str, device: str, dtype: str
) -> dict[str, dict[str, float | None]]:
    """Read and check the files of `d.tasks`, then evaluate `model_path` ("smollm2" or an HF folder)."""
    tasks = read_tasks(d)
    return evaluate_tasks(tasks, resolve_model_path(model_path), device, dtype, d.batch_size, d.num_fewshot)
