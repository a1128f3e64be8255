"""The downstream evaluation inside a training job: lm-eval on the policy in a Ray task of its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ray

from actors.downstream import run_downstream_eval
from rrm_ray.config import JobConfig, resolved_dtype
from rrm_ray.data.downstream import OFFLINE_ENV, WHEN, metric_names
from rrm_ray.models import SMOLLM2_ALIAS


# ---------------------------------------------------------------------------------------------- train hook
def downstream_metrics(cfg: JobConfig, model_path: str, when: str) -> dict[str, float]:
    """`rrm-ray train`'s hook: the policy at `model_path` evaluated on `trainer.downstream_eval.tasks`,
    as metric names (`metric_names`); {} when `trainer.downstream_eval.enabled` is false.

    Connected to Ray (the training job), it runs in a Ray task that asks 1 GPU on cuda (1 CPU on cpu)
    outside the job's placement groups, in a worker that exits afterwards: the driver never holds a
    model, no GPU of the learner or the engines is shared, and the memory is returned. The task needs
    that resource free (`rrm_ray.validation` checks a declared cluster; here the live one) and
    `model_path` readable on its node (a shared checkpoint.dir for the final policy on a multi-node
    cluster). Without Ray it runs in this process.
    """
    if when not in WHEN:
        raise ValueError(f"when must be one of {', '.join(WHEN)}, got {when!r}")
    d = cfg.trainer.downstream_eval
    if not d.enabled:
        return {}
    device, dtype = cfg.cluster.device, resolved_dtype(cfg)
    if not ray.is_initialized():
        return metric_names(run_downstream_eval(d, model_path, device, dtype), when)
    resource = "GPU" if device == "cuda" else "CPU"
    free = ray.available_resources().get(resource, 0.0)
    if free < 1:
        raise RuntimeError(
            f"trainer.downstream_eval: the evaluation runs in a Ray task that needs 1 {resource} outside the "
            f"job's placement groups, and the cluster has {free:g} free; leave one free, or set "
            "trainer.downstream_eval.enabled=false and run `rrm-ray downstream-eval --model DIR` afterwards"
        )
    # Absolute paths, as this process sees them: a Ray worker does not start in the driver's directory.
    d = dataclasses.replace(d, tasks={name: str(Path(p).resolve()) for name, p in d.tasks.items()})
    if model_path != SMOLLM2_ALIAS:
        model_path = str(Path(model_path).resolve())
    remote = ray.remote(
        num_cpus=1,
        num_gpus=1 if device == "cuda" else 0,
        max_calls=1,  # the worker exits after the task: the model's memory goes with it
        runtime_env={"env_vars": OFFLINE_ENV},
    )(run_downstream_eval)
    ref = remote.remote(d, model_path, device, dtype)
    try:
        results = ray.get(ref, timeout=cfg.cluster.call_timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise
    return metric_names(results, when)
