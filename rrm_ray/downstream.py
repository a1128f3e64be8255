"""Downstream accuracy of a policy: lm-eval (EleutherAI lm-evaluation-harness) multiple-choice tasks
over local MMLU-Pro / GPQA files, offline.

rrm-ray downstream-eval --model smollm2 --tasks mmlu_pro=mmlu_pro_test.jsonl,gpqa=gpqa_main.csv --limit 200

The RRM paper reports its post-trained policies on MMLU-Pro and GPQA; no hub is reachable where
rrm-ray runs, so the user brings the files and nothing is downloaded. Each file is read and checked
here, row by row, before lm-eval starts (a bad row fails naming file, row, key and what was
expected), written out in one normalised JSONL shape, and described to lm-eval as a task over that
local file (`dataset_path: json`) in a generated YAML folder that lm-eval's `TaskManager` indexes
(`include_path`, without its built-in tasks). lm-eval then scores each option's log-likelihood with
its HF backend (`simple_evaluate(model="hf")`) and reports `acc` and `acc_norm` with their stderr.

Prompts show the lettered options and score the letters, as lm-eval's MMLU and GPQA tasks do:
MMLU-Pro "A. option" lines then "Answer:" (choices " A", " B", ...), GPQA "(A) option" lines then
"Answer:" (choices " (A)", ...). GPQA rows name the correct answer and three incorrect ones, so their
order is shuffled per row, from `gpqa_option_seed` and the question's text alone (the same file gives
the same order whatever its row order or `limit`).

In `rrm-ray train` (`trainer.downstream_eval.enabled`), `downstream_metrics` runs the evaluation in
a Ray task of its own (1 GPU on cuda, 1 CPU on cpu, a worker that exits afterwards), so the driver
never holds a model and the learner's and engines' GPUs are not shared; see `downstream_metrics`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrm_ray.config import ConfigError
from rrm_ray.models import SMOLLM2_ALIAS

if TYPE_CHECKING:
    from rrm_ray.config import DownstreamEvalConfig, JobConfig

FORMATS = ("mmlu_pro", "gpqa")
LETTERS = "ABCDEFGHIJ"  # MMLU-Pro has at most 10 options
MMLU_PRO_PADDING = "N/A"  # MMLU-Pro's early releases padded short option lists to 10 with this
GPQA_WRONG_KEYS = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
WHEN = ("before", "after")
# Nothing may reach a hub: the models and files are local (read by huggingface_hub at import).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LM_EVAL_TASK_PREFIX = "rrm_"  # our generated tasks' names in lm-eval (its built-ins are not indexed)

# Jinja templates over a normalised row (question, options, labels, gold, category).
PROMPTS = {
    "mmlu_pro": (
        "The following is a multiple choice question about {{category}}.\n\n{{question}}\n"
        "{% for option in options %}{{labels[loop.index0]}}. {{option}}\n{% endfor %}Answer:"
    ),
    "gpqa": (
        "What is the correct answer to this question: {{question}}\nChoices:\n"
        "{% for option in options %}{{labels[loop.index0]}} {{option}}\n{% endfor %}Answer:"
    ),
}


class DownstreamDataError(ConfigError):
    """A downstream task file, or one of its rows, is not in its format: file, row, key, expectation."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice item, normalised: `gold` indexes `options`."""

    question: str
    options: tuple[str, ...]
    gold: int
    category: str


@dataclass(frozen=True)
class TaskData:
    """A task file read and checked: its questions (after `limit`), and what reading changed."""

    name: str
    format: str
    path: str
    questions: list[Question]
    rows_in_file: int
    padding_dropped: int = 0  # MMLU-Pro "N/A" options removed


# ---------------------------------------------------------------------------------------------- names
def task_format(name: str) -> str:
    """A task's format, from its name: the format alone or followed by `_label` (`gpqa_diamond`)."""
    if re.fullmatch(r"[a-z][a-z0-9_]*", name):
        for fmt in FORMATS:
            if name == fmt or name.startswith(fmt + "_"):
                return fmt
    raise ConfigError(
        f"task name {name!r} names no format; a name is a format "
        f"({', '.join(FORMATS)}) alone or followed by _label in lowercase letters, digits and _ "
        "(e.g. gpqa_diamond, mmlu_pro_math)"
    )


