"""Prompt datasets: read rows of (prompt, reference answer) and render them for generation.

Accepted files, chosen by suffix:

- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line (blank lines are skipped);
- ``.json`` / ``.json.gz``: one JSON list of objects;
- ``.parquet``: a table, read with pyarrow.

A prompt is either a string (the user's message) or a chat, a non-empty list of
``{"role": str, "content": str}``. An answer is a string; a number is accepted and turned into its
string (``42`` -> ``"42"``), because numeric answers are common in math sets and rules compare text.
Every other field of a row is kept in `PromptRow.extra` (for logging and custom rules).

Every problem is reported with the file, the row (the 1-based line for JSONL, the 1-based position
otherwise), the field and what was expected, as a `PromptDataError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rrm_ray.data.io import DataFormatError, decode_line, iter_lines, loads, read_text

Message = dict[str, str]
Prompt = str | list[Message]


class PromptDataError(ValueError):
    """A prompt file that cannot be read, or a row in it that is malformed."""


@dataclass
class PromptRow:
    """One prompt: its text or chat, the reference answer (None when unknown) and where it came from."""

    prompt: Prompt
    answer: str | None
    row: int  # 1-based line (JSONL) or position (JSON list, Parquet) in the source file
    extra: dict[str, Any] = field(default_factory=dict)


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _read_records(path: Path, bad_rows: list[str] | None = None) -> list[tuple[int, object]]:
    """(row number, decoded record) pairs from a JSONL, JSON or Parquet file. A JSONL line that cannot be
    read (invalid JSON or UTF-8, nested too deeply) raises naming file and line, or is collected in
    `bad_rows` when given; damaged gzip data or an unreadable file always raises."""
    name = path.name.lower()
    base = name.removesuffix(".gz")
    try:
        if base.endswith(".jsonl"):
            records = []
            for lineno, raw in iter_lines(path):
                try:
                    line = decode_line(path, lineno, raw)
                    if not line.strip():
                        continue
                    try:
                        records.append((lineno, loads(path, line, lineno)))
                    except json.JSONDecodeError as e:
                        raise PromptDataError(
                            f"{path}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})"
                        ) from None
                except (PromptDataError, DataFormatError) as e:
                    if bad_rows is None:
                        raise
                    bad_rows.append(str(e))
            return records
        if base.endswith(".json"):
            text = read_text(path)
            if not text.strip():
                return []
            try:
                data = loads(path, text)
            except json.JSONDecodeError as e:
                raise PromptDataError(
                    f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
                ) from None
            if not isinstance(data, list):
                raise PromptDataError(f"{path}: expected a JSON list of objects, got a {_describe(data)}")
            return list(enumerate(data, start=1))
        if name.endswith(".parquet"):
            try:
                table = pq.read_table(path)
            except Exception as e:  # pyarrow raises its own error types for corrupt files
                raise PromptDataError(f"{path}: not a readable Parquet file ({e})") from e
            return list(enumerate(table.to_pylist(), start=1))
    except DataFormatError as e:
        raise PromptDataError(str(e)) from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise PromptDataError(f"{path}: file not found") from None
        raise PromptDataError(f"{path}: cannot read ({e})") from e
    raise PromptDataError(
        f"{path}: unsupported file type; expected .jsonl, .jsonl.gz, .json, .json.gz or .parquet"
    )


def _check_prompt(value: object, where: str) -> Prompt:
    expected = "a non-empty string or a non-empty list of {role, content} messages"
    if isinstance(value, str):
        if not value.strip():
            raise PromptDataError(f"{where}: expected {expected}, got an empty string")
        return value
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else f"a {_describe(value)}"
        raise PromptDataError(f"{where}: expected {expected}, got {got}")
    for i, msg in enumerate(value, start=1):
        if not isinstance(msg, dict):
            raise PromptDataError(f"{where}: message {i}: expected an object, got a {_describe(msg)}")
        for key in ("role", "content"):
            if not isinstance(msg.get(key), str):
                raise PromptDataError(
                    f"{where}: message {i}: expected a string '{key}', got {_describe(msg.get(key))}"
                )
    return value


def _check_answer(value: object, where: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise PromptDataError(f"{where}: missing (require_answer=True needs a string or number)")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise PromptDataError(f"{where}: expected a string or a number, got a {_describe(value)}")


def load_prompts(
    path: str | Path,
    prompt_field: str = "prompt",
    answer_field: str | None = "answer",
    require_answer: bool = False,
    skipped: list[str] | None = None,
) -> list[PromptRow]:
    """Read a prompt file into `PromptRow` s, checking every row.

    ``answer_field=None`` reads no answers (all None). Otherwise a row without the field (or with
    null) gets ``answer=None``, unless ``require_answer`` is set, when it is an error: training with
    rule rewards needs every reference, and finding that out mid-run is expensive.

    A row that cannot be used raises a `PromptDataError` naming file, row and field; with ``skipped``
    (a list: ``data.on_error=skip``) it is left out and its message appended there instead.
    """
    path = Path(path)
    if require_answer and answer_field is None:
        raise PromptDataError(f"{path}: require_answer=True needs an answer_field")
    records = _read_records(path, skipped)
    if not records:
        raise PromptDataError(f"{path}: no rows (the file is empty)")
    rows: list[PromptRow] = []
    for row, record in records:
        try:
            rows.append(_prompt_row(path, row, record, prompt_field, answer_field, require_answer))
        except PromptDataError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
    if not rows:
        first = (skipped or ["?"])[0]
        raise PromptDataError(f"{path}: no usable rows ({len(skipped or [])} skipped; the first: {first})")
    return rows


def _prompt_row(
    path: Path, row: int, record: object, prompt_field: str, answer_field: str | None, require_answer: bool
) -> PromptRow:
    if not isinstance(record, dict):
        raise PromptDataError(f"{path}: row {row}: expected a JSON object, got a {_describe(record)}")
    if prompt_field not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise PromptDataError(f"{path}: row {row}: missing field '{prompt_field}' (fields: {fields})")
    prompt = _check_prompt(record[prompt_field], f"{path}: row {row}: field '{prompt_field}'")
    answer = None
    if answer_field is not None:
        where = f"{path}: row {row}: field '{answer_field}'"
        answer = _check_answer(record.get(answer_field), where, require_answer)
    extra = {k: v for k, v in record.items() if k not in (prompt_field, answer_field)}
    return PromptRow(prompt=prompt, answer=answer, row=row, extra=extra)


def _messages(prompt: Prompt, system_prompt: str | None) -> list[Message]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    # A chat that brings its own system message keeps it: it is more specific than the run-wide one.
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(
    tokenizer: Any, row_prompt: Prompt, system_prompt: str | None = None, use_chat_template: bool = True
) -> str:
    """The text to generate from: the chat template applied, ready for the assistant's turn.

    A string prompt becomes one user message (after ``system_prompt`` if given). With
    ``use_chat_template=False``, or a tokenizer that has no chat template (a base model), the plain
    contents are joined by blank lines instead: system prompt first, then each message's content.
    """
    messages = _messages(row_prompt, system_prompt)
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
