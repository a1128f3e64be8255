"""Turn the data section of a job config into train and held-out prompt rows.

Two kinds of job read data here:
- policy training: prompts (+ reference answers) from JSONL/Parquet, or the generated arithmetic task;
- judge training (the policy IS the judge): preference pairs become judge prompts, rendered with the
  judge template (the chosen response placed first or second by a seeded coin) and the label "1"/"2"
  as the answer. Held-out pairs are shown in both orders, so held-out accuracy is position-swapped.
  A pair whose prompt exceeds `judge.max_prompt_tokens` fails the job naming its row, is dropped (both
  orders) or is cut, by `judge.over_length`; dropped and cut pairs are counted and printed.

Generated data (the arithmetic task, synthetic pairs) is written only inside ``data.generate_dir``;
a data path that does not exist anywhere else is an error (:func:`ensure_data_files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrm_ray.config import ConfigError, JobConfig
from rrm_ray.data.arithmetic import make_split
from rrm_ray.data.io import write_jsonl
from rrm_ray.data.preference import load_preference_pairs, to_judge_examples
from rrm_ray.data.prompts import PromptRow, load_prompts, render_prompt
from rrm_ray.data.synthetic_pairs import make_synthetic_pairs, pair_records
from rrm_ray.judge.prompts import JudgePrompt, PromptTooLongError, fit_pair_to_context

RENDERED = "rendered"  # PromptRow.extra flag: the prompt is final text, no chat template to apply


class DataPathError(ConfigError):
    """A data path in the config names no file, and it is not one the config says to generate."""


def load_task_rows(cfg: JobConfig, tokenizer: Any) -> tuple[list[PromptRow], list[PromptRow], dict[str, int]]:
    """(train rows, held-out rows, counts to report such as skipped or generated rows). Rows that
    cannot be used, and prompts too long for the engine's context, follow ``data.on_error``: an error
    naming file and rows, or dropped and counted. All before any engine starts."""
    d = cfg.data
    generated = ensure_data_files(cfg)
    counts: dict[str, int] = {}
    if d.format == "preference":
        train, held, counts = _preference_rows(cfg, tokenizer)
        units = (2 if d.order_balanced else 1, 2)  # a pair's two presentation orders go together
    else:
        train = _prompt_rows(cfg, d.train_path, counts)
        held = _prompt_rows(cfg, d.eval_path, counts)[: d.eval_max_prompts] if d.eval_path else []
        units = (1, 1)
    train = fit_context(cfg, tokenizer, train, d.train_path, units[0], counts)
    if held and d.eval_path:
        held = fit_context(cfg, tokenizer, held, d.eval_path, units[1], counts)
    return train, held, {**generated, **counts}


def _prompt_rows(cfg: JobConfig, path: str, counts: dict[str, int]) -> list[PromptRow]:
    d = cfg.data
    skipped: list[str] | None = [] if d.on_error == "skip" else None
    rows = load_prompts(path, d.prompt_field, d.answer_field, skipped=skipped)
    if skipped:
        counts[f"skipped_rows/{Path(path).name}"] = len(skipped)
        print(f"data.on_error=skip: skipped {len(skipped)} unusable rows of {path}; the first: {skipped[0]}")
    return rows


def prompt_tokens(cfg: JobConfig, tokenizer: Any, row: PromptRow) -> int:
    """The prompt's length in tokens as the engine sees it: rendered (chat template, system prompt),
    then tokenized as vLLM tokenizes a text prompt."""
    m = cfg.model
    text = (
        row.prompt
        if row.extra.get(RENDERED)
        else render_prompt(tokenizer, row.prompt, m.system_prompt, m.use_chat_template)
    )
    assert isinstance(text, str)
    if len(text.encode("utf-8")) + 8 < m.max_model_len:  # a token covers at least a byte: surely fits
        return 0
    return len(tokenizer.encode(text))


def fit_context(
    cfg: JobConfig, tokenizer: Any, rows: list[PromptRow], path: str, unit: int, counts: dict[str, int]
) -> list[PromptRow]:
    """Rows whose prompts the engine can take: vLLM refuses a prompt of model.max_model_len tokens or
    more (no room for one token of output) and that fails the step mid-run. Too-long ones raise a
    ConfigError naming the file, how many and which rows, or with data.on_error=skip are dropped with
    the `unit` consecutive rows they belong to (a pair's two orders) and counted."""
    limit = cfg.model.max_model_len
    too_long = {i: n for i, row in enumerate(rows) if (n := prompt_tokens(cfg, tokenizer, row)) >= limit}
    if not too_long:
        return rows
    shown = ", ".join(str(rows[i].row) for i in sorted(too_long)[:10])
    shown += ", ..." if len(too_long) > 10 else ""
    what = (
        f"{path}: {len(too_long)} prompts have model.max_model_len={limit} tokens or more (the longest "
        f"{max(too_long.values())}), so the engine cannot generate from them: rows {shown}"
    )
    if cfg.data.on_error != "skip":
        raise ConfigError(f"{what}. Raise model.max_model_len, shorten them, or set data.on_error=skip")
    dropped_units = {i // unit for i in too_long}
    kept = [row for i, row in enumerate(rows) if i // unit not in dropped_units]
    counts[f"over_context_rows/{Path(path).name}"] = len(rows) - len(kept)
    print(f"data.on_error=skip: dropped {len(rows) - len(kept)} rows; {what}")
    if not kept:
        raise ConfigError(f"{what}: none is left")
    return kept


def _inside(path: str | Path, folder: str | Path) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return f in p.parents


def ensure_data_files(cfg: JobConfig) -> dict[str, int]:
    """Check that data.train_path / data.eval_path exist; generate the missing ones under data.generate_dir.

    The rule (see ``DataConfig.generate_dir``): generated data is written only inside
    ``data.generate_dir``. A missing path there is generated (all of the train/eval paths there are
    written together, so the held-out split stays disjoint from the training one); a missing path
    anywhere else raises :class:`DataPathError` naming the key and the path, before any file is
    written, because a typo in a data path must not quietly train on made-up data. Files that
    exist are read as they are. Returns ``{"generated_rows/<file name>": rows}`` for what it wrote.
    Pure file-system work: call it before starting Ray to fail fast.
    """
    d = cfg.data
    paths = check_data_paths(cfg)
    if all(Path(path).is_file() for path in paths.values()):
        return {}
    owned = {key: path for key, path in paths.items() if _inside(path, d.generate_dir)}  # type: ignore[arg-type]
    written = _write_arithmetic(cfg, owned) if d.format == "prompts" else _write_pairs(cfg, owned)
    for path, n in written.items():
        kind = "arithmetic problems" if d.format == "prompts" else "synthetic preference pairs"
        print(f"generated {n} {kind} -> {path} (data.generate_dir={d.generate_dir})")
    return {f"generated_rows/{Path(path).name}": n for path, n in written.items()}


def check_data_paths(cfg: JobConfig) -> dict[str, str]:
    """The configured data paths ({key: path}); raises `DataPathError` for a missing one that
    `ensure_data_files` would not generate. Writes nothing: the CLI calls it before anything starts."""
    d = cfg.data
    paths = {"data.train_path": d.train_path, **({"data.eval_path": d.eval_path} if d.eval_path else {})}
    for key, path in paths.items():
        if Path(path).exists() and not Path(path).is_file():
            raise DataPathError(f"{key}: {path} is a folder; expected a data file")
    missing = {key: path for key, path in paths.items() if not Path(path).is_file()}
    what = (
        "the arithmetic task"
        if d.format == "prompts"
        else "synthetic preference pairs (data.synthetic_pairs says how many)"
    )
    for key, path in missing.items():
        if d.generate_dir is None:
            raise DataPathError(
                f"{key}: {path} does not exist, and nothing is generated (data.generate_dir is not set). "
                f"Point {key} at an existing file, or set data.generate_dir={Path(path).parent} to "
                f"generate {what} there"
            )
        if not _inside(path, d.generate_dir):
            raise DataPathError(
                f"{key}: {path} does not exist. Generated data is written only under data.generate_dir="
                f"{d.generate_dir}, and this path is outside it: point {key} at an existing file, or set "
                f"data.generate_dir={Path(path).parent} to generate {what} there"
            )
        if d.format == "preference" and d.synthetic_pairs < 1:
            raise DataPathError(
                f"{key}: {path} does not exist; it is under data.generate_dir={d.generate_dir}, but "
                "data.synthetic_pairs is 0, so there is nothing to generate: set data.synthetic_pairs=N "
                "or point the path at an existing file"
            )
    return paths


def _write_arithmetic(cfg: JobConfig, owned: dict[str, str]) -> dict[str, int]:
    d = cfg.data
    # Every distinct a + b with operands up to the bound; a quarter (at most eval_max_prompts) held out.
    distinct = d.arithmetic_max_operand * (d.arithmetic_max_operand + 1) // 2
    n_eval = min(d.eval_max_prompts, distinct // 4)
    train, held_out = make_split(distinct - n_eval, n_eval, seed=0, max_operand=d.arithmetic_max_operand)
    rows = {"data.train_path": train, "data.eval_path": held_out}
    for key, path in owned.items():
        write_jsonl(rows[key], path)
    return {path: len(rows[key]) for key, path in owned.items()}


def _write_pairs(cfg: JobConfig, owned: dict[str, str]) -> dict[str, int]:
    d = cfg.data
    pairs = make_synthetic_pairs(
        d.synthetic_pairs + d.synthetic_pairs // 4, seed=cfg.trainer.seed, difficulty=d.synthetic_difficulty
    )
    rows = {
        "data.train_path": pair_records(pairs[: d.synthetic_pairs]),
        "data.eval_path": pair_records(pairs[d.synthetic_pairs :]),
    }
    out = {}
    for key, path in owned.items():
        write_jsonl(rows[key], path)
        out[path] = len(rows[key])
    return out


def _preference_rows(
    cfg: JobConfig, tokenizer: Any
) -> tuple[list[PromptRow], list[PromptRow], dict[str, int]]:

    d, j = cfg.data, cfg.judge
    counts: dict[str, int] = {}

    def rows(path: str, both_orders: bool, limit: int | None) -> list[PromptRow]:
        pairs, skipped = load_preference_pairs(path, format=d.preference_format, on_error=d.on_error)  # type: ignore[arg-type]
        counts[f"skipped_rows/{Path(path).name}"] = skipped
        out, over = [], 0
        for ex in to_judge_examples(pairs[:limit], seed=cfg.trainer.seed):
            orders = [(ex.response_1, ex.response_2, ex.label)]
            if both_orders:
                orders.append((ex.response_2, ex.response_1, 3 - ex.label))
            where = f"{path} row {ex.pair_row}: "
            try:
                shown = [(judge_prompt(cfg, tokenizer, ex.query, a, b, where), lab) for a, b, lab in orders]
            except PromptTooLongError:
                if j.over_length == "error":
                    raise
                over += 1  # skip: the pair is dropped in both orders, so its groups stay balanced
                continue
            over += any(prompt.truncated for prompt, _ in shown)
            for prompt, label in shown:
                extra = {RENDERED: True, "source": ex.source}
                out.append(PromptRow(prompt.text, str(label), ex.pair_row, extra))
        if over:
            what = "dropped" if j.over_length == "skip" else "cut (the documented truncation)"
            print(
                f"{path}: {over} pairs over judge.max_prompt_tokens={j.max_prompt_tokens}, {what} "
                f"(judge.over_length={j.over_length})"
            )
        counts[f"over_length_pairs/{Path(path).name}"] = over
        return out

    # Order-balanced groups: each training pair is two consecutive rows, one per order (PromptStream
    # keeps them together and the driver gives each half the group).
    train = rows(d.train_path, both_orders=d.order_balanced, limit=None)
    held = rows(d.eval_path, both_orders=True, limit=d.eval_max_prompts) if d.eval_path else []
    return train, held, counts


def judge_prompt(
    cfg: JobConfig, tokenizer: Any, query: str, first: str, second: str, where: str = ""
) -> JudgePrompt:
    """The judge prompt for one presentation, fitted to `judge.max_prompt_tokens` per `judge.over_length`
    (`PromptTooLongError` when it does not fit and is not to be cut)."""
    j = cfg.judge
    return fit_pair_to_context(
        tokenizer,
        query,
        first,
        second,
        j.max_prompt_tokens,
        mode=j.mode,
        policy=j.over_length,
        where=where,
        style=j.prompt_style,
    )