def parse_task_list(text: str) -> dict[str, str]:
    """`mmlu_pro=FILE,gpqa=FILE` -> {name: path}, each name checked (`task_format`)."""
    tasks: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not path:
            raise ConfigError(f"--tasks: {item!r} is not NAME=FILE (e.g. mmlu_pro=mmlu_pro_test.jsonl)")
        if name in tasks:
            raise ConfigError(f"--tasks: task {name!r} is named twice")
        try:
            task_format(name)
        except ConfigError as exc:
            raise ConfigError(f"--tasks: {exc}") from None
        tasks[name] = path
    if not tasks:
        raise ConfigError("--tasks: no task given; expected NAME=FILE[,NAME=FILE...]")
    return tasks


def validate_settings(d: DownstreamEvalConfig) -> None:
    """The `trainer.downstream_eval` values (config.validate calls this; files are checked later)."""
    for name, path in d.tasks.items():
        try:
            task_format(name)
        except ConfigError as exc:
            raise ConfigError(f"trainer.downstream_eval.tasks: {exc}") from None
        if not str(path).strip():
            raise ConfigError(f"trainer.downstream_eval.tasks.{name}: expected a file path, got an empty one")
    if d.enabled and not d.tasks:
        raise ConfigError(
            "trainer.downstream_eval.enabled: needs at least one task, e.g. "
            "trainer.downstream_eval.tasks.mmlu_pro=PATH (a local MMLU-Pro file)"
        )
    if d.limit is not None and d.limit < 1:
        raise ConfigError(f"trainer.downstream_eval.limit: must be null (all rows) or >= 1, got {d.limit}")
    if d.batch_size < 1:
        raise ConfigError(f"trainer.downstream_eval.batch_size: must be at least 1, got {d.batch_size}")
    if d.num_fewshot < 0:
        raise ConfigError(f"trainer.downstream_eval.num_fewshot: must be >= 0, got {d.num_fewshot}")


# ---------------------------------------------------------------------------------------------- rows
def _bad(path: str | Path, row: int, key: str, expected: str, got: Any) -> DownstreamDataError:
    shown = repr(got) if not isinstance(got, str) or len(got) < 80 else repr(got[:77] + "...")
    return DownstreamDataError(f"{path}: row {row}: key {key!r}: expected {expected}, got {shown}")


def _text(path: str | Path, row: int, rec: dict[str, Any], key: str) -> str:
    if key not in rec:
        has = ", ".join(sorted(map(str, rec))) or "nothing"
        raise DownstreamDataError(f"{path}: row {row}: key {key!r}: missing (row has: {has})")
    value = rec[key]
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, row, key, "a non-empty string", value)
    return value


