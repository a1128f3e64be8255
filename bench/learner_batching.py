"""Learner batching: trained tokens per second of one GRPO update with fixed micro-batches vs a token
budget (vs packed rows), on a batch whose response lengths are long-tailed, in one run.

    python bench/learner_batching.py [--sequences 32] [--median 48] [--sigma 1.2] [--max-response 448]
                                     [--micro-batch-size 4] [--ranks 2] [--repeats 2] [--no-packed]

The batch: `--sequences` sequences of a 32-token prompt and a response whose length is log-normal
(median `--median` tokens, sigma `--sigma` of the log: most responses short, a few long, as sampled
answers and thinking judgments are), clipped to [8, `--max-response`]; random token ids (the cost
does not depend on them), random advantages. It is sharded over the ranks and normalised exactly as
the driver does it (`interleave_for_balance`, `shard`, `mini_batch_tokens`), one mini-batch.

    fixed     learner.micro_batch_size = --micro-batch-size: every micro-batch padded to its longest
    budgeted  learner.max_tokens_per_microbatch = --micro-batch-size x the batch's longest sequence,
              so no forward is larger than fixed's largest; sequences grouped by length, the ranks
              agree on their micro-batch count (`rrm_ray.batch.budget_micro_batches`)

Each runs in a real learner group: `--ranks` FSDP2 ranks (`actors.learner.LearnerWorker`, gloo, one
torch thread each, as in configs/quickstart.yaml) on SmolLM2-135M in fp32; one warm-up update, then
`--repeats` timed updates of the same batch. Seconds are the ranks' own (`update_seconds`: from the
first forward to the stats all-reduce, the slowest rank), trained tokens are the batch's response
tokens (the `perf/trained_tokens_per_s` a training step logs).

    packed    (information, not a learner mode) after the groups are gone, in this process with one
              thread: rank 0's shard as budgeted micro-batches vs the same sequences packed into rows
              of at most the budget's tokens (per-sequence position_ids, no attention mask,
              use_cache=False: transformers builds a block-diagonal mask), forward + backward only.

The last line is the ratio budgeted / fixed trained tokens per second (goal: >= 1.3).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

PROMPT_TOKENS = 32


def make_batch(args: argparse.Namespace) -> Any:
    import torch

    from rrm_ray.batch import build_batch

    g = torch.Generator().manual_seed(0)
    n = args.sequences
    logs = torch.randn(n, generator=g) * args.sigma + math.log(args.median)
    lengths = torch.exp(logs).round().long().clamp(8, args.max_response).tolist()
    prompts = [torch.randint(10, 40000, (PROMPT_TOKENS,), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(10, 40000, (k,), generator=g).tolist() for k in lengths]
    rollout = [(-2.0 - torch.rand(k, generator=g)).tolist() for k in lengths]
    return build_batch(prompts, responses, rollout, torch.randn(n, generator=g).tolist(), pad_id=0)


def run_learner(model: str, batch: Any, args: argparse.Namespace, budget: int) -> dict[str, Any]:
    """One learner group: a warm-up update, then `--repeats` timed ones; the ranks' seconds."""
    from actors.learner import LearnerWorker
    from rrm_ray.batch import interleave_for_balance, mini_batch_tokens, permute, shard
    from rrm_ray.clients.group import ActorGroup
    from rrm_ray.config import AlgorithmConfig, LearnerConfig
    from rrm_ray.placement import RoleSpec

    cfg = LearnerConfig(
        num_ranks=args.ranks,
        micro_batch_size=args.micro_batch_size,
        max_tokens_per_microbatch=budget,
        lr=1e-6,
    )
    group = ActorGroup(
        LearnerWorker,
        RoleSpec("learner", args.ranks, 1.0),
        init_args=(model, "float32", "cpu", cfg, AlgorithmConfig(), 1.0, 1),
        env={"OMP_NUM_THREADS": "1"},
        call_timeout_s=3600,
    )
    try:
        master = group.placement()[0]
        group.call_all("init_process_group", master["ip"], group.call_rank0("free_port"))
        shards = shard(permute(batch, interleave_for_balance(len(batch), args.ranks)), args.ranks)
        tokens = mini_batch_tokens(shards, 1)
        for _ in range(1 + args.repeats):
            group.call_sharded("train_step", shards, mini_batch_tokens=tokens, lr=1e-6)
        spans = group.get([a.__ray_call__.remote(lambda w: list(w.update_seconds)) for a in group.actors])
        seconds = [max(per_rank) for per_rank in zip(*spans, strict=True)][1:]  # the slowest rank, timed
        return {"seconds": seconds, "shards": shards}
    finally:
        group.call_all("close")
        group.shutdown()


