"""Downstream accuracy, the data half: local MMLU-Pro / GPQA files read, checked and described to
lm-eval (EleutherAI lm-evaluation-harness) as multiple-choice tasks, and its results named as metrics.

The RRM paper reports its post-trained policies on MMLU-Pro and GPQA; no hub is reachable where
rrm-ray runs, so the user brings the files and nothing is downloaded. Each file is read and checked
here, row by row, before lm-eval starts (a bad row fails naming file, row, key and what was
expected), written out in one normalised JSONL shape, and described to lm-eval as a task over that
local file (`dataset_path: json`) in a generated YAML folder that lm-eval's `TaskManager` indexes
(`include_path`, without its built-in tasks). `actors.downstream` runs lm-eval's HF backend on them
(`rrm-ray downstream-eval`, or a Ray task of `rrm-ray train`: `rrm_ray.clients.downstream`).

Prompts show the lettered options and score the letters, as lm-eval's MMLU and GPQA tasks do:
MMLU-Pro "A. option" lines then "Answer:" (choices " A", " B", ...), GPQA "(A) option" lines then
"Answer:" (choices " (A)", ...). GPQA rows name the correct answer and three incorrect ones, so their
order is shuffled per row, from `gpqa_option_seed` and the question's text alone (the same file gives
the same order whatever its row order or `limit`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rrm_ray.config import ConfigError, DownstreamEvalConfig
from rrm_ray.data.io import DataFormatError, read_records
from rrm_ray.tables import aligned_table

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
    """The `trainer.downstream_eval` values (rrm_ray.validation calls this; files are checked later)."""
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


def results_table(results: dict[str, dict[str, float | None]]) -> str:
    """Per task: n, acc and acc_norm with their standard errors ("-": lm-eval could not compute one)."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    body = [
        [
            task,
            str(int(s["n"] or 0)),
            *(cell(s[k]) for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")),
        ]
        for task, s in results.items()
    ]
    return "\n".join(
        aligned_table(["task", "n", "acc", "stderr", "acc_norm", "stderr"], body, label_first=True)
    )
