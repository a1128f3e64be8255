"""Asynchronous GRPO: step seconds with `trainer.max_staleness=1` against 0 on the demo job, with and
without the judge, four jobs one after the other in one run, and the bound of what overlap can buy.

    python bench/async_pipeline.py [--config configs/demo_rrm.yaml] [--warmup-steps 1] [--steps 4]
                                   [key=value ...]

measured  for each setting {judge on, judge off} x {max_staleness 0, 1}: its own `GRPOJob` on the
          config (tracking off; Ray started once and kept up between the jobs), `start()`, then
          `--warmup-steps` + `--steps` calls of `train_step()`. A setting's step seconds and phase
          seconds are the means over the timed steps of the job's own timers (`time/*_s`, what it
          logs to MLflow): synchronously `time/step_s` is the sum of its phases, overlapped it is the
          step's wall clock. The table also gives each step's wall clock timed from outside, which adds
          the driver's work between the phase timers (batch building, advantages, metrics).
          `trainer.total_steps` is set one past the last timed step, so every timed step of
          max_staleness=1 generates its successor while it trains (the run's last step would not).
bound     each phase alone, from the synchronous job (nothing overlaps there): produce = generate +
          reward (the rule actor and the judge), train = logprobs + update, sync = weight_sync.
          Synchronously a step is produce + train + sync. One-step-off (rrm_ray.pipeline) the next
          batch is produced while the learner trains, and the weights move only after both (never
          mid-generation), so with every role on devices of its own the step is at best
          max(produce, train) + sync. The bound ratio is their quotient per judge setting.

On this machine all roles share the same CPU cores (their bundles are logical CPUs): an overlapped
phase gets only the cycles the other leaves idle, so the measured ratio says what overlap buys here,
and the bound what it would buy with the roles on separate devices. The table's `contention` line
gives each overlapped phase's seconds at max_staleness=1 over its seconds alone: how much the phases
slowed each other. `generate_wait` is the learner's idle time waiting for the next batch
(max_staleness >= 1 only).

The last line is the measured ratio async/sync of mean step seconds (`time/step_s`) with the judge on.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRODUCE = ("generate", "reward")  # the rollout engines, then the rule actor and the judge
TRAIN = ("logprobs", "update")  # the learner ranks
SYNC = ("weight_sync",)  # learner -> engines, after both of the above
PHASES = (*PRODUCE, *TRAIN, *SYNC, "generate_wait")


@dataclass(frozen=True)
class Setting:
    judge: bool
    max_staleness: int

    @property
    def name(self) -> str:
        return f"judge {'on' if self.judge else 'off'}, k={self.max_staleness}"

    @property
    def slug(self) -> str:  # its job's directory
        return f"judge_{'on' if self.judge else 'off'}-k{self.max_staleness}"

    def overrides(self, run_dir: Path, total_steps: int) -> list[str]:
        return [
            f"judge.enabled={str(self.judge).lower()}",
            f"trainer.max_staleness={self.max_staleness}",
            f"trainer.total_steps={total_steps}",
            "tracking.enabled=false",
            f"checkpoint.dir={run_dir}",
            "checkpoint.save_final=false",
        ]


SETTINGS = tuple(Setting(judge, k) for judge in (True, False) for k in (0, 1))


@dataclass
class Measured:
    """One setting's means over its timed steps."""

    setting: Setting
    steps: int
    step_s: float  # the job's `time/step_s`
    wall_s: float  # `train_step()` timed from outside
    phases: dict[str, float]  # `time/<phase>_s`; generate_wait is 0.0 when synchronous (none logged)
    staleness: float  # `train/staleness`


