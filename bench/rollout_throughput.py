"""Rollout throughput: generated tokens/s through the rollout actor vs bare vLLM, same engine, one run.

    python bench/rollout_throughput.py [--config configs/demo_rrm.yaml] [--prompts 8] [--repeats 5]
                                       [--bare-weight-receiver] [key=value ...]

actor  one `actors.rollout.RolloutWorker` in a Ray actor, made as `GRPOJob` makes it (the config's
       engine arguments and weight-transfer engine, `engine_env`'s OMP threads and KV cache), driven
       by the driver's call `generate.remote(prompts, n, temperature, top_p, max_tokens, seed)` and
       timed from the driver: Ray call, result transfer and `Completion` building included.
bare   `vllm.LLM` in a fresh process: the engine arguments read back from the actor's live engine
       (model, dtype, max_model_len, seed, eager mode, log-prob mode, max_num_batched_tokens, prefix
       caching), the actor's thread and KV-cache environment (OMP_NUM_THREADS, VLLM_CPU_*; see
       `ENGINE_ENV_KEYS`), torch thread count and scheduling priority (Ray starts its workers at
       nice 15, so this process takes the same), and the very prompts and `SamplingParams` (n,
       temperature, top_p, max_tokens, per-request seeds, logprobs) the actor handed its engine,
       recorded inside the actor during its warm-up call. Plain vLLM: it leaves out what makes the
       actor's engine take weights, the worker extension (actors.vllm_ext.WeightReceiver) and the
       weight-transfer config. On CPU that extension keeps the dense weights beside vLLM's packed
       oneDNN/SGL kernels and re-packs them after a sync (it used to run dense `F.linear` instead,
       which halved CPU generation). `--bare-weight-receiver` gives the bare engine both, which
       leaves in the ratio only what Ray and the actor add.

The prompts are the config's (the demo's arithmetic problems; `data.generate_dir` writes them when
missing), rendered as the driver renders them. The sides never run at the same time: between its
calls the bare process waits on a pipe and the actor waits for Ray. Each warms up once, then
`--repeats` rounds time one actor call and one bare call of the same batch, alternating, so load that
comes and goes on a shared machine meets both sides alike. Tokens are counted exactly
(`len(token_ids)` of every sample); the same weights and seeds give both sides the same tokens
(checked and printed). The actor's engine's own seconds inside the actor are printed too, which
splits a gap into Ray overhead and the engine process. Engine output goes to a log file under
`--log-dir`. The last line is the ratio actor / bare tokens/s (goal: >= 0.97).

`--serve SPEC --results-fd N` is the bare process itself (`BareEngine`; `bench/step_overhead.py` uses it too).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# What an engine process's generation speed depends on besides its arguments (actors.rollout.engine_env
# sets the first four; the others would change threading if someone set them).
ENGINE_ENV_KEYS = (
    "OMP_NUM_THREADS",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_NUM_OF_RESERVED_CPU",
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_CPU_OMP_THREADS_BIND",
    "MKL_NUM_THREADS",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "KMP_AFFINITY",
    "LD_PRELOAD",
)


# -- run inside an engine actor through `__ray_call__` (and in the bare process) ------------------------
def live_engine_facts(llm: Any) -> dict[str, Any]:
    """The constructor arguments that shape generation, read back from a live `vllm.LLM`, plus what it
    resolved from them (KV blocks, batch limits) and the process's threads and environment."""
    import torch

    vc = llm.llm_engine.vllm_config
    mc, sc, cc = vc.model_config, vc.scheduler_config, vc.cache_config
    engine = {
        "model": mc.model,
        "dtype": str(mc.dtype).removeprefix("torch."),
        "max_model_len": mc.max_model_len,
        "seed": mc.seed,
        "enforce_eager": mc.enforce_eager,
        "logprobs_mode": mc.logprobs_mode,
        "max_num_batched_tokens": sc.max_num_batched_tokens,
        "enable_prefix_caching": cc.enable_prefix_caching,  # the judge sets it (judge.prefix_caching)
    }
    if torch.cuda.is_available():
        engine["gpu_memory_utilization"] = cc.gpu_memory_utilization
        engine["tensor_parallel_size"] = vc.parallel_config.tensor_parallel_size
    resolved = {
        "max_num_seqs": sc.max_num_seqs,
        "block_size": cc.block_size,
        "kv_cache_blocks": cc.num_gpu_blocks,
        "kv_cache_dtype": cc.cache_dtype,
        "chunked_prefill": sc.enable_chunked_prefill,
        "worker_extension_cls": vc.parallel_config.worker_extension_cls,
        "weight_transfer_backend": None
        if vc.weight_transfer_config is None
        else vc.weight_transfer_config.backend,
    }
    # What an engine needs to take weights from the learner (the actors' VLLMEngine sets both); the
    # bare engine gets them only when asked (--bare-weight-receiver): see the module docstring.
    weights_in: dict[str, Any] = {}
    if vc.parallel_config.worker_extension_cls:
        weights_in["worker_extension_cls"] = vc.parallel_config.worker_extension_cls
    if vc.weight_transfer_config is not None:
        weights_in["weight_transfer_config"] = {"backend": vc.weight_transfer_config.backend}
    return {
        "engine": engine,
        "weights_in": weights_in,
        "resolved": resolved,
        "env": {k: os.environ[k] for k in ENGINE_ENV_KEYS if k in os.environ},
        "torch_threads": torch.get_num_threads(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "nice": os.nice(0),  # Ray starts its workers at nice 15 (RAY_worker_niceness)
    }


def engine_facts(worker: Any) -> dict[str, Any]:
    return live_engine_facts(worker.llm)


# -- the bare process ---------------------------------------------------------------------------------
def _exact_length_requests(prompts: list[Any], params: list[Any], lengths: list[list[int] | None]):
    """Every sample of a recorded request as its own n=1 request that generates exactly the recorded
    number of tokens (`ignore_eos`, max_tokens = length), seeded as vLLM seeds the sample (seed + k).
    The same work as the recorded batch when the bare engine's weights differ from the recording
    engine's (a rollout after weight syncs). vLLM fans n > 1 out into n engine requests anyway."""
    from vllm import SamplingParams

    out_prompts, out_params = [], []
    for prompt, p, lens in zip(prompts, params, lengths, strict=True):
        if lens is None:  # aborted at the deadline in the recording: replayed as it was asked
            out_prompts.append(prompt)
            out_params.append(p)
            continue
        for k, length in enumerate(lens):
            out_prompts.append(prompt)
            out_params.append(
                SamplingParams(
                    n=1,
                    temperature=p.temperature,
                    top_p=p.top_p,
                    max_tokens=length,
                    ignore_eos=True,
                    logprobs=p.logprobs,
                    seed=None if p.seed is None else p.seed + k,
                    allowed_token_ids=p.allowed_token_ids,
                )
            )
    return out_prompts, out_params


def set_niceness(nice: int) -> None:
    """Run this process at the recorded process's scheduling priority. Ray starts its workers at nice
    15: on a machine where anything else runs, a bare process at nice 0 would take the CPUs from them
    and the comparison would measure priorities, not the code."""
    try:
        os.nice(nice - os.nice(0))
    except PermissionError as exc:
        raise SystemExit(
            f"cannot run the bare process at nice {nice} (now {os.nice(0)}): lowering it needs privileges"
        ) from exc


def serve(spec_path: Path, results_fd: int) -> None:
    """The bare process: one `vllm.LLM` made like the recorded engine (spec, a pickle: engine args,
    torch threads, nice, `warmup` records, `exact_lengths`). It warms up, answers "ready", then runs
    each list of records it reads from stdin (pickled; None ends it) and answers its seconds (the sum
    of its `LLM.generate` calls) and tokens; its last answer is this engine's facts. Answers go out
    pickled on `results_fd`, so engine output on stdout/stderr can go to a log."""
    spec = pickle.loads(spec_path.read_bytes())
    set_niceness(spec["nice"])
    import torch

    torch.set_num_threads(spec["torch_threads"])  # as VLLMEngine does before vLLM takes the threads
    from vllm import LLM

    if "weight_transfer_config" in spec["engine"]:
        import actors.weight_transfer  # noqa: F401  (our gloo / object-store engines join vLLM's registry)
    llm = LLM(**spec["engine"])
    answers = os.fdopen(results_fd, "wb")

    def answer(obj: Any) -> None:
        pickle.dump(obj, answers)
        answers.flush()

    def run(records: list[dict[str, Any]]) -> dict[str, Any]:
        seconds, per_call = 0.0, []
        for record in records:
            prompts, params = pickle.loads(record["args"])
            if not isinstance(params, list):
                params = [params] * len(prompts)
            if spec["exact_lengths"]:
                prompts, params = _exact_length_requests(prompts, params, record["lengths"])
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            seconds += time.perf_counter() - start
            per_call.append(sum(len(s.token_ids) for o in outputs for s in o.outputs))
        return {"seconds": seconds, "tokens": sum(per_call), "tokens_per_call": per_call}

    run(spec["warmup"])
    answer("ready")
    while (records := pickle.load(sys.stdin.buffer)) is not None:
        answer(run(records))
    answer(live_engine_facts(llm))


class BareEngine:
    """`serve` in a fresh process with a recorded engine's arguments, threads, environment and nice
    value; `run(records)` replays records there and waits for the answer, `close()` returns its facts.
    Between runs it waits on a pipe, using no CPU, so runs can alternate with the actor's calls."""

    def __init__(
        self,
        facts: dict[str, Any],
        warmup: list[dict[str, Any]],
        exact_lengths: bool,
        work_dir: Path,
        log_file: Path,
        name: str,
        weight_receiver: bool = False,
    ) -> None:
        spec = {
            "engine": {**facts["engine"], **(facts["weights_in"] if weight_receiver else {})},
            "torch_threads": facts["torch_threads"],
            "nice": facts["nice"],
            "warmup": warmup,
            "exact_lengths": exact_lengths,
        }
        spec_path = work_dir / f"{name}_spec.pkl"
        spec_path.write_bytes(pickle.dumps(spec))
        env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV_KEYS}
        env.update(facts["env"])
        self.name, self.log_file = name, log_file
        read_end, write_end = os.pipe()
        with log_file.open("a") as log:
            log.write(f"--- bare vLLM ({name}) ---\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(spec_path), "--results-fd", str(write_end)],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
            )
        os.close(write_end)
        self.answers = os.fdopen(read_end, "rb")
        self._answer()  # "ready": loaded and warmed up

    def _answer(self) -> Any:
        try:
            return pickle.load(self.answers)
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(
                f"the bare vLLM process ({self.name}) ended with exit code {code}: see {self.log_file}"
            ) from None

    def run(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        pickle.dump(records, self.proc.stdin)
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> dict[str, Any]:
        """Ends the process; returns its engine's facts."""
        facts = self.run(None)  # type: ignore[arg-type]
        self.proc.wait()
        self.answers.close()
        return facts


def run_bare(
    facts: dict[str, Any],
    warmup: list[dict[str, Any]],
    timed: list[list[dict[str, Any]]],
    exact_lengths: bool,
    work_dir: Path,
    log_file: Path,
    name: str,
    weight_receiver: bool = False,
) -> dict[str, Any]:
    """Warm-up, then each group of records in turn, in one bare process: {"facts", "timed"}."""
    bare = BareEngine(facts, warmup, exact_lengths, work_dir, log_file, name, weight_receiver)
    timed_results = [bare.run(group) for group in timed]
    return {"facts": bare.close(), "timed": timed_results}


WEIGHT_RECEIVER_KEYS = ("resolved.worker_extension_cls", "resolved.weight_transfer_backend")


def fact_differences(actor: dict[str, Any], bare: dict[str, Any]) -> list[str]:
    """Engine arguments, resolved engine settings, threads, environment and nice value that differ."""
    diffs = []
    for section in ("engine", "resolved", "env"):
        for key in sorted(set(actor[section]) | set(bare[section])):
            a, b = actor[section].get(key), bare[section].get(key)
            if str(a) != str(b):
                diffs.append(f"{section}.{key}: actor {a!r}, bare {b!r}")
    for key in ("torch_threads", "cpus_allowed", "nice"):
        if actor[key] != bare[key]:
            diffs.append(f"{key}: actor {actor[key]}, bare {bare[key]}")
    return diffs


def describe_differences(actor: dict[str, Any], bare: dict[str, Any]) -> str:
    """One line: what differs between the engines, the weight receiver (expected) apart."""
    diffs = fact_differences(actor, bare)
    expected = [d for d in diffs if d.startswith(WEIGHT_RECEIVER_KEYS)]
    others = [d for d in diffs if d not in expected]
    line = "engine args, resolved settings, threads, KV cache, env and nice: "
    line += "identical" if not others else "DIFFERENT: " + "; ".join(others)
    if expected:
        line += " (the bare engine has no weight receiver: " + "; ".join(expected) + ")"
    return line


def describe_threads(facts: dict[str, Any]) -> str:
    env = facts["env"]
    return (
        f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, torch threads {facts['torch_threads']}, "
        f"VLLM_CPU_KVCACHE_SPACE={env.get('VLLM_CPU_KVCACHE_SPACE', 'unset')} GiB "
        f"({facts['resolved']['kv_cache_blocks']} KV blocks of {facts['resolved']['block_size']}), "
        f"nice {facts['nice']}"
    )


# -- the actor side -------------------------------------------------------------------------------------
def demo_prompts(cfg: Any, model_path: str, count: int) -> list[str]:
    """The first `count` training prompts of the config, rendered as the driver renders them."""
    from transformers import AutoTokenizer

    from rrm_ray.data.prompts import render_prompt
    from rrm_ray.data.tasks import RENDERED, load_task_rows

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = load_task_rows(cfg, tokenizer)[0]
    if len(rows) < count:
        raise ValueError(f"--prompts {count}: {cfg.data.train_path} has only {len(rows)} rows")
    m = cfg.model
    return [
        r.prompt
        if r.extra.get(RENDERED)
        else render_prompt(tokenizer, r.prompt, m.system_prompt, m.use_chat_template)
        for r in rows[:count]
    ]


def measure(
    cfg: Any, model_path: str, prompts: list[str], repeats: int, log_file: Path, weight_receiver: bool
) -> dict[str, Any]:
    """The actor's warm-up call (recorded inside it), the bare process started on that record (it
    loads and warms up while the actor idles), then `repeats` rounds of one actor call and one bare
    call, one after the other: load that comes and goes on the machine meets both sides alike."""
    import ray

    from actors.rollout import RolloutWorker
    from rrm_ray.clients.group import ActorGroup
    from rrm_ray.clients.rollout import engine_spec
    from rrm_ray.logs import ray_init_kwargs
    from rrm_ray.placement import own_spec

    c, r = cfg.cluster, cfg.rollout
    ray.init(
        address="local",
        num_cpus=c.local_num_cpus,
        num_gpus=c.local_num_gpus,
        include_dashboard=False,
        **ray_init_kwargs(log_file),
    )
    bare = None
    try:
        group = ActorGroup(
            RolloutWorker,
            dataclasses.replace(own_spec(cfg, "rollout"), num_workers=1),
            **engine_spec(cfg, model_path),  # as the driver starts it
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
        )
        actor = group.actors[0]
        group.call_all("ping")
        facts = ray.get(actor.__ray_call__.remote(engine_facts))
        call = {
            "prompts": prompts,
            "n": r.n_samples,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_tokens": r.max_new_tokens,
            "seed": cfg.trainer.seed,
        }
        ray.get(actor.record_batches.remote())  # stays on: the engine's own seconds
        group.get([actor.generate.remote(**call)], "generate")  # warm-up
        recorded = ray.get(actor.take_batches.remote())
        bare = BareEngine(
            facts, recorded, False, log_file.parent, log_file, "rollout_throughput", weight_receiver
        )
        sides: dict[str, dict[str, list[float]]] = {
            "actor": {"seconds": [], "tokens": [], "engine_seconds": []},
            "bare": {"seconds": [], "tokens": []},
        }
        for _ in range(repeats):
            start = time.perf_counter()
            completions = group.get([actor.generate.remote(**call)], "generate")[0]
            sides["actor"]["seconds"].append(time.perf_counter() - start)
            sides["actor"]["tokens"].append(sum(len(comp.response_ids) for comp in completions))
            inside = ray.get(actor.take_batches.remote())
            sides["actor"]["engine_seconds"].append(sum(rec["seconds"] for rec in inside))
            result = bare.run(recorded)
            sides["bare"]["seconds"].append(result["seconds"])
            sides["bare"]["tokens"].append(result["tokens"])
        bare_facts = bare.close()
        group.shutdown()
    finally:
        if bare is not None and bare.proc.poll() is None:
            bare.proc.kill()
        ray.shutdown()
    return {"facts": {"actor": facts, "bare": bare_facts}, "call": call, **sides}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo_rrm.yaml"))
    ap.add_argument(
        "--prompts", type=int, default=8, help="prompts per call (each sampled rollout.n_samples times)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per side, after one warm-up")
    ap.add_argument(
        "--log-dir", default=str(REPO / "runs" / "bench"), help="engine output goes to a file here"
    )
    ap.add_argument(
        "--bare-weight-receiver",
        action="store_true",
        help="give the bare engine the actor's worker extension and weight-transfer config too",
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # the bare process's job
    ap.add_argument("--results-fd", type=int, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve), args.results_fd)
        return 0
    if args.prompts < 1 or args.repeats < 1:
        ap.error("--prompts and --repeats must be >= 1")

    from rrm_ray.logs import command_log_file, quiet_driver_loggers
    from rrm_ray.models import resolve_model_path
    from rrm_ray.validation import load_config

    quiet_driver_loggers()
    cfg = load_config(args.config, args.overrides)
    model_path = resolve_model_path(cfg.model.path)  # smollm2: converted once (ensure_smollm2)
    prompts = demo_prompts(cfg, model_path, args.prompts)
    log_file = command_log_file(args.log_dir, "rollout_throughput")
    print(f"engine logs: {log_file}")

    m = measure(cfg, model_path, prompts, args.repeats, log_file, args.bare_weight_receiver)

    call, facts = m["call"], m["facts"]
    print(
        f"{model_path}: {len(prompts)} prompts x n={call['n']}, temperature {call['temperature']}, "
        f"top_p {call['top_p']}, max_tokens {call['max_tokens']}, seed {call['seed']}"
    )
    print(f"engine args (both): {facts['actor']['engine']}")
    print(describe_differences(facts["actor"], facts["bare"]))
    print(f"actor threads: {describe_threads(facts['actor'])}")
    print(f"bare threads:  {describe_threads(facts['bare'])}")
    same = "identical" if m["actor"]["tokens"] == m["bare"]["tokens"] else "DIFFER"
    print(f"generated tokens per call: actor {m['actor']['tokens']}, bare {m['bare']['tokens']} ({same})")
    rates = {}
    for name in ("actor", "bare"):
        secs, toks = m[name]["seconds"], m[name]["tokens"]
        rates[name] = statistics.median(t / s for t, s in zip(toks, secs, strict=True))
        print(
            f"{name:5s}: {rates[name]:8.1f} tokens/s (median of {len(secs)}; seconds per call "
            f"{', '.join(f'{s:.3f}' for s in secs)})"
        )
    engine = m["actor"]["engine_seconds"]
    print(
        f"inside the actor, its engine's LLM.generate took {', '.join(f'{s:.3f}' for s in engine)} s "
        f"(the rest of the actor's seconds is Ray and Completion building)"
    )
    print(f"ratio actor/bare tokens/s = {rates['actor'] / rates['bare']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
