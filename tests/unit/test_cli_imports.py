"""The face stays light: every `rrm-ray` call builds the whole parser, so a command that only reads a
config (`--help`, `plan`, a config error, `submit`'s checks) must not load the stacks the jobs run on.
Through the installed console script, with Python's own import log (PYTHONPROFILEIMPORTTIME)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.integration.conftest import REPO, RRM_RAY

HEAVY = ("torch", "ray", "vllm", "transformers", "deepspeed", "mlflow")


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    cmd = [str(RRM_RAY), *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    tops = {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w]+)", proc.stderr, re.M)}
    return proc, tops


@pytest.mark.parametrize(
    ("args", "rc"),
    [
        (["--help"], 0),
        (["train", "--help"], 0),
        (["plan", "configs/grpo_gpu_1x8.yaml"], 0),
        (["train", "configs/quickstart.yaml", "learner.lrr=1"], 2),  # a config error, before any job code
    ],
)
def test_reading_a_config_loads_no_torch_ray_or_vllm(args, rc):
    proc, tops = imported_by(*args)
    assert proc.returncode == rc, proc.stderr[-2000:]
    assert "rrm_ray" in tops  # the import log was read (a module per line, torch's too when loaded)
    assert not tops & set(HEAVY), sorted(tops & set(HEAVY))