def packed_vs_budgeted(model_path: str, shard: Any, budget: int, repeats: int) -> tuple[float, float]:
    """Seconds of forward + backward over `shard`: budgeted micro-batches, then packed rows (best of
    `repeats` after a warm-up each)."""
    import torch
    from torch.nn.functional import pad

    from actors.model_io import load_hf_model
    from rrm_ray.batch import budget_micro_batches

    torch.set_num_threads(1)
    model = load_hf_model(model_path, torch.float32, torch.device("cpu"), False)
    model.train()
    lengths = shard.lengths

    def budgeted() -> None:
        for rows in budget_micro_batches(lengths, budget):
            mb = shard.select(rows).trimmed()
            lp, _ = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, logprob_temperature=1.0)
            (lp * mb.loss_mask).sum().backward()

    bins: list[list[int]] = []  # first-fit decreasing on real tokens
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((b for b in bins if sum(lengths[j] for j in b) + lengths[i] <= budget), None)
        if fit is None:
            bins.append([i])
        else:
            fit.append(i)
    loss_mask = pad(shard.loss_mask, (0, 1))  # [B, L]: a sequence's own positions, the last one 0

    def packed() -> None:
        for rows in bins:
            ids = torch.cat([shard.input_ids[i, : lengths[i]] for i in rows])[None]
            positions = torch.cat([torch.arange(lengths[i]) for i in rows])[None]
            mask = torch.cat([loss_mask[i, : lengths[i]] for i in rows])[None, :-1]
            hidden = model.get_decoder()(
                input_ids=ids, position_ids=positions, attention_mask=None, use_cache=False
            ).last_hidden_state
            lp, _ = model.get_output_embeddings()(hidden[:, :-1], targets=ids[:, 1:], temperature=1.0)
            (lp * mask).sum().backward()

    out = []
    for fn in (budgeted, packed):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        out.append(min(times))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--median", type=float, default=48.0, help="median response tokens")
    ap.add_argument("--sigma", type=float, default=1.2, help="sigma of the log of the response length")
    ap.add_argument("--max-response", type=int, default=448)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed updates per variant")
    ap.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray")
    args = ap.parse_args()

    import ray

    from rrm_ray.batch import budget_micro_batches, fixed_micro_batches, padded_tokens
    from rrm_ray.models import ensure_smollm2

    model = str(ensure_smollm2())
    batch = make_batch(args)
    responses = sorted(int(n) for n in batch.loss_mask.sum(dim=1).tolist())
    budget = args.micro_batch_size * max(batch.lengths)
    print(
        f"batch: {len(batch)} sequences, {PROMPT_TOKENS}-token prompts, response tokens log-normal (median "
        f"{args.median:g}, sigma {args.sigma:g}): min {responses[0]}, median "
        f"{responses[len(responses) // 2]}, max {responses[-1]}; {batch.num_tokens} response tokens trained"
    )
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        runs = {
            "fixed": run_learner(model, batch, args, 0),
            "budgeted": run_learner(model, batch, args, budget),
        }
    finally:
        ray.shutdown()
    rates = {}
    for name, run in runs.items():
        plans = [
            budget_micro_batches(s.lengths, budget)
            if name == "budgeted"
            else fixed_micro_batches(len(s), args.micro_batch_size)
            for s in run["shards"]
        ]
        padded = sum(padded_tokens(s.lengths, p) for s, p in zip(run["shards"], plans, strict=True))
        seconds = statistics.median(run["seconds"])
        rates[name] = batch.num_tokens / seconds
        setting = (
            f"learner.max_tokens_per_microbatch={budget}"
            if name == "budgeted"
            else f"learner.micro_batch_size={args.micro_batch_size}"
        )
        print(
            f"{name:9s} {setting}: {seconds:.2f} s per update (median of "
            f"{', '.join(f'{s:.2f}' for s in run['seconds'])}), "
            f"{rates[name]:.1f} trained tokens/s; forward passes {max(len(p) for p in plans)} per rank, "
            f"{padded} tokens with padding ({sum(batch.lengths)} without)"
        )
    if args.packed:
        shard0 = runs["budgeted"]["shards"][0]
        budgeted_s, packed_s = packed_vs_budgeted(model, shard0, budget, args.repeats)
        print(
            f"packed    rank 0's shard, forward+backward, one process: budgeted {budgeted_s:.2f} s, packed "
            f"rows {packed_s:.2f} s: packed / budgeted speed = {budgeted_s / packed_s:.2f} (CPU: a dense "
            "block mask per packed row)"
        )
    print(f"ratio budgeted / fixed trained tokens per second = {rates['budgeted'] / rates['fixed']:.2f}")


if __name__ == "__main__":
    main()
