"""One FSDP2 mixed-precision learner step on one GPU: tokens/s, MFU, peak memory, fp32-master check.

    python bench/gpu/learner_step.py [--batch 4] [--seq 4096] [--steps 5] [--peak-tflops 989]
    python bench/gpu/learner_step.py --device cpu --tiny          # smoke test: gloo, a tiny config

Needs torch, transformers, safetensors and accelerate (pure Python; the FSDP2 backend builds the model
empty with it) plus this repo's `actors.backends` and `rrm_ray.algo`: no Ray, vLLM, DeepSpeed or MLflow,
so it runs on a bare GPU machine. The model has
random weights in Qwen2-1.5B's shapes (the config is written out below; nothing is downloaded) and goes
through the learner's own code: `FSDP2Backend` (fp32 masters, bf16 all-gather, fp32 reduce-scatter),
the chunked log-prob forward, the GRPO loss of `rrm_ray.algo`, `clip_and_step`.

    step 0   at lr 1e-6: the fraction of fp32 master weights it changed (pure bf16 AdamW rounds almost
             all such updates away; fp32 masters keep them), then the copy is freed
    1..N     timed (after that warm-up step): tokens/s, and peak memory over these steps

    then     the weight sync's streamed gather (issue 23, item 7): every weight in turn, full, cast to
             bf16 before the gather, timed; the allocator cache a colocated engine would find taken,
             released as the learner does before one wakes (item 4); rank-0 loading (item 8): the
             trained weights written as an HF directory, then a new FSDP2 learner built empty and
             filled from it by rank 0, timed, its peak memory, and checked equal to what was written

MFU counts model FLOPs per trained token, 6 x (decoder matmul parameters + the lm_head's V x H) plus
causal attention 6 x layers x seq x hidden, against `--peak-tflops` (H200 / H100 SXM bf16 dense: 989).
Work the learner adds on top (recomputing each log-prob chunk in backward, gradient checkpointing) is
not counted, as is usual for MFU. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, when run as a plain script

from actors.backends import FSDP2Backend
from rrm_ray import algo

FORBIDDEN = ("ray", "vllm", "deepspeed", "mlflow")


def qwen2_config(tiny: bool):
    """Qwen2-1.5B's shapes (its published config.json), or a tiny model for the smoke test."""
    from transformers import Qwen2Config

    if tiny:
        shapes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)  # fmt: skip
    else:
        shapes = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768)  # fmt: skip
    return Qwen2Config(
        **shapes, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, use_cache=False
    )


def model_flops_per_token(config, seq: int) -> float:
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size  # q, o, k, v, gate/up/down
    matmul_params = layers * per_layer + config.vocab_size * h  # + the lm_head projection
    return 6.0 * matmul_params + 6.0 * layers * seq * h


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_rank(device: torch.device) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    os.environ.update(LOCAL_RANK="0")
    if device.type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def local_masters(model: torch.nn.Module) -> list[torch.Tensor]:
    return [
        p.to_local().detach().clone() if hasattr(p, "to_local") else p.detach().clone()
        for p in model.parameters()
    ]


