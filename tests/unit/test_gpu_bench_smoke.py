"""`bench/gpu/learner_step.py --device cpu --tiny`: the GPU benchmark's code path runs end to end on CPU
(gloo, a tiny Qwen2), its fp32-master check sees the update, and it imports no Ray/vLLM/DeepSpeed/MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu" / "learner_step.py"


def test_gpu_learner_step_smoke_mode_on_cpu(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the script finds the repo itself, as on a bare GPU machine
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["forbidden_imports"] == []
    assert report["masters_changed_at_lr_1e-6"] > 0.5  # fp32 masters keep a 1e-6 update
    assert report["skipped_steps"] == 0 and report["first_step_grad_norm"] > 0
    assert report["tokens_per_s"] > 0 and report["peak_memory_gib"] > 0
    assert 0 < report["mfu"] < 1
    # the sync's streamed gather, and rank-0 loading of what was trained (issue 23, items 7 and 8)
    assert report["stream_gib"] > 0 and report["stream_gather_s"] > 0
    assert report["rank0_load_exact"] is True
