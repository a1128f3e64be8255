"""Weight sync: seconds per full SmolLM2 learner -> engine sync for each method available here, next to
the bound `bytes / memcpy bandwidth` measured on this machine in the same run.

    python bench/weight_sync.py [--repeats 3] [--learner-ranks 2] [--bucket-mb 64]

One vLLM engine per method (on cpu: `collective` = our gloo engine, `object_store` = Ray objects; nccl
and ipc need GPUs) and one FSDP2 learner group, as in `configs/quickstart.yaml`. Each method gets its
own engine (vLLM fixes the weight-transfer backend when the engine starts); the learner sets the
transfer up for one engine at a time (`init_weight_transfer`), syncs once to warm up, then times
`--repeats` full syncs (driver wall clock around `send_weights` on every rank: gather on the learner,
transfer, load in the engine, completeness check). Both engines load SmolLM2 in fp32, so the learner's
weights are the engine's and every sync moves the same bytes.

The bound is one copy of those bytes at this machine's memcpy bandwidth (`torch` copy of a 256 MiB
tensor, best of 5, before and after the syncs, in this process): no transfer that lands the weights
in the engine's own tensors can beat it. Two more lines split a sync up: the learner's streamed
gather alone (every rank walks `stream_weights` in lockstep, nothing sent), and the transport floor:
gloo itself, one broadcast of the same bytes in the same bucket sizes between the two learner
processes (loopback TCP, what the collective method's group runs on). The last line is the ratio
best method seconds / bound seconds (1.0 would be the bound).

LoRA line (`lora_line`): a rank-16 adapter on every linear of SmolLM2 (`learner.lora`), synced
adapter-only (`learner.lora.sync=adapter`: the adapter's tensors in the object store, loaded by a
LoRA-serving engine through vLLM's LoRA path as a new adapter version) against the best full sync
above: bytes and seconds per sync, and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch

from actors.engine import engine_env
from actors.learner import LearnerWorker
from actors.rollout import RolloutWorker
from rrm_ray.clients.group import ActorGroup
from rrm_ray.config import AlgorithmConfig, LearnerConfig, LoRAConfig
from rrm_ray.models import ensure_smollm2
from rrm_ray.placement import RoleSpec
from rrm_ray.weight_sync import LORA_ADAPTER, vllm_backend

METHODS = ("collective", "object_store")  # what runs without a GPU


def memcpy_bandwidth(mib: int = 256, tries: int = 5) -> float:
    """Bytes per second of one tensor copy (each byte read once and written once), best of `tries`."""
    src = torch.ones(mib << 18, dtype=torch.float32)  # mib MiB
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return src.numel() * src.element_size() / best


def _gather_seconds(worker: LearnerWorker) -> float:
    """Runs in every learner rank at once: the streamed gather of a sync (each weight in turn, full, in
    the engine's dtype), with nothing sent."""
    start = time.perf_counter()
    for _ in worker.policy.stream_weights(worker.dtype):
        pass
    return time.perf_counter() - start


def _gloo_floor_seconds(worker: LearnerWorker, nbytes: int, bucket_bytes: int) -> float:
    """Runs in every learner rank at once: `nbytes` broadcast from rank 0 in `bucket_bytes` pieces over
    the learners' own gloo group, the transport a collective sync uses, with no model work around it."""
    import torch.distributed as dist

    bucket = torch.zeros(bucket_bytes, dtype=torch.uint8)
    dist.barrier()
    start = time.perf_counter()
    for offset in range(0, nbytes, bucket_bytes):
        dist.broadcast(bucket[: min(bucket_bytes, nbytes - offset)], src=0)
    return time.perf_counter() - start


def _start_learner(model: str, cfg: LearnerConfig, name: str, timeout: float) -> ActorGroup:
    """A learner group on `model`, its process group joined as the driver joins it."""
    learner = ActorGroup(
        LearnerWorker,
        RoleSpec(name, cfg.num_ranks, 1.0),
        init_args=(model, "float32", "cpu", cfg, AlgorithmConfig(), 1.0, 1),
        env={"OMP_NUM_THREADS": "1"},
        call_timeout_s=timeout,
    )
    master = learner.placement()[0]
    learner.call_all("init_process_group", master["ip"], learner.call_rank0("free_port"))
    return learner


def _timed_syncs(learner: ActorGroup, repeats: int) -> tuple[dict[str, int], list[float]]:
    """One warm-up sync (its report: tensors, chunks, bytes), then `repeats` timed ones (driver wall
    clock around `send_weights` on every rank)."""
    report = learner.call_all("send_weights")[0]
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        learner.call_all("send_weights")
        runs.append(time.perf_counter() - start)
    return report, runs


def lora_line(args: argparse.Namespace, model: str, timeout: float, full_s: float, full_bytes: int) -> None:
    """Adapter-only syncs of a rank-16 LoRA policy (every linear) to a LoRA-serving engine, timed as
    the full syncs are (warm-up, then the median of `--repeats`), printed against the full sync."""
    engine = ActorGroup(
        RolloutWorker,
        RoleSpec("rollout-lora", 1, 1.0),
        init_args=(model, "float32", 512, 0, "cpu"),
        init_kwargs={"lora_rank": 16},
        env=engine_env("cpu", 1, 1),
        call_timeout_s=timeout,
    )
    cfg = LearnerConfig(num_ranks=args.learner_ranks, micro_batch_size=1, lora=LoRAConfig(rank=16, alpha=32))
    learner = _start_learner(model, cfg, "learner-lora", timeout)
    engine.call_all("ping")
    learner.call_all("init_weight_transfer", LORA_ADAPTER, engine.actors, 1, args.bucket_mb, timeout)
    report, runs = _timed_syncs(learner, args.repeats)
    learner.call_all("close")
    for group in (learner, engine):
        group.shutdown()
    lora_s, lora_bytes = statistics.median(runs), report["bytes"]
    print(
        f"LoRA rank 16, every linear, adapter-only: {lora_s:.3f} s per sync (median of {args.repeats}: "
        f"{', '.join(f'{s:.3f}' for s in runs)}), {report['params']} tensors, {lora_bytes / 2**20:.2f} MiB; "
        f"full sync {full_s:.3f} s, {full_bytes / 2**20:.1f} MiB: "
        f"{full_bytes / lora_bytes:.0f}x fewer bytes, {full_s / lora_s:.1f}x faster"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--learner-ranks", type=int, default=2)
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray")
    args = ap.parse_args()

    model = str(ensure_smollm2())
    bandwidth = memcpy_bandwidth()  # again at the end: the best of both (other work may run meanwhile)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    timeout = 1800.0
    engines = {
        m: ActorGroup(
            RolloutWorker,
            RoleSpec(f"rollout-{m}", 1, 1.0),
            init_args=(model, "float32", 512, 0, "cpu"),
            init_kwargs={"weight_transfer_backend": vllm_backend(m, "cpu")},
            env=engine_env("cpu", 1, 1),
            call_timeout_s=timeout,
        )
        for m in METHODS
    }
    learner = _start_learner(
        model, LearnerConfig(num_ranks=args.learner_ranks, micro_batch_size=1), "learner", timeout
    )
    for group in engines.values():
        group.call_all("ping")

    gathers = [
        max(learner.get([a.__ray_call__.remote(_gather_seconds) for a in learner.actors])) for _ in "ab"
    ]
    seconds: dict[str, list[float]] = {}
    nbytes = 0
    for m, group in engines.items():
        backend = vllm_backend(m, "cpu")
        learner.call_all("init_weight_transfer", backend, group.actors, 1, args.bucket_mb, timeout)
        report, seconds[m] = _timed_syncs(learner, args.repeats)
        nbytes = report["bytes"]
        print(
            f"{m:13s} ({backend}): {statistics.median(seconds[m]):.3f} s per sync "
            f"(median of {args.repeats}: {', '.join(f'{s:.3f}' for s in seconds[m])}), "
            f"{report['params']} tensors, {report['buckets']} chunks, {nbytes / 2**20:.1f} MiB"
        )
    floors = [
        max(
            learner.get(
                [
                    a.__ray_call__.remote(_gloo_floor_seconds, nbytes, args.bucket_mb << 20)
                    for a in learner.actors
                ]
            )
        )
        for _ in "ab"
    ]
    learner.call_all("close")
    for group in (learner, *engines.values()):
        group.shutdown()
    best = min(seconds, key=lambda m: statistics.median(seconds[m]))
    lora_line(args, model, timeout, statistics.median(seconds[best]), nbytes)
    ray.shutdown()

    bandwidth = max(bandwidth, memcpy_bandwidth())
    bound = nbytes / bandwidth
    floor = min(floors)
    print(f"of each sync, the learner's streamed gather alone: {min(gathers):.3f} s (best of 2)")
    print(
        f"transport floor: gloo broadcast of {nbytes / 2**20:.1f} MiB in {args.bucket_mb} MiB pieces between "
        f"two processes: {floor:.3f} s (best of 2) = {floor / (nbytes / bandwidth):.1f} x bound"
    )
    print(f"memcpy bandwidth {bandwidth / 1e9:.2f} GB/s ({torch.get_num_threads()} torch threads)")
    print(f"bound {nbytes / 2**20:.1f} MiB / memcpy bandwidth = {bound:.3f} s")
    for m, runs in seconds.items():
        median = statistics.median(runs)
        print(f"{m:13s} {median:.3f} s = {median / bound:.1f} x bound = {median / floor:.1f} x gloo floor")
    ratio = statistics.median(seconds[best]) / bound
    print(f"ratio best ({best}) seconds / bound seconds = {ratio:.1f}")


if __name__ == "__main__":
    main()
