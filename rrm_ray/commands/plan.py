"""`rrm-ray plan CONFIG [key=value ...] [--address URL]`: what a job will occupy, before anything starts.

It validates the config exactly as `train` does and prints, without starting an actor, the report of
`rrm_ray.memory.build_report`: placement groups, per-role GPUs, sharing and sleep levels, the weight
sync method and an estimate of memory per GPU. The shape it checks against is the declared one
(`cluster.num_nodes` x `cluster.gpus_per_node`, or a local Ray's logical CPUs), or with `--address`
the live cluster. It fails with the messages `train` gives: a config error (exit 2), or the lines
that say why the cluster cannot hold the job (exit 1). Memory is an estimate: it warns, it does not fail.
"""

from __future__ import annotations

import argparse
import sys

from rrm_ray.config import JobConfig
from rrm_ray.memory import build_report
from rrm_ray.placement import cannot_hold_message, declared_nodes, local_resources
from rrm_ray.validation import load_config


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # a ConfigError exits 2 with train's message (cli.main)
    if args.address:
        from rrm_ray.clients.cluster import live_nodes  # Ray, only to read a live cluster

        try:
            nodes: list[dict[str, float]] | None = live_nodes(args.address)
        except ConnectionError as exc:
            print(f"no Ray cluster answers at --address {args.address}: {exc}", file=sys.stderr)
            return 2
        where = f"the live cluster at {args.address} ({len(nodes)} nodes)"
    else:
        nodes = declared_nodes(cfg)
        where = _declared_text(cfg, nodes)
    text, problems = build_report(cfg, nodes, where)
    print(f"rrm-ray plan {args.config}\n{text}")
    if problems:
        print(cannot_hold_message(problems), file=sys.stderr)
        return 1
    return 0


def _declared_text(cfg: JobConfig, nodes: list[dict[str, float]] | None) -> str:
    c = cfg.cluster
    if nodes is None:
        return (
            "nothing: the cluster shape is unknown (set cluster.num_nodes/gpus_per_node, or pass --address)"
        )
    cpus, gpus = local_resources(c)
    if c.address is None and (c.device == "cpu" or gpus is not None):
        what = [f"{cpus} logical CPUs" if cpus is not None else "the CPUs Ray detects"]
        what += [f"{gpus} GPUs"] if gpus else []
        return f"the local Ray that `train` starts ({', '.join(what)}: cluster.local_num_cpus/gpus)"
    return (
        f"the declared cluster: {c.num_nodes} node(s) x {c.gpus_per_node} GPUs "
        "(cluster.num_nodes, cluster.gpus_per_node; CPUs per node are not declared, not checked)"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="validate a config and print what the job will occupy (starts nothing)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (anywhere, or after --)")
    p.add_argument("--address", help="check against this running Ray cluster (ray.init address) instead")
    p.set_defaults(func=run)