def mmlu_pro_question(path: str | Path, row: int, rec: dict[str, Any]) -> tuple[Question, int]:
    """An MMLU-Pro row {question, options, answer, answer_index, category} and the number of "N/A"
    padding options dropped from it (as MMLU-Pro's own evaluation code drops them)."""
    question = _text(path, row, rec, "question")
    category = _text(path, row, rec, "category")
    options = rec.get("options")
    if (
        not isinstance(options, list)
        or not all(isinstance(o, str) and o.strip() for o in options)
        or not 2 <= len(options) <= len(LETTERS)
    ):
        raise _bad(path, row, "options", f"a list of 2 to {len(LETTERS)} non-empty strings", options)
    index = rec.get("answer_index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
        raise _bad(path, row, "answer_index", f"an integer in [0, {len(options) - 1}]", index)
    if rec.get("answer") != LETTERS[index]:
        raise _bad(
            path, row, "answer", f"{LETTERS[index]!r}, the letter of answer_index={index}", rec.get("answer")
        )
    if options[index] == MMLU_PRO_PADDING:
        raise _bad(path, row, "options", f"a real option at answer_index={index}", options[index])
    kept = [o for o in options if o != MMLU_PRO_PADDING]
    if len(kept) < 2:
        raise _bad(path, row, "options", f"at least 2 options besides {MMLU_PRO_PADDING!r} padding", options)
    gold = index - options[:index].count(MMLU_PRO_PADDING)
    return Question(question, tuple(kept), gold, category), len(options) - len(kept)


def gpqa_option_order(seed: int, question: str) -> list[int]:
    """The shown order of [correct, wrong 1, wrong 2, wrong 3] (indices), from the seed and the text."""
    digest = hashlib.blake2b(f"{seed}\x00{question}".encode(), digest_size=8).digest()
    order = [0, 1, 2, 3]
    random.Random(int.from_bytes(digest, "big")).shuffle(order)
    return order


def gpqa_question(path: str | Path, row: int, rec: dict[str, Any], seed: int) -> Question:
    """A GPQA row (its CSV's columns Question, Correct Answer, Incorrect Answer 1-3), options shuffled.
    Surrounding whitespace (the CSV's answers often end in a newline) is stripped."""
    question = _text(path, row, rec, "Question").strip()
    answers = [_text(path, row, rec, key).strip() for key in ("Correct Answer", *GPQA_WRONG_KEYS)]
    order = gpqa_option_order(seed, question)
    category = rec.get("Subdomain") if isinstance(rec.get("Subdomain"), str) else ""
    return Question(question, tuple(answers[i] for i in order), order.index(0), category)


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    """CSV records as (row, dict); row N is the Nth record after the header (a record may span lines)."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        return list(enumerate(csv.DictReader(f), start=1))


def _read_rows(path: Path, fmt: str) -> list[tuple[int, dict]]:
    from rrm_ray.data.io import DataFormatError, read_records

    if not path.is_file():
        raise DownstreamDataError(f"{path}: no such file ({'a folder' if path.exists() else 'missing'})")
    if path.name.lower().endswith(".csv"):
        if fmt != "gpqa":
            raise DownstreamDataError(
                f"{path}: a CSV file; the {fmt} format is read from .jsonl, .json or .parquet"
            )
        return _read_csv(path)
    try:
        return read_records(path)
    except DataFormatError as exc:
        raise DownstreamDataError(str(exc)) from None


def read_task(name: str, path: str | Path, limit: int | None = None, gpqa_option_seed: int = 0) -> TaskData:
    """Read and check every row of a task file (so a bad row anywhere fails now); keep the first `limit`."""
    fmt = task_format(name)
    rows = _read_rows(Path(path), fmt)
    if not rows:
        raise DownstreamDataError(f"{path}: no rows (task {name}, format {fmt})")
    questions: list[Question] = []
    dropped = 0
    for row, rec in rows:
        if fmt == "mmlu_pro":
            q, n = mmlu_pro_question(path, row, rec)
            dropped += n
        else:
            q = gpqa_question(path, row, rec, gpqa_option_seed)
        questions.append(q)
    return TaskData(name, fmt, str(path), questions[:limit], len(rows), dropped)


def read_tasks(d: DownstreamEvalConfig) -> dict[str, TaskData]:
    """Every configured task file read and checked (`rrm-ray train` calls this before Ray starts)."""
    out = {}
    for name, path in d.tasks.items():
        try:
            out[name] = read_task(name, path, d.limit, d.gpqa_option_seed)
        except DownstreamDataError as exc:
            raise DownstreamDataError(f"trainer.downstream_eval.tasks.{name}: {exc}") from None
    return out


# ---------------------------------------------------------------------------------------------- lm-eval
def lm_eval_task_name(name: str) -> str:
    return LM_EVAL_TASK_PREFIX + name


def normalised_row(q: Question, fmt: str) -> dict[str, Any]:
    """The JSONL row lm-eval reads: `labels` are the choices it scores, `gold` indexes them."""
    labels = [f"({c})" if fmt == "gpqa" else c for c in LETTERS[: len(q.options)]]
    return {
        "question": q.question,
        "options": list(q.options),
        "labels": labels,
        "gold": q.gold,
        "category": q.category,
    }


def task_config(
    task: TaskData, data_file: str | Path, cache_dir: str | Path, num_fewshot: int = 0
) -> dict[str, Any]:
    """lm-eval's YAML task config over a local normalised JSONL file (its only split is `test`, so
    few-shot examples come from it too; lm-eval never shows a question as its own example)."""
    return {
        "task": lm_eval_task_name(task.name),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPTS[task.format],
        "doc_to_choice": "labels",
        "doc_to_target": "gold",
        "num_fewshot": num_fewshot,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "format": task.format, "source": str(Path(task.path).resolve())},
    }


def write_task_dir(tasks: dict[str, TaskData], out_dir: str | Path, num_fewshot: int = 0) -> Path:
    """`out_dir/<name>.jsonl` (normalised rows) and `out_dir/<name>.yaml` (its lm-eval task) per task."""
    import yaml

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks.values():
        data_file = out / f"{task.name}.jsonl"
        with data_file.open("w", encoding="utf-8") as f:
            for q in task.questions:
                f.write(json.dumps(normalised_row(q, task.format), ensure_ascii=False) + "\n")
        config = task_config(task, data_file, out / "hf_datasets_cache", num_fewshot)
        (out / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return out


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a stderr it cannot compute (a single row)."""
    return float(value) if isinstance(value, int | float) else None


