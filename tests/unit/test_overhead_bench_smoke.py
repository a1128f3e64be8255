"""The overhead benchmarks' cheap parts: both scripts answer --help without importing Ray, vLLM or torch,
and the bare learner of `bench/step_overhead.py` (the update part of its bound) runs on a tiny random
model, training on a batch rebuilt from recorded token ids as the driver builds it.

The parts with engines and actors (the recorded GRPO step, the bare vLLM replays) start Ray and vLLM
several times (minutes on 2 CPU cores): they run as `make bench`, not in the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


@pytest.mark.parametrize(
    "script", ["rollout_throughput.py", "step_overhead.py", "async_pipeline.py", "learner_batching.py"]
)
def test_help_imports_nothing_heavy(script):
    check = (
        f"import runpy, sys; sys.argv = [{str(BENCH / script)!r}, '--help']\n"
        f"try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=BENCH, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "usage:" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bare_learner_trains_the_rebuilt_batch(tmp_path, monkeypatch):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rrm_ray.validation import load_config

    monkeypatch.syspath_prepend(str(BENCH))
    import step_overhead

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, num_key_value_heads=2, **shape))
    tiny.save_pretrained(tmp_path / "tiny")
    cfg = load_config(REPO / "configs" / "demo_rrm.yaml", ["learner.micro_batch_size=2"])
    # One generate call as the rollout recorder keeps it: 2 prompts x 3 samples (token ids < 64).
    lengths = [(3, 4, 5), (2, 6, 1)]
    record = {
        "prompt_ids": [[1, 2, 3], [4, 5]],
        "response_ids": [[[7] * k for k in lengths[0]], [[8] * k for k in lengths[1]]],
    }
    work = step_overhead.learner_work(cfg, [record], pad_id=0)
    assert [len(s) for s in work["shards"]] == [3, 3]  # 6 sequences over the demo's 2 ranks
    spec = step_overhead.learner_spec(cfg, str(tmp_path / "tiny"), [work], [work, work])
    torch.save(spec, tmp_path / "learner_work.pt")

    out = subprocess.run(
        [sys.executable, str(BENCH / "step_overhead.py"), "--phase", "learner", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "learner_result.json").read_text())
    assert [t["trained_tokens"] for t in result["timed"]] == [21, 21]  # every response token, once
    assert result["torch_threads"] == cfg.learner.num_ranks * cfg.learner.threads
