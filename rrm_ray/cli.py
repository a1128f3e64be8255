"""`rrm-ray` command line: train locally or on a cluster, judge and evaluate, and manage submitted jobs.

rrm-ray train configs/quickstart.yaml trainer.total_steps=5
rrm-ray dpo configs/dpo_rrm_cpu.yaml
rrm-ray export runs/quickstart/<run id>/step_000010 --out hf_model/ --dtype bfloat16
rrm-ray judge | eval | best-of-n ...  # the RRM judge on its own
rrm-ray submit configs/quickstart.yaml --address http://head:8265 -- trainer.total_steps=5
rrm-ray status JOB | logs JOB [--follow] | list | stop JOB
rrm-ray plan configs/grpo_gpu_1x8.yaml  # what the job occupies, without starting it
rrm-ray serve-judge configs/judge_cpu.yaml --name rrm  # one judge served to many jobs (judge.endpoint.url)
rrm-ray downstream-eval --model DIR --tasks mmlu_pro=FILE,gpqa=FILE  # lm-eval accuracy, offline

`key=value` config overrides may stand anywhere among the options, or after `--`.
"""

from __future__ import annotations

import argparse
import sys

from rrm_ray.clients.judge_endpoint import JudgeEndpointError
from rrm_ray.commands import downstream, judge, plan, serve, submit, train
from rrm_ray.commands.options import split_overrides
from rrm_ray.config import ConfigError
from rrm_ray.logs import quiet_driver_loggers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrm-ray", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (train, downstream, submit, judge, plan, serve):
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = split_overrides(parser, argv)
    if not getattr(args, "verbose", False):
        quiet_driver_loggers()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except JudgeEndpointError as exc:  # a served judge (judge.endpoint.url) unreachable or refusing
        print(f"judge endpoint error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
