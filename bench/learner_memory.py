"""Learner memory: peak memory of one forward + backward through the log-prob path, old vs new, one run.

    python bench/learner_memory.py [--tokens 4096] [--chunk 1024] [--device cpu|cuda] [--dtype ...]

One sequence of `--tokens` random tokens through SmolLM2-135M (vocabulary 49,152), the learner's loss
shape (token log-probs and their entropy, a masked sum, backward), two ways:

    old   the HF forward's full logits [1, L, V], `.float() / T`, then the chunked `logprobs.gather_logprobs`
          / `entropy_from_logits` (the learner before this change)
    new   the learner's forward now (`actors.model_io.install_logprob_forward`): hidden states, then
          `logprobs.head_logprobs` over `--chunk` positions at a time, recomputed in backward

Each variant runs in a fresh subprocess so neither inherits the other's allocator state, and warms up
on 64 tokens first. CUDA: max_memory_allocated. CPU: peak RSS of the step, from Linux's VmHWM reset
just before it (/proc/self/clear_refs, after malloc_trim), with glibc's mmap threshold fixed so that
freed tensors leave RSS (see `main`). Both report the whole peak (weights and runtime included) and the
step's increment over what was resident before it; the increment includes what both variants share
(parameter gradients, 513 MiB in fp32; checkpointed layer inputs; attention). Gradient checkpointing of
the decoder layers is on, as the GPU configs run it (--no-grad-ckpt: off). The last line is the ratio of
the step increments new / old (goal: <= 0.5).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def run_variant(args: argparse.Namespace) -> dict:
    """One forward + backward in this process; returns its memory figures in MiB."""
    import torch
    from transformers import AutoModelForCausalLM

    from actors.model_io import install_logprob_forward
    from rrm_ray.logprobs import entropy_from_logits, gather_logprobs
    from rrm_ray.models import resolve_model_path

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=dtype).to(device)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    if args.variant == "new":
        install_logprob_forward(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=g).to(device)
    advantages = torch.randn(1, args.tokens - 1, generator=g).to(device)  # per-token loss weights
    temperature = 0.9

    def step(ids: torch.Tensor) -> None:
        mask, weights = torch.ones_like(ids), advantages[:, : ids.shape[1] - 1]
        if args.variant == "old":
            logits = model(input_ids=ids, attention_mask=mask).logits
            logits = logits[:, :-1].float() / temperature
            lp = gather_logprobs(logits, ids[:, 1:], chunk_size=args.chunk)
            with torch.no_grad():
                ent = entropy_from_logits(logits.detach(), chunk_size=args.chunk)
        else:
            lp, ent = model(
                input_ids=ids,
                attention_mask=mask,
                logprob_temperature=temperature,
                logprob_chunk=args.chunk,
                logprob_entropy=True,
            )
        (lp * weights).sum().backward()
        del lp, ent

    # Warm up on a few tokens (one-time allocations: kernels' workspaces, thread pools), then drop the
    # gradients and hand freed heap memory back to the OS, so the measured step starts from what is
    # really resident and pays for everything it allocates (the parameter gradients included).
    step(ids[:, :64])
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cpu":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step(ids)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        mib = 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark to the current RSS
        base = _status_kib("VmRSS")
        start = time.perf_counter()
        step(ids)
        seconds = time.perf_counter() - start
        peak = _status_kib("VmHWM")
        mib = 1024
    return {
        "variant": args.variant,
        "peak_mib": peak / mib,
        "step_mib": (peak - base) / mib,
        "seconds": seconds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=1024, help="learner.logprob_chunk")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="cpu: float32, cuda: bf16")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    p.add_argument("--variant", choices=["old", "new"], help=argparse.SUPPRESS)  # the subprocess's job
    args = p.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.tokens < 2 or args.chunk < 1:
        p.error("--tokens must be >= 2 and --chunk >= 1")
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0

    from rrm_ray.models import resolve_model_path

    resolve_model_path(args.model)  # convert the packaged model once, outside the measured children
    flags = [f"--tokens={args.tokens}", f"--chunk={args.chunk}", f"--device={args.device}"]
    flags += [f"--dtype={args.dtype}", f"--model={args.model}", f"--threads={args.threads}"]
    flags += [] if args.grad_ckpt else ["--no-grad-ckpt"]
    # glibc raises its mmap threshold after large frees, then serves big tensors from a heap that does
    # not shrink: RSS would measure fragmentation, not tensors. A fixed threshold keeps every large
    # tensor in its own mapping, returned to the OS when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    results = {}
    for variant in ("old", "new"):
        out = subprocess.run(
            [sys.executable, __file__, *flags, f"--variant={variant}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            print(out.stdout, out.stderr, file=sys.stderr)
            return out.returncode
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"one forward+backward, {args.tokens} tokens, {args.dtype} on {args.device}, chunk {args.chunk}, "
        f"gradient checkpointing {'on' if args.grad_ckpt else 'off'}"
    )
    for r in results.values():
        print(
            f"{r['variant']:>4}: peak {r['peak_mib']:8.0f} MiB, step increment {r['step_mib']:8.0f} MiB, "
            f"{r['seconds']:.1f} s"
        )
    print(f"peak ratio new/old {results['new']['peak_mib'] / results['old']['peak_mib']:.3f}")
    print(f"step memory ratio new/old {results['new']['step_mib'] / results['old']['step_mib']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