def evaluate_tasks(
    tasks: dict[str, TaskData],
    model_path: str,
    device: str,
    dtype: str,
    batch_size: int,
    num_fewshot: int = 0,
) -> dict[str, dict[str, float | None]]:
    """lm-eval over `tasks` with its HF backend on a local model: {task: {acc, acc_stderr, acc_norm,
    acc_norm_stderr, n}}. Sets the hub-offline variables first (read by the libraries at import)."""
    os.environ.update(OFFLINE_ENV)
    import lm_eval
    from lm_eval.tasks import TaskManager

    # An absolute path is no valid hub repo id, so lm-eval's model-info lookup cannot become a request.
    model_path = str(Path(model_path).resolve())
    with tempfile.TemporaryDirectory(prefix="rrm-downstream-") as tmp:
        task_dir = write_task_dir(tasks, tmp, num_fewshot)
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": model_path, "dtype": dtype},
            tasks=[lm_eval_task_name(name) for name in tasks],
            batch_size=batch_size,
            device=device,
            task_manager=manager,
            log_samples=False,
        )
    results: dict[str, dict[str, float | None]] = {}
    for name in tasks:
        scores = out["results"][lm_eval_task_name(name)]
        results[name] = {
            "acc": _number(scores["acc,none"]),
            "acc_stderr": _number(scores.get("acc_stderr,none")),
            "acc_norm": _number(scores["acc_norm,none"]),
            "acc_norm_stderr": _number(scores.get("acc_norm_stderr,none")),
            "n": float(out["n-samples"][lm_eval_task_name(name)]["effective"]),
        }
    return results


def run_downstream_eval(
    d: DownstreamEvalConfig, model_path: str, device: str, dtype: str
) -> dict[str, dict[str, float | None]]:
    """Read and check the files of `d.tasks`, then evaluate `model_path` ("smollm2" or an HF folder)."""
    from rrm_ray.models import resolve_model_path

    tasks = read_tasks(d)
    return evaluate_tasks(tasks, resolve_model_path(model_path), device, dtype, d.batch_size, d.num_fewshot)


def metric_names(results: dict[str, dict[str, float | None]], when: str | None = None) -> dict[str, float]:
    """`downstream/<task>/<metric>`, and with `when` also `downstream_<when>/<task>/<metric>` (the
    first series has a point before and after training; the second names each for comparing runs)."""
    prefixes = ["downstream", *([f"downstream_{when}"] if when else [])]
    return {
        f"{prefix}/{task}/{key}": value
        for task, scores in results.items()
        for key, value in scores.items()
        if value is not None
        for prefix in prefixes
    }


