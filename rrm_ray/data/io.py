"""Read record files (JSON, JSONL, Parquet) into ``(row, dict)`` pairs.

Every reader in the project goes through :func:`read_records` so that a bad file always fails the
same way: a :class:`DataFormatError` naming the file, the row and, where known, the field. Row
numbers are 1-based and mean what a user can look up: the line number for JSONL (blank lines are
skipped but still counted), the position in the list for JSON, the table row for Parquet.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
_JSON_SUFFIXES = (".json", ".json.gz")
_PARQUET_SUFFIXES = (".parquet",)


class DataFormatError(ValueError):
    """A data file, or one of its rows, is not in the expected shape.

    The message reads ``<file>: row <n>: field '<name>': <what was expected>``; ``file``, ``row``
    and ``field`` are kept as attributes so callers can count or report failures.
    """

    def __init__(self, file: str | Path, message: str, row: int | None = None, field: str | None = None):
        where = str(file)
        if row is not None:
            where += f": row {row}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.file = str(file)
        self.row = row
        self.field = field


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    out: list[tuple[int, dict]] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON on line {lineno}: {e.msg}", row=lineno) from e
            out.append((lineno, rec))
    return out


def _read_json(path: Path) -> list[tuple[int, dict]]:
    with _open_text(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        # Many files named .json are really JSON Lines (one object per line): "Extra data" after the
        # first complete value is the tell-tale; read those line by line instead of failing.
        if e.msg == "Extra data":
            return _read_jsonl(path)
        raise DataFormatError(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if isinstance(doc, dict) and "data" in doc:
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataFormatError(
            path, f'expected a JSON list of records or {{"data": [...]}}, got {type(doc).__name__}'
        )
    return list(enumerate(doc, start=1))


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq  # imported lazily: only Parquet users pay for it

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataFormatError(path, f"cannot read Parquet: {e}") from e
    return list(enumerate(table.to_pylist(), start=1))


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """Read every record of a JSON, JSONL (optionally gzipped) or Parquet file.

    Returns ``(row, record)`` pairs with 1-based rows. The format is chosen by suffix: ``.jsonl``,
    ``.jsonl.gz``, ``.ndjson`` -> JSON Lines; ``.json``, ``.json.gz`` -> a JSON list or
    ``{"data": [...]}`` (a ``.json`` file holding JSON Lines is read as such); ``.parquet``.
    Every record must be a JSON object (dict).
    """
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(p, "no such file")
    name = p.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        rows = _read_jsonl(p)
    elif name.endswith(_JSON_SUFFIXES):
        rows = _read_json(p)
    elif name.endswith(_PARQUET_SUFFIXES):
        rows = _read_parquet(p)
    else:
        raise DataFormatError(
            p, "unknown file type; expected .json, .json.gz, .jsonl, .jsonl.gz, .ndjson or .parquet"
        )
    for row, rec in rows:
        if not isinstance(rec, dict):
            raise DataFormatError(p, f"expected a JSON object, got {type(rec).__name__}", row=row)
    return rows


def require_str(
    file: str | Path, row: int, rec: dict[str, Any], field: str, allow_empty: bool = False
) -> str:
    """``rec[field]`` as a string, or a :class:`DataFormatError` saying what is wrong with it."""
    if field not in rec:
        raise DataFormatError(file, f"missing (row has: {', '.join(sorted(rec)) or 'nothing'})", row, field)
    value = rec[field]
    if not isinstance(value, str):
        raise DataFormatError(file, f"expected a string, got {type(value).__name__}", row, field)
    if not allow_empty and not value.strip():
        raise DataFormatError(file, "expected a non-empty string, got an empty one", row, field)
    return value
