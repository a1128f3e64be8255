"""`rrm-ray downstream-eval`: lm-eval multiple-choice accuracy of a model on local MMLU-Pro / GPQA
files, offline, in this process (`actors.downstream`), logged to MLflow.

rrm-ray downstream-eval --model smollm2 --tasks mmlu_pro=mmlu_pro_test.jsonl,gpqa=gpqa_main.csv --limit 200
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from actors.downstream import evaluate_tasks
from rrm_ray.commands.options import add_run_options, with_verbose
from rrm_ray.config import ConfigError, resolved_dtype, to_flat_dict
from rrm_ray.data.downstream import (
    metric_names,
    parse_task_list,
    read_tasks,
    results_table,
    validate_settings,
)
from rrm_ray.models import resolve_model_path
from rrm_ray.tracking import open_tracker, run_line
from rrm_ray.validation import load_config


def _command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, with_verbose(args))
    d = cfg.trainer.downstream_eval
    tasks = parse_task_list(args.tasks) if args.tasks else dict(d.tasks)
    if not tasks:
        raise ConfigError("no tasks: give --tasks NAME=FILE[,...] or set trainer.downstream_eval.tasks")
    d = dataclasses.replace(d, tasks=tasks, limit=args.limit if args.limit is not None else d.limit)
    validate_settings(d)
    if not args.verbose:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    read = read_tasks(d)  # every row checked before the model loads
    for task in read.values():
        dropped = f"; {task.padding_dropped} 'N/A' padding options dropped" if task.padding_dropped else ""
        rows = f"{len(task.questions)} of {task.rows_in_file} rows"
        print(f"{task.name}: {rows} of {task.path} ({task.format}{dropped})")
    model = args.model or cfg.model.path
    try:
        model_dir = resolve_model_path(model)
    except FileNotFoundError as exc:
        print(f"error: --model: {exc}", file=sys.stderr)
        return 2
    tracker = open_tracker(cfg.tracking, "downstream", model_dir)
    if line := run_line(tracker, cfg.tracking):
        print(line)
    tracker.log_params(
        {
            **to_flat_dict(cfg),
            "downstream.model": model,
            "downstream.limit": d.limit,
            **{f"downstream.tasks.{name}": path for name, path in tasks.items()},
        }
    )
    tracker.set_tags({"rrm_ray.job": "downstream-eval", "rrm_ray.model": model_dir})
    status = "FAILED"
    try:
        started = time.perf_counter()
        results = evaluate_tasks(
            read, model_dir, cfg.cluster.device, resolved_dtype(cfg), d.batch_size, d.num_fewshot
        )
        seconds = time.perf_counter() - started
        print(f"\n{results_table(results)}")
        where = f"{cfg.cluster.device} ({resolved_dtype(cfg)})"
        print(f"{model} on {where}, {d.num_fewshot}-shot, in {seconds:.1f}s")
        tracker.log_metrics({**metric_names(results), "downstream/seconds": seconds}, step=0)
        for task in read.values():
            if not task.path.lower().endswith(".csv"):  # MLflow's dataset reader takes JSON(L)/Parquet
                tracker.log_dataset(task.path, "eval")
        status = "FINISHED"
    finally:
        tracker.close(status)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "downstream-eval",
        help="lm-eval multiple-choice accuracy of a model on local MMLU-Pro / GPQA files (offline)",
    )
    p.add_argument("--model", help="an HF model directory or 'smollm2' (default: model.path)")
    p.add_argument(
        "--tasks",
        help="NAME=FILE[,NAME=FILE...]; NAME is a format (mmlu_pro, gpqa) alone or with _label "
        "(default: trainer.downstream_eval.tasks)",
    )
    p.add_argument("--limit", type=int, help="only the first N rows of each file")
    p.add_argument("--config", help="YAML config (cluster.device, model.dtype, tracking, ...)")
    add_run_options(p)
    p.set_defaults(func=_command)
