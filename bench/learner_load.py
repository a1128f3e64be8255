"""Learner start-up: peak host memory per rank while the sharded policy is built. New: the model is
built without weights and filled from the checkpoint that rank 0 alone reads, one tensor at a time
(FSDP2: broadcast, each rank keeps its slice; ZeRO-3: built under zero.Init, each parameter copied in
while gathered). Old: every rank read the whole checkpoint, then sharded it.

    python bench/learner_load.py [--ranks 2] [--backend fsdp2|deepspeed] [--model smollm2]

Each variant starts `--ranks` fresh processes joined in a gloo group (no Ray: just the learner's
backend, as a rank builds it) on the packaged SmolLM2-135M in fp32, and each process reports its peak
resident memory (`ru_maxrss`) after the backend is built, less its peak before any weight was read
(torch, transformers and DeepSpeed's own memory). Both variants run side by side in one run;
the last line is the ratio of the fullest rank's peak, new / old.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run as a plain script


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _rank(rank: int, world: int, port: int, args: SimpleNamespace, variant: str, out: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK="0")
    os.environ["WORLD_SIZE"] = str(world)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from actors.backends import build_backend
    from actors.model_io import load_hf_model
    from rrm_ray.config import LearnerConfig

    cfg = LearnerConfig(backend=args.backend, zero_stage=3)
    cpu = torch.device("cpu")
    if args.backend == "deepspeed":
        from actors.backends.zero import import_deepspeed

        import_deepspeed("cpu")  # its import counts towards the baseline, not the load
    baseline_gib = _peak_gib()  # the libraries' own memory, before any weight is read
    if variant == "old" and args.backend == "fsdp2":  # every rank reads the whole checkpoint
        from actors.backends.fsdp2 import FSDP2Backend

        model = load_hf_model(args.model, "auto", cpu, False)
        FSDP2Backend(args.model, torch.float32, cpu, cfg, frozen=False, model=model)
    elif variant == "old":
        from actors.backends.zero import DeepSpeedBackend, import_deepspeed

        deepspeed = import_deepspeed("cpu")
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        backend = DeepSpeedBackend.__new__(DeepSpeedBackend)
        model = load_hf_model(args.model, torch.float32, cpu, False)  # then ZeRO-3 partitions it
        from actors.backends.zero import ds_config

        backend.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=ds_config(cfg, torch.float32, cpu, False)
        )
    else:
        build_backend(args.backend, args.model, torch.float32, cpu, cfg)
    out.put((rank, _peak_gib() - baseline_gib))
    dist.barrier()
    dist.destroy_process_group()


def run(args: SimpleNamespace, variant: str) -> dict[int, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_rank, args=(r, args.ranks, port, args, variant, out)) for r in range(args.ranks)
    ]
    for p in procs:
        p.start()
    peaks = dict(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=120)
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--backend", choices=("fsdp2", "deepspeed"), default="fsdp2")
    ap.add_argument("--model", default="smollm2", help="an HF directory or smollm2")
    args = ap.parse_args()
    from rrm_ray.models import resolve_model_path

    args.model = resolve_model_path(args.model)
    peaks = {variant: run(args, variant) for variant in ("old", "new")}
    name = Path(args.model).name
    print(
        f"{args.backend}, {args.ranks} ranks, {name} (fp32): peak host memory of each rank while its backend"
    )
    print("is built, above what the process held before reading any weight (GiB):")
    for variant, ranks in peaks.items():
        print(f"  {variant:4s} " + "  ".join(f"rank {r}: {g:.2f}" for r, g in sorted(ranks.items())))
    worst = {variant: max(ranks.values()) for variant, ranks in peaks.items()}
    print(f"ratio new / old peak host memory of the fullest rank = {worst['new'] / worst['old']:.2f}")


if __name__ == "__main__":
    main()
