"""Which tournament buys the most accuracy per judge call: knockout, Swiss rounds, round robin.

    python bench/tournaments.py [--trials 2000] [--position-bias 0.1] [--votes 1] [--seed 0]

A pure, seeded simulation (``rrm_ray.judge.simulation``: the real tournaments, voting and rewards
with a made-up judge of accuracy p and position bias b), no model, no Ray: about 70 s of one
core with the defaults, and the same table on every run. Prints the markdown table (the one in the
README, section "Which tournament"), then each metric per judge call relative to the knockout; the
last line is the ratio swiss / knockout of P(best) per judge call at n=8, p=0.75.
"""

from __future__ import annotations

import argparse
import time

from rrm_ray.judge.simulation import CellResult, SimConfig, markdown_table, simulate

METRICS = ("p_best", "kendall_tau", "advantage_corr")


def per_call(cell: CellResult, metric: str) -> float:
    return getattr(cell, metric) / cell.judge_calls


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a knockout that never found the best in a short run)."""
    return a / b if b else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000, help="groups per (method, n, p) cell")
    ap.add_argument("--position-bias", type=float, default=0.1, help="b: P(the judge names the first shown)")
    ap.add_argument("--votes", type=int, default=1, help="judge.votes (majority over both orders)")
    ap.add_argument(
        "--swiss-rounds", type=int, default=None, help="judge.swiss_rounds (default ceil(log2 n))"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = SimConfig(
        position_bias=args.position_bias,
        votes=args.votes,
        swiss_rounds=args.swiss_rounds,
        trials=args.trials,
        seed=args.seed,
    )
    start = time.perf_counter()
    cells = simulate(cfg)
    seconds = time.perf_counter() - start
    print(
        f"{cfg.trials} groups per cell, position bias b={cfg.position_bias:g}, votes={cfg.votes}, "
        f"seed={cfg.seed} ({seconds:.0f} s)\n"
    )
    print(markdown_table(cells))
    by_key = {(c.method, c.n, c.accuracy): c for c in cells}
    print("\nper judge call, relative to knockout (> 1: more of the metric per call than knockout)")
    for n in cfg.sizes:
        for p in cfg.accuracies:
            ko = by_key[("knockout", n, p)]
            parts = []
            for method in ("swiss", "elo"):
                ratios = [ratio(per_call(by_key[(method, n, p)], m), per_call(ko, m)) for m in METRICS]
                parts.append(f"{method} " + " ".join(f"{r:.2f}" for r in ratios))
            print(f"n={n:<2} p={p:<4g} (P(best) tau adv): " + " | ".join(parts))
    ko, sw = by_key[("knockout", 8, 0.75)], by_key[("swiss", 8, 0.75)]
    summary = ratio(per_call(sw, "p_best"), per_call(ko, "p_best"))
    print(f"accuracy per call (P(best) / judge calls): swiss / knockout = {summary:.3f} at n=8 p=0.75")


if __name__ == "__main__":
    main()