def summarize(setting: Setting, timed: list[tuple[float, dict[str, float]]]) -> Measured:
    """Means over the timed steps, each given as (outside wall seconds, the step's metrics)."""
    if not timed:
        raise ValueError(f"{setting.name}: no timed steps to summarize")
    for k, (_, metrics) in enumerate(timed):
        # every phase of a step that updated (filter_flat_groups is off), so none is read as 0 by mistake
        wanted = [*PRODUCE, *TRAIN, *SYNC, *(("generate_wait",) if setting.max_staleness else ())]
        missing = [f"time/{p}_s" for p in ("step", *wanted) if f"time/{p}_s" not in metrics]
        if missing:
            raise ValueError(
                f"{setting.name}: timed step {k + 1} has no {', '.join(missing)} (its timers: "
                f"{sorted(key for key in metrics if key.startswith('time/'))}); the bench reads the phase "
                "timers GRPOJob.train_step logs (a step with an actor restart may have no weight sync)"
            )
    mean = statistics.fmean
    return Measured(
        setting,
        len(timed),
        step_s=mean(m["time/step_s"] for _, m in timed),
        wall_s=mean(wall for wall, _ in timed),
        phases={p: mean(m.get(f"time/{p}_s", 0.0) for _, m in timed) for p in PHASES},
        staleness=mean(m["train/staleness"] for _, m in timed),
    )


def bound(alone: Measured) -> tuple[float, float]:
    """(synchronous, one-step-off) step seconds from the phases measured alone, with every role on
    devices of its own: produce + train + sync against max(produce, train) + sync."""
    produce = sum(alone.phases[p] for p in PRODUCE)
    train = sum(alone.phases[p] for p in TRAIN)
    sync = sum(alone.phases[p] for p in SYNC)
    return produce + train + sync, max(produce, train) + sync


def check_supported(cfg: Any) -> None:
    """Configs whose steps would not be comparable across the settings."""
    if cfg.algorithm.filter_flat_groups:
        raise SystemExit(
            "bench/async_pipeline.py: algorithm.filter_flat_groups=true skips the update (and the weight "
            "sync) of a batch whose groups are all flat, so steps would differ in what they run; set it false"
        )


def run_setting(cfg: Any, setting: Setting, count: int) -> list[tuple[float, dict[str, float]]]:
    """Start the setting's job, run `count` train steps, close the job (Ray stays up)."""
    from rrm_ray.jobs.grpo import GRPOJob

    steps = []
    with GRPOJob(cfg) as job:
        job.start()
        for k in range(count):
            start = time.perf_counter()
            metrics = job.train_step()
            wall = time.perf_counter() - start
            steps.append((wall, metrics))
            phases = ", ".join(
                f"{p} {metrics[f'time/{p}_s']:.2f}" for p in PHASES if f"time/{p}_s" in metrics
            )
            print(
                f"{setting.name}: step {k + 1}/{count} {metrics['time/step_s']:.2f} s "
                f"(wall {wall:.2f}; {phases})",
                flush=True,
            )
    return steps


