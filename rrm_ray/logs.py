"""Where actor and engine output goes: a log file per job, so the console shows only what a user reads.

vLLM, Ray workers, Triton, tcmalloc and OpenMP all write to the worker processes' stdout/stderr (tens
of lines before the first training step). By default every Ray worker of the job points its file
descriptors 1 and 2 at one log file under the run's directory, through Ray's
`worker_process_setup_hook`, so the engines' child processes inherit it too. Exceptions raised in an
actor still reach the driver (and the console) in full through `ray.get`. `--verbose` (config key
`cluster.stream_worker_logs`) streams the workers' output to the console as Ray does by default.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rrm_ray.config import redact_text

LOG_FILE_ENV = "RRM_RAY_LOG_FILE"


def command_log_file(run_dir: str | Path, command: str) -> Path:
    """A new log file for this command's run under `run_dir/logs/` (absolute, so workers on the node
    find it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(run_dir, "logs", f"{command}-{stamp}-{os.getpid()}.log").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def ray_init_kwargs(log_file: Path | None) -> dict:
    """`ray.init` keyword arguments: quiet workers writing to `log_file`, or Ray's streaming default."""
    if log_file is None:
        return {"log_to_driver": True, "runtime_env": {"env_vars": {"RAY_DEDUP_LOGS": "0"}}}
    return {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {
            "env_vars": {"RAY_DEDUP_LOGS": "0", LOG_FILE_ENV: str(log_file)},
            "worker_process_setup_hook": "rrm_ray.logs.redirect_worker_output",
        },
    }


def redirect_worker_output() -> None:
    """Ray worker set-up hook: stdout and stderr (the file descriptors) append to the job's log file."""
    path = os.environ.get(LOG_FILE_ENV)
    if not path:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:  # on another node the run's directory may not exist yet (or not be shared): make it there
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:  # a worker must still start: its output then stays in Ray's own log files
        print(f"rrm-ray: cannot write the job log {path} on this node ({exc}); output stays in Ray's logs")
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"--- ray worker pid {os.getpid()} on {os.uname().nodename} ---", flush=True)


def quiet_driver_loggers() -> None:
    """The driver's own libraries log at INFO (MLflow's store set-up, Ray's start-up, vLLM on import):
    keep their warnings and errors only. Call before they are imported."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("vllm", "ray", "transformers", "torch.distributed", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray 2.60 warns on every local start that token authentication is on by default (README says so).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


class RedactingStream(io.TextIOBase):
    """A console stream that writes `***` for each of `secrets` (the config's secret values): what the
    driver prints (its messages, warnings, tracebacks, streamed worker output) never shows them."""

    def __init__(self, stream: TextIO, secrets: list[str]) -> None:
        self.stream, self.secrets = stream, secrets

    def write(self, text: str) -> int:
        self.stream.write(redact_text(text, self.secrets))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def redact_console(secrets: list[str]) -> None:
    """From now on, the driver's stdout and stderr show `***` for each secret value."""
    if not secrets:
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RedactingStream):
            stream.secrets = sorted({*stream.secrets, *secrets}, key=len, reverse=True)
        else:
            setattr(sys, name, RedactingStream(stream, secrets))
