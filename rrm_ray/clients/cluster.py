"""The Ray cluster a command runs on: connect (or start a local one), and read its nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import ray

from rrm_ray.config import JobConfig
from rrm_ray.logs import command_log_file, ray_init_kwargs


def ray_submission_id() -> str:
    """The submission id when this driver runs as a submitted Ray job (`rrm-ray submit`), else "".

    Ray (2.60) sets no RAY_JOB_SUBMISSION_ID for a submitted driver: the id travels in the job config
    JSON that the job supervisor puts in the driver's environment, as metadata["job_submission_id"].
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(raw).get("metadata", {}).get("job_submission_id") or "")
    return ""


def connect_ray(cfg: JobConfig, command: str = "train") -> Path | None:
    """Connect to the configured cluster, or start a local one with the declared logical resources.

    Returns the job's log file for actor and engine output (None when they stream to the console:
    `cluster.stream_worker_logs`); see `rrm_ray.logs`."""
    if ray.is_initialized():
        return None
    log_file = None if cfg.cluster.stream_worker_logs else command_log_file(cfg.checkpoint.dir, command)
    if log_file is not None:
        print(f"actor and engine logs: {log_file}")
    kwargs = ray_init_kwargs(log_file)
    # ray.init replaces a SIGTERM handler with `sys.exit`: a handler the command installed (a graceful
    # stop, rrm_ray.stopping) is put back after it.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, **kwargs)
    else:
        ray.init(
            address="local",  # a new local instance, even if other clusters run on this machine
            num_cpus=cfg.cluster.local_num_cpus,
            num_gpus=cfg.cluster.local_num_gpus,
            include_dashboard=False,
            **kwargs,
        )
    if callable(previous):
        signal.signal(signal.SIGTERM, previous)
    return log_file


def live_nodes(address: str) -> list[dict[str, float]]:
    """Each alive node's total resources on a running cluster (connects, reads, disconnects)."""
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_session(cfg: JobConfig, command: str) -> Iterator[None]:
    """Connected to Ray for the block (`connect_ray`); a Ray this started is shut down after it, one
    that was already up (a sweep's sessions share one) stays."""
    started = not ray.is_initialized()
    connect_ray(cfg, command)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
