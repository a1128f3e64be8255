"""Judge throughput: the judge actor (JudgeService, deadline-bounded stepping, Ray call) against bare
vLLM `LLM.generate` on the SAME prompts, in the same actor process and engine, in one run.

    python bench/judge_throughput.py --pairs 16 --max-new-tokens 128 [--model smollm2] [--repeats 2]

Decoding is greedy by default so both paths generate the same tokens and comparisons/s compare like
with like; vLLM's prefix cache is reset before every run, so no run reuses another's prefill. The
prompts of the bare path are the ones the service actually sent (recorded in the actor). Timings
are driver-side wall clock around one Ray call each, so both pay the same call overhead; the paths
alternate (actor, bare, bare, actor, ...) to spread any drift. The last line is the ratio
actor / bare (goal: >= 0.95).
"""

from __future__ import annotations

import argparse
import pickle
import time

import ray

from actors.judge import JudgeWorker
from rrm_ray.clients.cluster import connect_ray
from rrm_ray.clients.judge import JudgeClient
from rrm_ray.clients.roles import OwnGroups
from rrm_ray.data.synthetic_pairs import make_synthetic_pairs
from rrm_ray.jobs.judging import alone
from rrm_ray.judge.records import JudgePair
from rrm_ray.validation import load_config


class BenchJudge(JudgeWorker):
    """A judge engine that can also run prompts through bare vLLM."""

    def bare(self, prompts: list[str]) -> int:
        """One plain `LLM.generate` over the prompts; returns the generated token count."""
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens
        )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outputs for o in out.outputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(
        args.config,
        [
            f"judge.model_path={args.model}",
            f"judge.max_new_tokens={args.max_new_tokens}",
            f"judge.temperature={args.temperature}",
            "judge.max_prompt_tokens=1024",
            f"judge.max_model_len={1024 + args.max_new_tokens}",
            "judge.votes=1",
            "judge.kv_cache_gib=1",
            *args.overrides,
        ],
    )
    pairs = [JudgePair(p.query, p.chosen, p.rejected) for p in make_synthetic_pairs(args.pairs, seed=7)]
    warm = [JudgePair(p.query, p.chosen, p.rejected) for p in make_synthetic_pairs(2, seed=99)]
    connect_ray(cfg)
    judge = alone(cfg, lambda restarts: JudgeClient.start(cfg, OwnGroups(cfg), None, restarts, BenchJudge))
    actor = judge.group.actors[0]

    def recorded_prompts() -> list[str]:
        """The prompts of the judge's engine batches since the last take (one wave: one batch)."""
        return [p for b in ray.get(actor.take_batches.remote()) for p in pickle.loads(b["args"])[0]]

    try:
        judge.compare(warm)  # compile / allocate once, outside the measurement
        judge.stats(reset=True)
        ray.get(actor.record_batches.remote())
        runs: dict[str, list[tuple[float, int]]] = {"actor": [], "bare": []}
        prompts: list[str] = []
        for r in range(args.repeats):
            for path in ("actor", "bare") if r % 2 == 0 else ("bare", "actor"):
                if path == "bare" and not prompts:
                    judge.clear_cache()
                    judge.compare(pairs)  # the prompts the service sends, recorded
                    prompts = recorded_prompts()
                    judge.stats(reset=True)
                judge.clear_cache()  # and vLLM's prefix cache: every run pays its prefill, as judging does
                start = time.perf_counter()
                if path == "actor":
                    judge.compare(pairs)
                    seconds = time.perf_counter() - start
                    tokens = int(judge.stats(reset=True)["generated_tokens"])
                    prompts = prompts or recorded_prompts()
                else:
                    tokens = ray.get(actor.bare.remote(prompts))
                    seconds = time.perf_counter() - start
                runs[path].append((seconds, tokens))
                print(f"run {r} {path}: {seconds:.2f}s, {tokens} tokens", flush=True)
    finally:
        judge.shutdown()
        ray.shutdown()

    setup = f"{args.max_new_tokens} new tokens max, temperature {args.temperature:g}"
    print(f"\n{args.pairs} pairs, 1 vote, {setup}")
    print(f"{'path':<8}{'runs':>5}{'seconds':>10}{'comparisons/s':>15}{'tokens':>8}{'tokens/s':>10}")
    rates = {}
    for path, rs in runs.items():
        seconds = sum(s for s, _ in rs)
        tokens = sum(t for _, t in rs)
        rates[path] = (args.pairs * len(rs) / seconds, tokens / seconds)
        print(
            f"{path:<8}{len(rs):>5}{seconds:>10.2f}{rates[path][0]:>15.3f}{tokens:>8}{rates[path][1]:>10.1f}"
        )
    ratio_c = rates["actor"][0] / rates["bare"][0]
    ratio_t = rates["actor"][1] / rates["bare"][1]
    print(f"ratio actor/bare: comparisons/s {ratio_c:.3f}, tokens/s {ratio_t:.3f}")


if __name__ == "__main__":
    main()