def format_table(results: dict[str, dict[str, float | None]]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'task':<20}{'n':>7}{'acc':>8}{'stderr':>9}{'acc_norm':>10}{'stderr':>9}"]
    for task, s in results.items():
        lines.append(
            f"{task:<20}{int(s['n'] or 0):>7}{cell(s['acc']):>8}{cell(s['acc_stderr']):>9}"
            f"{cell(s['acc_norm']):>10}{cell(s['acc_norm_stderr']):>9}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- train hook
def downstream_metrics(cfg: JobConfig, model_path: str, when: str) -> dict[str, float]:
    """`rrm-ray train`'s hook: the policy at `model_path` evaluated on `trainer.downstream_eval.tasks`,
    as metric names (`metric_names`); {} when `trainer.downstream_eval.enabled` is false.

    Connected to Ray (the training job), it runs in a Ray task that asks 1 GPU on cuda (1 CPU on cpu)
    outside the job's placement groups, in a worker that exits afterwards: the driver never holds a
    model, no GPU of the learner or the engines is shared, and the memory is returned. The task needs
    that resource free (config.validate checks a declared cluster; here the live one) and
    `model_path` readable on its node (a shared checkpoint.dir for the final policy on a multi-node
    cluster). Without Ray it runs in this process.
    """
    if when not in WHEN:
        raise ValueError(f"when must be one of {', '.join(WHEN)}, got {when!r}")
    d = cfg.trainer.downstream_eval
    if not d.enabled:
        return {}
    from rrm_ray.config import resolved_dtype

    device, dtype = cfg.cluster.device, resolved_dtype(cfg)
    import ray

    if not ray.is_initialized():
        return metric_names(run_downstream_eval(d, model_path, device, dtype), when)
    resource = "GPU" if device == "cuda" else "CPU"
    free = ray.available_resources().get(resource, 0.0)
    if free < 1:
        raise RuntimeError(
            f"trainer.downstream_eval: the evaluation runs in a Ray task that needs 1 {resource} outside the "
            f"job's placement groups, and the cluster has {free:g} free; leave one free, or set "
            "trainer.downstream_eval.enabled=false and run `rrm-ray downstream-eval --model DIR` afterwards"
        )
    # Absolute paths, as this process sees them: a Ray worker does not start in the driver's directory.
    d = dataclasses.replace(d, tasks={name: str(Path(p).resolve()) for name, p in d.tasks.items()})
    if model_path != SMOLLM2_ALIAS:
        model_path = str(Path(model_path).resolve())
    remote = ray.remote(
        num_cpus=1,
        num_gpus=1 if device == "cuda" else 0,
        max_calls=1,  # the worker exits after the task: the model's memory goes with it
        runtime_env={"env_vars": OFFLINE_ENV},
    )(run_downstream_eval)
    ref = remote.remote(d, model_path, device, dtype)
    try:
        results = ray.get(ref, timeout=cfg.cluster.call_timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise
    return metric_names(results, when)


# ---------------------------------------------------------------------------------------------- command
def _tracker(cfg: JobConfig, model_path: str):
    from rrm_ray.tracking import MLflowTracker, NullTracker, default_run_name

    t = cfg.tracking
    if not t.enabled:
        return NullTracker()
    return MLflowTracker(
        t.uri,
        t.experiment,
        t.run_name or default_run_name("downstream", model_path),
        system_metrics_interval_s=t.system_metrics_interval_s if t.system_metrics else None,
    )


def _command(args: argparse.Namespace) -> int:
    from rrm_ray.cli import with_verbose
    from rrm_ray.config import load_config, resolved_dtype, to_flat_dict

    cfg = load_config(args.config, with_verbose(args))
    d = cfg.trainer.downstream_eval
    tasks = parse_task_list(args.tasks) if args.tasks else dict(d.tasks)
    if not tasks:
        raise ConfigError("no tasks: give --tasks NAME=FILE[,...] or set trainer.downstream_eval.tasks")
    d = dataclasses.replace(d, tasks=tasks, limit=args.limit if args.limit is not None else d.limit)
    validate_settings(d)
    if not args.verbose:
        import logging

        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    read = read_tasks(d)  # every row checked before the model loads
    for task in read.values():
        dropped = f"; {task.padding_dropped} 'N/A' padding options dropped" if task.padding_dropped else ""
        rows = f"{len(task.questions)} of {task.rows_in_file} rows"
        print(f"{task.name}: {rows} of {task.path} ({task.format}{dropped})")
    from rrm_ray.models import resolve_model_path

    model = args.model or cfg.model.path
    try:
        model_dir = resolve_model_path(model)
    except FileNotFoundError as exc:
        print(f"error: --model: {exc}", file=sys.stderr)
        return 2
    tracker = _tracker(cfg, model_dir)
    if tracker.run_id:
        print(f"MLflow run {tracker.run_id} at {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
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
        print(f"\n{format_table(results)}")
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
    from rrm_ray.cli import add_run_options

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
