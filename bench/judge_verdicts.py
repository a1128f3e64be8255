"""Cheaper verdicts, same answers: the demo's judge before and after prefix caching and choice_prob,
on the same pairs, in one run.

    python bench/judge_verdicts.py [--queries 4] [--model smollm2] [--repeats 1] [key=value ...]

Pairs: ``--queries`` synthetic arithmetic problems (``rrm_ray.data.synthetic_pairs``, easy), four
pairs each, always a right answer against a wrong one: the full right and slipped solutions, and
each cut to its ``Final answer: N`` line, crossed (right/wrong x full/short). All pairs of a query
share its prompt head (system prompt, question), and every prompt shares the system prompt.

Settings, each on its own fresh engine (one alive at a time), same judge otherwise (the demo's
``configs/demo_rrm.yaml`` judge: direct mode, temperature 0.6, 3 adaptive votes in both orders):

- before: ``judge.prefix_caching=false``, ``judge.verdict=choice`` (a sampled forced choice), 3 votes;
- cached: the same with ``judge.prefix_caching=true``;
- reseeded: "cached" with another engine seed, so its agreement with "before" is the noise floor of
  sampled verdicts (what agreement two equally good judges of this kind reach);
- after:  ``judge.prefix_caching=true``, ``judge.verdict=choice_prob`` (one forward per order).

Every measured run starts with an empty prefix cache and comparison cache, after one warm-up batch
on other pairs (compile, allocation). Reported per setting: wall seconds of the ``compare`` calls,
judge calls, prompt tokens (prefill asked), of those read from vLLM's prefix cache, and computed
(the difference), generated tokens, accuracy (right answer preferred; a tie counts 0.5) and
agreement with "before" (same winner, ties included). The last line is after/before seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import ray

from rrm_ray.clients.cluster import connect_ray
from rrm_ray.data.synthetic_pairs import make_synthetic_pairs
from rrm_ray.jobs.judging import judge_session
from rrm_ray.judge.records import JudgePair, PairJudgment
from rrm_ray.validation import load_config

SETTINGS = {
    "before": {"judge.prefix_caching": False, "judge.verdict": "choice", "judge.votes": 3},
    "cached": {"judge.prefix_caching": True, "judge.verdict": "choice", "judge.votes": 3},
    "reseeded": {
        "judge.prefix_caching": True,
        "judge.verdict": "choice",
        "judge.votes": 3,
        "trainer.seed": 2,
    },
    "after": {"judge.prefix_caching": True, "judge.verdict": "choice_prob", "judge.votes": 1},
}


def _short(solution: str) -> str:
    """The solution cut to its last line, ``Final answer: N``."""
    return solution.strip().splitlines()[-1]


def bench_pairs(queries: int, seed: int) -> list[JudgePair]:
    """Four right-vs-wrong pairs per query; response_a is always the right one."""
    pairs = []
    for p in make_synthetic_pairs(queries, seed=seed, difficulty="easy"):
        for right in (p.chosen, _short(p.chosen)):
            for wrong in (p.rejected, _short(p.rejected)):
                pairs.append(JudgePair(p.query, right, wrong))
    return pairs


def _credit(j: PairJudgment) -> float:
    return 1.0 if j.winner == "a" and j.decided else 0.0 if j.winner == "b" and j.decided else 0.5


def run_setting(
    base: list[str], overrides: dict[str, Any], pairs: list[JudgePair], warm: list[JudgePair], repeats: int
) -> tuple[dict[str, float], list[PairJudgment]]:
    """One engine for this setting: warm up, then ``repeats`` measured runs from empty caches."""
    cfg = load_config(None, [*base, *(f"{k}={v}" for k, v in overrides.items())])
    totals: dict[str, float] = {}
    with judge_session(cfg, "bench") as judge:
        judge.compare(warm)
        judgments: list[PairJudgment] = []
        for _ in range(repeats):
            judge.clear_cache()  # verdicts and vLLM's prefix cache: every run pays for everything
            judge.stats(reset=True)
            start = time.perf_counter()
            judgments = judge.compare(pairs)
            seconds = time.perf_counter() - start
            stats = judge.stats(reset=True)
            for key in ("judge_calls", "prefill_tokens", "prefix_cached_tokens", "generated_tokens"):
                totals[key] = totals.get(key, 0) + stats[key]
            totals["seconds"] = totals.get("seconds", 0.0) + seconds
    return totals, judgments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="judge config overrides for every setting, key=value")
    args = ap.parse_args()
    base = [
        f"judge.model_path={args.model}",
        "judge.mode=direct",
        "judge.temperature=0.6",
        "judge.adaptive_votes=true",
        "judge.max_prompt_tokens=768",
        "judge.max_new_tokens=40",  # the demo's; a forced choice writes one token
        "judge.max_model_len=1024",
        "judge.kv_cache_gib=1",
        f"checkpoint.dir={tempfile.mkdtemp(prefix='judge_verdicts_')}",  # the job log goes here
        *args.overrides,
    ]
    pairs = bench_pairs(args.queries, seed=7)
    warm = bench_pairs(1, seed=99)[:2]
    connect_ray(load_config(None, base), "bench")
    results: dict[str, tuple[dict[str, float], list[PairJudgment]]] = {}
    try:
        for name, overrides in SETTINGS.items():
            results[name] = run_setting(base, overrides, pairs, warm, args.repeats)
            print(f"{name}: {results[name][0]['seconds']:.2f}s", flush=True)
    finally:
        ray.shutdown()

    print(f"\n{len(pairs)} pairs of {args.queries} queries, {args.repeats} run(s) per setting, {args.model}")
    head = f"{'setting':<8}{'seconds':>9}{'calls':>7}{'prompt tok':>12}{'cached':>8}{'computed':>10}"
    print(head + f"{'generated':>11}{'accuracy':>10}{'agree':>7}")
    before = results["before"][1]
    for name, (t, judged) in results.items():
        computed = t["prefill_tokens"] - t["prefix_cached_tokens"]
        accuracy = sum(_credit(j) for j in judged) / len(judged)
        agree = sum(j.winner == b.winner for j, b in zip(judged, before, strict=True)) / len(judged)
        print(
            f"{name:<8}{t['seconds']:>9.2f}{int(t['judge_calls']):>7}{int(t['prefill_tokens']):>12}"
            f"{int(t['prefix_cached_tokens']):>8}{int(computed):>10}{int(t['generated_tokens']):>11}"
            f"{accuracy:>10.3f}{agree:>7.3f}"
        )
    ratio = results["after"][0]["seconds"] / results["before"][0]["seconds"]
    print(f"ratio after/before seconds: {ratio:.3f}")


if __name__ == "__main__":
    main()
