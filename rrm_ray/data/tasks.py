"""Turn the data section of a job config into train and held-out prompt rows.

Two kinds of job read data here:
- policy training: prompts (+ reference answers) from JSONL/Parquet, or the generated arithmetic task;
- judge training (the policy IS the judge): preference pairs become judge prompts, rendered with the
  judge template (the chosen response placed first or second by a seeded coin) and the label "1"/"2"
  as the answer. Held-out pairs are shown in both orders, so held-out accuracy is position-swapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrm_ray.config import JobConfig
from rrm_ray.data.prompts import PromptRow, load_prompts

RENDERED = "rendered"  # PromptRow.extra flag: the prompt is final text, no chat template to apply


def load_task_rows(cfg: JobConfig, tokenizer: Any) -> tuple[list[PromptRow], list[PromptRow], dict[str, int]]:
    """(train rows, held-out rows, counts to report such as skipped rows)."""
    d = cfg.data
    if d.format == "preference":
        return _preference_rows(cfg, tokenizer)
    if d.generate_arithmetic and not Path(d.train_path).is_file():
        _write_arithmetic(cfg)
    train = load_prompts(d.train_path, d.prompt_field, d.answer_field)
    held = load_prompts(d.eval_path, d.prompt_field, d.answer_field) if d.eval_path else []
    return train, held[: d.eval_max_prompts], {}


def _write_arithmetic(cfg: JobConfig) -> None:
    from rrm_ray.data.arithmetic import make_split, write_jsonl

    d = cfg.data
    # Every distinct a + b with operands up to the bound; a quarter (at most eval_max_prompts) held out.
    distinct = d.arithmetic_max_operand * (d.arithmetic_max_operand + 1) // 2
    n_eval = min(d.eval_max_prompts, distinct // 4)
    train, held_out = make_split(distinct - n_eval, n_eval, seed=0, max_operand=d.arithmetic_max_operand)
    write_jsonl(train, d.train_path)
    if d.eval_path:
        write_jsonl(held_out, d.eval_path)


def _preference_rows(
    cfg: JobConfig, tokenizer: Any
) -> tuple[list[PromptRow], list[PromptRow], dict[str, int]]:
    from rrm_ray.data.preference import load_preference_pairs, to_judge_examples

    d = cfg.data
    if d.synthetic_pairs and not Path(d.train_path).is_file():
        from rrm_ray.data.synthetic_pairs import make_synthetic_pairs, write_jsonl

        pairs = make_synthetic_pairs(
            d.synthetic_pairs + d.synthetic_pairs // 4,
            seed=cfg.trainer.seed,
            difficulty=d.synthetic_difficulty,
        )
        write_jsonl(pairs[: d.synthetic_pairs], d.train_path)
        if d.eval_path:
            write_jsonl(pairs[d.synthetic_pairs :], d.eval_path)
    counts: dict[str, int] = {}

    def rows(path: str, both_orders: bool, limit: int | None) -> list[PromptRow]:
        pairs, skipped = load_preference_pairs(path, format=d.preference_format, on_error=d.on_error)  # type: ignore[arg-type]
        counts[f"skipped_rows/{Path(path).name}"] = skipped
        out = []
        for ex in to_judge_examples(pairs[:limit], seed=cfg.trainer.seed):
            orders = [(ex.response_1, ex.response_2, ex.label)]
            if both_orders:
                orders.append((ex.response_2, ex.response_1, 3 - ex.label))
            for first, second, label in orders:
                text = judge_prompt_text(
                    cfg, tokenizer, ex.query, first, second, where=f"{path} row {ex.pair_row}"
                )
                out.append(PromptRow(text, str(label), ex.pair_row, {RENDERED: True, "source": ex.source}))
        return out

    train = rows(d.train_path, both_orders=False, limit=None)
    held = rows(d.eval_path, both_orders=True, limit=d.eval_max_prompts) if d.eval_path else []
    return train, held, counts


def judge_prompt_text(
    cfg: JobConfig, tokenizer: Any, query: str, first: str, second: str, where: str = ""
) -> str:
    """The judge prompt for one presentation, fitted to `judge.max_prompt_tokens` per `judge.over_length`."""
    from rrm_ray.judge.prompts import fit_pair_to_context

    j = cfg.judge
    fitted = fit_pair_to_context(
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
    return fitted.text
