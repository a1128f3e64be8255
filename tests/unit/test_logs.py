"""Where worker output goes: the job's log file, created on whichever node the worker runs."""

from __future__ import annotations

import os
import subprocess
import sys

from rrm_ray.logs import LOG_FILE_ENV, command_log_file, ray_init_kwargs


def run_hook(path: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from rrm_ray.logs import redirect_worker_output as hook; hook(); "
        "print('after'); print('err', file=sys.stderr)"
    )
    env = {**os.environ, LOG_FILE_ENV: path}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_the_hook_sends_stdout_and_stderr_to_the_log_and_makes_its_folder(tmp_path):
    log = tmp_path / "not" / "yet" / "job.log"  # as on a node where the run's folder does not exist
    done = run_hook(str(log))
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    text = log.read_text()
    assert "--- ray worker pid" in text and "after" in text and "err" in text


def test_a_log_that_cannot_be_written_leaves_the_worker_running(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_hook(str(blocker / "job.log"))  # a folder that cannot be made: a file is in the way
    assert done.returncode == 0 and "cannot write the job log" in done.stdout and "after" in done.stdout


def test_quiet_workers_only_without_streaming(tmp_path):
    path = command_log_file(tmp_path, "train")
    assert path.is_file() and path.parent == (tmp_path / "logs").resolve()
    quiet = ray_init_kwargs(path)
    assert quiet["log_to_driver"] is False
    assert quiet["runtime_env"]["worker_process_setup_hook"] == "rrm_ray.logs.redirect_worker_output"
    assert quiet["runtime_env"]["env_vars"][LOG_FILE_ENV] == str(path)
    assert ray_init_kwargs(None)["log_to_driver"] is True
