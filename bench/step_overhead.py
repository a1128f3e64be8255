"""Step overhead: one synchronous GRPO step (`GRPOJob.train_step`) against the bound of the same work
done bare, phase by phase, in one run.

    python bench/step_overhead.py [--config configs/demo_rrm.yaml] [--judge | --no-judge]
                                  [--warmup-steps 1] [--steps 3] [--bare-weight-receiver] [key=value ...]

step   `GRPOJob(cfg)` on the config (tracking off), `start()`, then `--warmup-steps` + `--steps`
       calls of `train_step()`, each timed from outside (wall) and by its own phase timers (the
       `time/*_s` metrics). Inside the actors the bench records what each engine ran (prompts,
       `SamplingParams`, every sample's length, seconds: the engine's `record_batches`) and
       how long each learner rank spent in its update (from `model.train()` to the stats all-reduce).
bound  the same work, bare, one process at a time after the job is shut down:
       generate  bare `vllm.LLM` with the rollout engine's arguments, threads and KV cache (read back
                 from the live engine) on the recorded prompts and sampling params, each sample made
                 to generate exactly its recorded length (`ignore_eos`): after a weight sync the
                 rollout samples from weights the bare engine does not have, so only the lengths can
                 be the same;
       reward    (judge on) bare `vllm.LLM` with the judge engine's arguments on the judge's recorded
                 waves (its prompts and sampling params, lengths as recorded), one `generate` per wave;
       update    one process, HF model in the same dtype, `learner.num_ranks x learner.threads` torch
                 threads: the step's sequences (the recorded token ids, built into the batch, shards
                 and micro-batches by `rrm_ray.batch` as the driver builds them), the learner's
                 chunked log-prob forward and loss, backward, clipping and the AdamW step.
       Each bare process warms up on the warm-up steps' work first, and runs at the nice value of the
       actors it stands for (Ray starts its workers at nice 15; priorities must not decide the ratio).
       The bare engines are plain vLLM: without the actors' weight receiver (`worker_extension_cls`
       actors.vllm_ext.WeightReceiver, `weight_transfer_config`). On CPU that extension keeps the dense
       weights beside vLLM's packed kernels and re-packs them after each sync (part of the sync's
       seconds); `--bare-weight-receiver` gives the bare engines the extension too, which leaves in
       the gap only what Ray and the actors add.

What the bound leaves out, so the ratio is an upper bound on the overhead, not all of it waste:
weight sync (learner -> engine, a real cost of every synchronous step, printed separately and counted
in the step); Ray (remote calls, argument and result transfer, the object store); the learner's
2-rank FSDP2 group on gloo (parameter all-gathers, gradient reduce-scatters, the stats all-reduce,
two 1-thread processes on 2 cores vs one 2-thread process); the rule reward (the actor runs while the
judge ranks); the judge's tournament logic between waves (JudgeService) and its deadline-bounded
stepping; the driver's own work (batch building, advantages, metrics). Sampled log-prob values and
advantages of the bare update are placeholders (they change no cost). Per phase the table also
gives the engine's or rank's own seconds inside the actor, which splits a gap into Ray/driver
overhead (step - in actor) and engine differences (in actor - bare).

The last line is the ratio step / bound, wall clock per step, medians over the timed steps
(goal: <= 1.15, synchronous). CPU only (`cluster.device=cpu`, float32, one rollout and one judge
engine). Engine output goes to log files in the run's directory under `--log-dir`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import rollout_throughput as rt  # the sibling bench script: the recorder and the bare vLLM replay

REPO = Path(__file__).resolve().parents[1]
PHASES = ("generate", "reward", "logprobs", "update")  # the phases the bound covers, in step order


# -- run inside the learner ranks through `__ray_call__` --------------------------------------------------
def _niceness(worker: Any) -> int:
    return os.nice(0)


def take_update_spans(worker: Any) -> list[float]:
    """Seconds of each `train_step` on this rank since the last take (`LearnerWorker.update_seconds`)."""
    seconds, worker.update_seconds = list(worker.update_seconds), []
    return seconds


# -- the bare learner process ----------------------------------------------------------------------------
def bare_learner(work_path: Path, out_path: Path) -> None:
    """One process, no Ray, no FSDP: the learner's update on the recorded steps' batches."""
    import torch

    work = torch.load(work_path, weights_only=False)
    rt.set_niceness(work["nice"])  # the learner ranks' priority
    torch.set_num_threads(work["threads"])
    from actors.model_io import DTYPES, load_hf_model
    from rrm_ray import algo

    lc, ac, temperature = work["learner"], work["algorithm"], work["temperature"]
    model = load_hf_model(
        work["model_path"], DTYPES[work["dtype"]], torch.device("cpu"), lc["gradient_checkpointing"]
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=lc["lr"],
        betas=(lc["adam_beta1"], lc["adam_beta2"]),
        weight_decay=lc["weight_decay"],
    )
    mbs, chunk = lc["micro_batch_size"], lc["logprob_chunk"]

    def micro_batches(batch: Any):
        for start in range(0, len(batch), mbs):
            yield batch.select(slice(start, start + mbs)).trimmed()

    def logprobs(mb: Any, entropy: bool) -> Any:
        return model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            logprob_temperature=temperature,
            logprob_chunk=chunk,
            logprob_entropy=entropy,
        )

    def step(shards: list[Any], tokens: list[int]) -> tuple[float, float]:
        start = time.perf_counter()
        with torch.no_grad():  # old / reference log-probs, when the algorithm needs them
            for _ in range(work["logprob_passes"]):
                for shard in shards:
                    for mb in micro_batches(shard):
                        logprobs(mb, entropy=False)
        passes = time.perf_counter() - start
        start = time.perf_counter()
        model.train()
        for m, global_tokens in enumerate(tokens):
            optimizer.zero_grad(set_to_none=True)
            for shard in shards:  # the ranks' micro-batches, one after the other
                size = len(shard) // len(tokens)
                for mb in micro_batches(shard.select(slice(m * size, (m + 1) * size))):
                    lp, entropy = logprobs(mb, entropy=True)
                    out = algo.policy_loss(
                        lp,
                        lp.detach(),
                        mb.advantages,
                        mb.loss_mask,
                        clip_low=ac["clip_low"],
                        clip_high=ac["clip_high"],
                        rollout_logprobs=mb.rollout_logprobs,
                        tis_cap=ac["tis_cap"],
                    )
                    (out.loss_sum / max(global_tokens, 1)).backward()
                    _ = [float(v) for v in out.stats.values()], float(algo.masked_sum(entropy, mb.loss_mask))
            limit = lc["grad_clip"] if lc["grad_clip"] > 0 else float("inf")
            torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return passes, time.perf_counter() - start

    for w in work["warmup"]:
        step(w["shards"], w["mini_batch_tokens"])
    timed = []
    for w in work["timed"]:
        passes, update = step(w["shards"], w["mini_batch_tokens"])
        tokens = sum(s.num_tokens for s in w["shards"])
        timed.append({"logprobs": passes, "update": update, "trained_tokens": tokens})
    out_path.write_text(json.dumps({"timed": timed, "torch_threads": torch.get_num_threads()}))


def learner_work(cfg: Any, records: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """The step's training batch from the rollout's recorded token ids, sharded as the driver shards it."""
    from rrm_ray.batch import build_batch, interleave_for_balance, mini_batch_tokens, permute, shard

    prompts, responses = [], []
    for record in records:  # prompt-major, as the driver gathers completions
        for prompt_ids, samples in zip(record["prompt_ids"], record["response_ids"], strict=True):
            for response_ids in samples:
                prompts.append(prompt_ids)
                responses.append(response_ids)
    advantages = [1.0 if i % 2 else -1.0 for i in range(len(responses))]  # placeholders: cost only
    batch = build_batch(prompts, responses, [[0.0] * len(r) for r in responses], advantages, pad_id)
    ranks = cfg.learner.num_ranks
    shards = shard(permute(batch, interleave_for_balance(len(batch), ranks)), ranks)
    return {"shards": shards, "mini_batch_tokens": mini_batch_tokens(shards, cfg.algorithm.mini_batches)}


def learner_spec(
    cfg: Any, model_path: str, warmup: list[dict], timed: list[dict], nice: int = 0
) -> dict[str, Any]:
    """What the bare learner process needs: the model, its threads (all ranks' together), the learner
    and algorithm settings, and the steps' work (`learner_work`)."""
    from rrm_ray.config import resolved_dtype

    a = cfg.algorithm
    return {
        "model_path": model_path,
        "dtype": resolved_dtype(cfg),
        "threads": cfg.learner.num_ranks * cfg.learner.threads,
        "learner": dataclasses.asdict(cfg.learner),
        "algorithm": dataclasses.asdict(a),
        "temperature": cfg.rollout.temperature,
        "logprob_passes": int(a.mini_batches > 1) + int(a.kl_coef > 0),  # old and reference log-probs
        "nice": nice,
        "warmup": warmup,
        "timed": timed,
    }


def run_child(args: list[str], env: dict[str, str], log_file: Path, what: str) -> None:
    with log_file.open("a") as log:
        log.write(f"--- {what} ---\n")
        log.flush()
        done = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode:
        raise RuntimeError(f"{what} failed with exit code {done.returncode}: see {log_file}")


# -- the step side ---------------------------------------------------------------------------------------
def check_supported(cfg: Any) -> None:
    """The bound is built for what the demo runs; say what else would make it wrong."""
    from rrm_ray.config import resolved_dtype

    problems = []
    if cfg.cluster.device != "cpu":
        problems.append(f"cluster.device={cfg.cluster.device} (the bound's thread accounting is for cpu)")
    if resolved_dtype(cfg) != "float32":
        problems.append(f"model.dtype resolves to {resolved_dtype(cfg)} (the bare learner is fp32 only)")
    if cfg.rollout.num_engines != 1:
        problems.append(f"rollout.num_engines={cfg.rollout.num_engines} (the bare replay is one engine)")
    if cfg.judge.enabled and cfg.judge.num_engines != 1:
        problems.append(f"judge.num_engines={cfg.judge.num_engines} (the bare replay is one engine)")
    if cfg.data.format != "prompts":
        problems.append(f"data.format={cfg.data.format} (the learner batch is rebuilt for prompt data)")
    if getattr(cfg.trainer, "max_staleness", 0):
        problems.append(
            "trainer.max_staleness > 0 (asynchronous steps overlap; the bound is for a synchronous one)"
        )
    if cfg.algorithm.filter_flat_groups:
        problems.append("algorithm.filter_flat_groups=true (which groups were trained is not recorded)")
    if problems:
        raise SystemExit("bench/step_overhead.py cannot bound this config: " + "; ".join(problems))


def run_steps(cfg: Any, count: int) -> dict[str, Any]:
    """Start the job, record `count` train steps, close the job and Ray."""
    import ray

    from rrm_ray.jobs.grpo import GRPOJob

    ray.cloudpickle.register_pickle_by_value(rt)  # its functions run inside the actors
    job = GRPOJob(cfg)
    try:
        job.start()
        roles = {g.spec.name: g for g in job.roles.groups}
        engines = {role: roles[role] for role in ("rollout", "judge") if role in roles}
        learner = roles["learner"]
        facts = {
            role: ray.get(g.actors[0].__ray_call__.remote(rt.engine_facts)) for role, g in engines.items()
        }
        for g in engines.values():
            ray.get(g.actors[0].record_batches.remote())
        ray.get([a.__ray_call__.remote(take_update_spans) for a in learner.actors])  # from now on
        learner_nice = max(ray.get([a.__ray_call__.remote(_niceness) for a in learner.actors]))
        steps = []
        for k in range(count):
            start = time.perf_counter()
            metrics = job.train_step()
            wall = time.perf_counter() - start
            calls = {role: ray.get(g.actors[0].take_batches.remote()) for role, g in engines.items()}
            spans = ray.get([a.__ray_call__.remote(take_update_spans) for a in learner.actors])
            steps.append({"wall": wall, "metrics": metrics, "calls": calls, "update_spans": spans})
            print(f"step {k + 1}/{count}: {wall:.2f} s (phases: {_phase_line(metrics)})", flush=True)
    finally:
        job.close()
        if ray.is_initialized():
            ray.shutdown()
    return {"facts": facts, "steps": steps, "learner_nice": learner_nice}


def _phase_line(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{k.removeprefix('time/').removesuffix('_s')} {v:.2f}"
        for k, v in metrics.items()
        if k.startswith("time/") and k != "time/step_s"
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo_rrm.yaml"))
    ap.add_argument("--judge", action=argparse.BooleanOptionalAction, default=True, help="judge.enabled")
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--log-dir", default=str(REPO / "runs" / "bench"))
    ap.add_argument(
        "--bare-weight-receiver",
        action="store_true",
        help="give the bare engines the actors' worker extension and weight-transfer config too",
    )
    ap.add_argument("--phase", choices=["learner"], help=argparse.SUPPRESS)  # the bare learner process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    if args.phase == "learner":
        bare_learner(Path(args.work) / "learner_work.pt", Path(args.work) / "learner_result.json")
        return 0
    if args.warmup_steps < 1 or args.steps < 1:
        ap.error("--warmup-steps and --steps must be >= 1 (every bare process warms up on the warm-up steps)")

    from rrm_ray.logs import quiet_driver_loggers
    from rrm_ray.models import resolve_model_path
    from rrm_ray.validation import load_config

    quiet_driver_loggers()
    work_dir = Path(args.log_dir, f"step_overhead-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}").resolve()
    work_dir.mkdir(parents=True)
    total = args.warmup_steps + args.steps
    cfg = load_config(
        args.config,
        [
            *args.overrides,
            f"judge.enabled={str(args.judge).lower()}",
            "tracking.enabled=false",
            f"checkpoint.dir={work_dir / 'job'}",
            "checkpoint.save_final=false",
            f"trainer.total_steps={total}",
        ],
    )
    check_supported(cfg)
    model_path = resolve_model_path(cfg.model.path)
    recorded = run_steps(cfg, total)
    warm, timed = recorded["steps"][: args.warmup_steps], recorded["steps"][args.warmup_steps :]

    # The bound, one bare process after the other (the job's actors are gone by now).
    log_file = work_dir / "bare.log"
    print(f"bare processes' logs: {log_file}")
    bare: dict[str, list[float]] = {}
    tokens: dict[str, tuple[list[int], list[int]]] = {}
    for role in recorded["facts"]:
        result = rt.run_bare(
            recorded["facts"][role],
            [r for s in warm for r in s["calls"][role]],
            [s["calls"][role] for s in timed],
            exact_lengths=True,
            work_dir=work_dir,
            log_file=log_file,
            name=role,
            weight_receiver=args.bare_weight_receiver,
        )
        print(f"{role} {rt.describe_differences(recorded['facts'][role], result['facts'])}")
        print(f"  actor: {rt.describe_threads(recorded['facts'][role])}")
        phase = "generate" if role == "rollout" else "reward"
        bare[phase] = [t["seconds"] for t in result["timed"]]
        step_tokens = [
            sum(n for r in s["calls"][role] for lens in r["lengths"] if lens for n in lens) for s in timed
        ]
        tokens[role] = (step_tokens, [t["tokens"] for t in result["timed"]])

    import torch
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model_path).pad_token_id or 0
    spec = learner_spec(
        cfg,
        model_path,
        [learner_work(cfg, s["calls"]["rollout"], pad_id) for s in warm],
        [learner_work(cfg, s["calls"]["rollout"], pad_id) for s in timed],
        nice=recorded["learner_nice"],
    )
    torch.save(spec, work_dir / "learner_work.pt")
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    run_child([__file__, "--phase", "learner", "--work", str(work_dir)], env, log_file, "bare learner")
    learner = json.loads((work_dir / "learner_result.json").read_text())
    bare["logprobs"] = [t["logprobs"] for t in learner["timed"]]
    bare["update"] = [t["update"] for t in learner["timed"]]
    step_trained = [
        round(s["metrics"]["perf/trained_tokens_per_s"] * s["metrics"]["time/update_s"]) for s in timed
    ]
    tokens["learner"] = (step_trained, [t["trained_tokens"] for t in learner["timed"]])

    # In the actors: the engines' own seconds, and the slowest rank's update.
    in_actor = {
        "generate": [sum(r["seconds"] for r in s["calls"]["rollout"]) for s in timed],
        "update": [max(max(spans) for spans in s["update_spans"]) for s in timed],
    }
    if "judge" in recorded["facts"]:
        in_actor["reward"] = [sum(r["seconds"] for r in s["calls"]["judge"]) for s in timed]

    def step_phase(name: str) -> list[float]:
        return [s["metrics"].get(f"time/{name}_s", 0.0) for s in timed]

    print()
    print(
        f"{cfg.model.path}: {cfg.data.prompts_per_step} prompts x n={cfg.rollout.n_samples}, "
        f"max_new_tokens {cfg.rollout.max_new_tokens}, learner {cfg.learner.num_ranks} ranks x "
        f"{cfg.learner.threads} threads (bare: 1 process x {learner['torch_threads']} threads, nice "
        f"{recorded['learner_nice']} as the ranks), "
        f"judge {'on (' + cfg.judge.mode + ', ' + cfg.judge.method + ')' if cfg.judge.enabled else 'off'}; "
        f"medians of {len(timed)} steps after {len(warm)} warm-up"
    )
    for what, (step_side, bare_side) in tokens.items():
        same = "identical" if step_side == bare_side else "DIFFER"
        print(f"{what} tokens per step: step {step_side}, bare {bare_side} ({same})")
    print(f"{'phase':12s} {'step s':>8s} {'in actor s':>11s} {'bare s':>8s} {'step/bare':>10s}")
    bound = 0.0
    for name in PHASES:
        s = step_phase(name)
        b = _median(bare.get(name, []))
        if _median(s) < 0.005 and b < 0.005:  # a phase this config does not run (its timer is empty)
            continue
        bound += b
        inside = f"{_median(in_actor[name]):11.2f}" if name in in_actor else f"{'-':>11s}"
        ratio = f"{_median(s) / b:10.2f}" if b >= 0.005 else f"{'-':>10s}"
        print(f"{name:12s} {_median(s):8.2f} {inside} {b:8.2f} {ratio}")
    sync = step_phase("weight_sync")
    other = [s["wall"] - s["metrics"]["time/step_s"] for s in timed]
    print(f"{'weight_sync':12s} {_median(sync):8.2f} {'-':>11s} {'-':>8s} {'(not in the bound)':>10s}")
    print(
        f"{'other':12s} {_median(other):8.2f} {'-':>11s} {'-':>8s} {'(driver outside the phase timers)':>10s}"
    )
    wall = [s["wall"] for s in timed]
    print(f"{'step (wall)':12s} {_median(wall):8.2f} {'':11s} {bound:8.2f}")
    mib = _median([s["metrics"]["sync/mb"] for s in timed])
    print(
        f"weight sync: {_median(sync):.2f} s per step ({mib:.1f} MiB), counted in the step, not in the bound"
    )
    no_sync = [w - y for w, y in zip(wall, sync, strict=True)]
    print(f"step without weight sync / bound = {_median(no_sync) / bound:.3f}")
    print(f"ratio step/bound = {_median(wall) / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