def print_report(results: list[Measured], warmup: int) -> None:
    """The table of means, the contention and the bound per judge setting, the ratios; the headline
    ratio (judge on) last."""
    first = results[0]
    print()
    print(f"means of {first.steps} timed steps after {warmup} warm-up, seconds (job's timers: time/*_s)")
    header = f"{'setting':18s} {'step':>7s} {'wall':>7s} " + " ".join(f"{p:>13s}" for p in PHASES)
    print(header + f" {'staleness':>9s}")
    for m in results:
        cells = " ".join(f"{m.phases[p]:13.2f}" for p in PHASES)
        print(f"{m.setting.name:18s} {m.step_s:7.2f} {m.wall_s:7.2f} {cells} {m.staleness:9.2f}")
    by_setting = {(m.setting.judge, m.setting.max_staleness): m for m in results}
    headline = None
    for judge in (True, False):
        if (judge, 0) not in by_setting or (judge, 1) not in by_setting:
            continue
        alone, overlapped = by_setting[(judge, 0)], by_setting[(judge, 1)]
        label = "judge on" if judge else "judge off"
        slowed = ", ".join(
            f"{p} x{overlapped.phases[p] / alone.phases[p]:.2f}"
            for p in (*PRODUCE, *TRAIN)
            if alone.phases[p] >= 0.005
        )
        print(f"contention ({label}, k=1 phase s / k=0 phase s, the roles share the cores): {slowed}")
        sync_s, async_s = bound(alone)
        produce = sum(alone.phases[p] for p in PRODUCE)
        train = sum(alone.phases[p] for p in TRAIN)
        print(
            f"bound ({label}, roles on devices of their own): produce {produce:.2f} s, train {train:.2f} s, "
            f"sync {sync_s - produce - train:.2f} s -> synchronous {sync_s:.2f} s, one-step-off "
            f"max(produce, train) + sync = {async_s:.2f} s"
        )
        measured = overlapped.step_s / alone.step_s
        print(
            f"{label}: measured ratio async/sync {measured:.3f} (outside wall clock "
            f"{overlapped.wall_s / alone.wall_s:.3f}), bound ratio {async_s / sync_s:.3f}"
        )
        if measured < async_s / sync_s:  # overlapped beat the phases alone: they varied between steps
            print(
                f"  {label}: measured below the bound: the synchronous job's phases took longer alone than "
                "overlapped (see contention below x1), so they varied between steps; raise --steps"
            )
        if judge:
            headline = measured
    if headline is not None:
        print(f"ratio async/sync step seconds (judge on): {headline:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo_rrm.yaml"))
    ap.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per setting")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per setting")
    ap.add_argument("--log-dir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value (all four settings)")
    args = ap.parse_args()
    # One warm-up at least: at max_staleness=1 the first step generates its own batch synchronously.
    if args.warmup_steps < 1 or args.steps < 1:
        ap.error("--warmup-steps and --steps must be >= 1")

    from rrm_ray.logs import quiet_driver_loggers
    from rrm_ray.validation import load_config

    quiet_driver_loggers()
    work_dir = Path(args.log_dir, f"async_pipeline-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}").resolve()
    count = args.warmup_steps + args.steps
    bench_keys = {o.split("=", 1)[0] for o in SETTINGS[0].overrides(work_dir, count + 1)}
    taken = [o for o in args.overrides if o.split("=", 1)[0] in bench_keys]
    if taken:
        ap.error(f"{', '.join(taken)}: the bench sets {', '.join(sorted(bench_keys))} itself, per setting")
    # Every config is loaded and validated before anything starts (max_staleness=1 needs
    # algorithm.tis_cap, and roles of their own: config.validate_staleness).
    cfgs = {
        s: load_config(args.config, [*args.overrides, *s.overrides(work_dir / s.slug, count + 1)])
        for s in SETTINGS
    }
    for cfg in cfgs.values():
        check_supported(cfg)

    import ray

    from rrm_ray.clients.cluster import connect_ray

    any_cfg = next(iter(cfgs.values()))
    connect_ray(
        dataclasses.replace(any_cfg, checkpoint=dataclasses.replace(any_cfg.checkpoint, dir=str(work_dir))),
        "async_pipeline",
    )
    results = []
    try:
        for setting, cfg in cfgs.items():
            steps = run_setting(cfg, setting, count)
            results.append(summarize(setting, steps[args.warmup_steps :]))
    finally:
        ray.shutdown()

    c = any_cfg
    print()
    print(
        f"{c.model.path}: {c.data.prompts_per_step} prompts x n={c.rollout.n_samples}, max_new_tokens "
        f"{c.rollout.max_new_tokens}, learner {c.learner.num_ranks} ranks x {c.learner.threads} threads, "
        f"rollout {c.rollout.threads} threads, judge {c.judge.mode}/{c.judge.method} {c.judge.threads} "
        f"threads; {len(os.sched_getaffinity(0))} CPU cores here, shared by every role"
    )
    print_report(results, args.warmup_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