def changed_fraction(model: torch.nn.Module, before: list[torch.Tensor]) -> float:
    """Fraction of master elements that differ from `before`, over all ranks' shards."""
    changed = total = 0
    for p, b in zip(model.parameters(), before, strict=True):
        local = p.to_local() if hasattr(p, "to_local") else p
        changed += int((local.detach() != b).sum())
        total += b.numel()
    counts = torch.tensor([changed, total], dtype=torch.float64, device=before[0].device)
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def rss_peak_gib() -> float:
    return int(re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 2**20


def sync_release_and_load(backend, config, device: torch.device, cfg, sync) -> dict:
    """Items 7, 4 and 8 of issue 23 on the trained learner; see the module docstring."""
    sync()
    start, nbytes = time.perf_counter(), 0
    for _, tensor in backend.stream_weights(torch.bfloat16):
        nbytes += tensor.numel() * tensor.element_size()
    sync()
    gather_s = time.perf_counter() - start
    released = 0.0
    if device.type == "cuda":
        held = torch.cuda.memory_reserved()
        gc.collect()
        torch.cuda.empty_cache()
        released = (held - torch.cuda.memory_reserved()) / 2**30
    from safetensors.torch import save_file

    written = backend.full_state_dict(torch.bfloat16)
    with tempfile.TemporaryDirectory() as directory:
        config.save_pretrained(directory)
        save_file({k: v.contiguous() for k, v in written.items() if k != "lm_head.weight"},
                  f"{directory}/model.safetensors", metadata={"format": "pt"})  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        sync()
        start = time.perf_counter()
        loaded = FSDP2Backend(directory, torch.bfloat16, device, cfg, frozen=False)
        sync()
        load_s = time.perf_counter() - start
        load_peak = (
            (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else rss_peak_gib()
        )
    again = loaded.full_state_dict(torch.bfloat16)
    exact = again.keys() == written.keys() and all(torch.equal(again[k], written[k]) for k in written)
    return {
        "stream_gather_s": gather_s,
        "stream_gib": nbytes / 2**30,
        "cache_released_gib": released,
        "rank0_load_s": load_s,
        "rank0_load_peak_gib": load_peak,
        "rank0_load_peak_kind": "max_memory_allocated above the trained learner's"
        if device.type == "cuda"
        else "process RSS high-water",
        "rank0_load_exact": bool(exact),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="a tiny config (smoke test)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; tiny 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 4096; tiny 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after the first (default 5; tiny 2)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per forward/backward")
    p.add_argument("--chunk", type=int, default=1024, help="learner.logprob_chunk")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's bf16 dense peak")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing of the decoder layers")
    p.add_argument("--threads", type=int, default=1, help="torch threads on cpu")
    args = p.parse_args()
    batch = args.batch or (2 if args.tiny else 4)
    seq = args.seq or (32 if args.tiny else 4096)
    steps = args.steps or (2 if args.tiny else 5)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible (use --device cpu --tiny for the smoke test)")
    if batch % args.micro_batch:
        p.error(f"--batch {batch} must be a multiple of --micro-batch {args.micro_batch}")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    init_single_rank(device)

    from transformers import Qwen2ForCausalLM

    config = qwen2_config(args.tiny)
    with device:  # random fp32 weights built in place (on the GPU: fast, no host copy)
        model = Qwen2ForCausalLM(config)
    # The LearnerConfig fields the backend reads (rrm_ray.config imports OmegaConf, absent on a bare GPU
    # machine, so the same attributes come as a namespace).
    cfg = SimpleNamespace(lr=args.lr, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0,
                          gradient_checkpointing=args.grad_ckpt, lora=SimpleNamespace(rank=0))  # fmt: skip
    backend = FSDP2Backend("", torch.bfloat16, device, cfg, frozen=False, model=model)
    params = sum(x.numel() for x in model.parameters())

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g).to(device)
    advantages = torch.randn(batch, generator=g).to(device)
    mask = torch.ones(batch, seq - 1, device=device)
    tokens = batch * (seq - 1)

    def train_step() -> algo.PolicyLossOutput:
        backend.model.train()
        for s in range(0, batch, args.micro_batch):
            sl = slice(s, s + args.micro_batch)
            lp, _ = backend.model(
                input_ids=ids[sl],
                attention_mask=torch.ones_like(ids[sl]),
                logprob_temperature=1.0,
                logprob_chunk=args.chunk,
                logprob_entropy=True,
            )
            out = algo.policy_loss(lp, lp.detach(), advantages[sl], mask[sl])
            backend.backward(out.loss_sum / tokens)
        return backend.clip_and_step(1.0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    before = local_masters(backend.model)
    backend.set_lr(1e-6)
    first = train_step()
    sync()
    fraction = changed_fraction(backend.model, before)
    del before
    backend.set_lr(args.lr)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    skipped = 0
    for _ in range(steps):
        skipped += not train_step().applied
    sync()
    seconds = time.perf_counter() - start
    tokens_per_s = steps * batch * seq / seconds
    flops = model_flops_per_token(config, seq)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else rss_peak_gib()
    extra = sync_release_and_load(backend, config, device, cfg, sync)
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "model": "tiny Qwen2" if args.tiny else "Qwen2-1.5B shapes (random weights)",
        "params": params,
        "batch": batch,
        "seq": seq,
        "micro_batch": args.micro_batch,
        "grad_ckpt": args.grad_ckpt,
        "timed_steps": steps,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_token": flops / 1e12,
        "mfu": flops * tokens_per_s / (args.peak_tflops * 1e12),
        "peak_tflops": args.peak_tflops,
        "peak_memory_gib": peak,
        "peak_memory_kind": "max_memory_allocated" if device.type == "cuda" else "process RSS high-water",
        "first_step_grad_norm": first.grad_norm,
        "masters_changed_at_lr_1e-6": fraction,
        "skipped_steps": skipped,
        **extra,
        "forbidden_imports": [m for m in FORBIDDEN if m in sys.modules],
        "torch": torch.__version__,
    }
    print(f"{report['model']}: {params / 1e6:,.1f} M params on {report['device']}")
    print(f"tokens/s {tokens_per_s:,.0f}   MFU {report['mfu']:.1%} of {args.peak_tflops:g} TFLOPs")
    print(f"peak memory {peak:.1f} GiB ({report['peak_memory_kind']})")
    print(f"fp32 masters changed by one step at lr 1e-6: {fraction:.2%}")
    print(
        f"streamed gather {extra['stream_gather_s']:.3f} s ({extra['stream_gib']:.2f} GiB in bf16, "
        f"{extra['stream_gib'] / extra['stream_gather_s']:.1f} GiB/s); cache released "
        f"{extra['cache_released_gib']:.2f} GiB; rank-0 load {extra['rank0_load_s']:.1f} s, "
        f"peak {extra['rank0_load_peak_gib']:.2f} GiB, exact: {extra['rank0_load_exact']}"
    )
    print(json.dumps(report))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
