"""Read record files (JSON, JSONL, Parquet) into ``(row, dict)`` pairs.

Every reader in the project goes through :func:`read_records` (or :func:`read_dataset`, which also
takes a folder of Parquet shards) so that a bad file always fails the same way: a
:class:`DataFormatError` naming the file, the row and, where known, the field. Row numbers are
1-based and mean what a user can look up: the line number for JSONL (blank lines are skipped but
still counted), the position in the list for JSON, the table row for Parquet (per shard).

Published evaluation sets are read as published: :func:`coerce_text` accepts what such files really
hold where text is expected (empty strings, JSON booleans and numbers, nulls, pandas' NaN) and
counts every value it had to turn into text, so the caller can report it instead of hiding it.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

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


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """A (gzipped) text file's raw lines with 1-based numbers, decoded by the caller line by line, so
    a bad byte is reported with its line. Damaged gzip data raises a DataFormatError naming the line
    it broke after."""
    path = Path(path)
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                yield lineno, raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataFormatError(path, f"cannot read: damaged gzip data after line {lineno} ({e})") from e


def decode_line(path: str | Path, lineno: int, raw: bytes) -> str:
    """One line as UTF-8 text, or a DataFormatError naming the line and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start : e.start + 1]
        raise DataFormatError(
            path, f"not valid UTF-8 (byte {bad!r} at position {e.start + 1} of line {lineno})", row=lineno
        ) from None


def read_text(path: str | Path) -> str:
    """A whole (gzipped) UTF-8 file; a bad byte or damaged gzip data is a DataFormatError naming the line."""
    chunks = [raw for _, raw in iter_lines(path)]
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data[: e.start].count(b"\n") + 1
        raise DataFormatError(
            path, f"not valid UTF-8 (byte {data[e.start : e.start + 1]!r} on line {lineno})", row=lineno
        ) from None


def loads(path: str | Path, text: str, row: int | None = None) -> Any:
    """`json.loads`, with a record nested deeper than Python's recursion limit reported as a
    DataFormatError (it raises RecursionError otherwise); a JSONDecodeError passes through."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataFormatError(
            path, "nested too deeply to parse (beyond Python's recursion limit)", row
        ) from None


def _read_jsonl(path: Path, bad_rows: list[DataFormatError] | None = None) -> list[tuple[int, dict]]:
    out: list[tuple[int, dict]] = []
    for lineno, raw in iter_lines(path):
        try:
            line = decode_line(path, lineno, raw)
            if not line.strip():
                continue
            try:
                rec = loads(path, line, lineno)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON on line {lineno}: {e.msg}", row=lineno) from e
        except DataFormatError as e:  # this row only: skipped and counted when the caller collects them
            if bad_rows is None:
                raise
            bad_rows.append(e)
            continue
        out.append((lineno, rec))
    return out


def _read_json(path: Path, bad_rows: list[DataFormatError] | None = None) -> list[tuple[int, dict]]:
    text = read_text(path)
    try:
        doc = loads(path, text)
    except json.JSONDecodeError as e:
        # Many files named .json are really JSON Lines (one object per line): "Extra data" after the
        # first complete value is the tell-tale; read those line by line instead of failing.
        if e.msg == "Extra data":
            return _read_jsonl(path, bad_rows)
        raise DataFormatError(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if isinstance(doc, dict) and "data" in doc:
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataFormatError(
            path, f'expected a JSON list of records or {{"data": [...]}}, got {type(doc).__name__}'
        )
    return list(enumerate(doc, start=1))


def _read_parquet(path: Path) -> list[tuple[int, dict]]:

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataFormatError(path, f"cannot read Parquet: {e}") from e
    return list(enumerate(table.to_pylist(), start=1))


def read_records(path: str | Path, bad_rows: list[DataFormatError] | None = None) -> list[tuple[int, dict]]:
    """Read every record of a JSON, JSONL (optionally gzipped) or Parquet file.

    Returns ``(row, record)`` pairs with 1-based rows. The format is chosen by suffix: ``.jsonl``,
    ``.jsonl.gz``, ``.ndjson`` -> JSON Lines; ``.json``, ``.json.gz`` -> a JSON list or
    ``{"data": [...]}`` (a ``.json`` file holding JSON Lines is read as such); ``.parquet``.
    Every record must be a JSON object (dict).

    A row that cannot be read (invalid JSON or UTF-8, nested too deeply, not an object) raises a
    DataFormatError naming file and row, unless ``bad_rows`` is given (``data.on_error=skip``): then
    it is appended there and left out. A file that cannot be read at all (damaged gzip data, an
    unreadable Parquet file) always raises.
    """
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(p, "no such file")
    name = p.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        rows = _read_jsonl(p, bad_rows)
    elif name.endswith(_JSON_SUFFIXES):
        rows = _read_json(p, bad_rows)
    elif name.endswith(_PARQUET_SUFFIXES):
        rows = _read_parquet(p)
    else:
        raise DataFormatError(
            p, "unknown file type; expected .json, .json.gz, .jsonl, .jsonl.gz, .ndjson or .parquet"
        )
    out = []
    for row, rec in rows:
        if not isinstance(rec, dict):
            error = DataFormatError(p, f"expected a JSON object, got {type(rec).__name__}", row=row)
            if bad_rows is None:
                raise error
            bad_rows.append(error)
            continue
        out.append((row, rec))
    return out


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


# Kinds of values :func:`coerce_text` turns into text, in the order they are reported.
COERCION_KINDS = ("empty_string", "bool", "number", "null", "nan")


def coerce_text(
    file: str | Path,
    row: int,
    rec: dict[str, Any],
    field: str,
    counts: MutableMapping[str, int],
    *,
    optional: bool = False,
    count_empty: bool = True,
) -> str:
    """``rec[field]`` as text, accepting the shapes published files hold, each one counted.

    - a string is kept as it is; an empty or whitespace-only one counts as ``empty_string``
      (unless ``count_empty=False``: for fields where empty is the normal "nothing here");
    - a bool becomes ``str(value)`` (``True`` -> ``"True"``, counted ``bool``): these come from
      spreadsheet tools that parsed a cell holding the text "True" as a boolean, so Python's
      spelling is the likelier original than JSON's ``true``;
    - an int or float becomes ``str(value)`` (``42`` -> ``"42"``, ``2.5`` -> ``"2.5"``; ``number``);
    - null becomes ``""`` (``null``), and a float NaN, pandas' missing cell, becomes ``""`` (``nan``).

    A missing field is an error unless ``optional`` (then ``""``, not counted: the field is absent,
    nothing was turned into text). Lists, objects and other values are errors naming file, row and
    field. ``counts[kind]`` is incremented for every coerced value.
    """
    if field not in rec:
        if optional:
            return ""
        raise DataFormatError(file, f"missing (row has: {', '.join(sorted(rec)) or 'nothing'})", row, field)
    value = rec[field]
    kind: str | None = None
    if isinstance(value, str):
        text = value
        if count_empty and not value.strip():
            kind = "empty_string"
    elif isinstance(value, bool):  # before int: bool is an int subclass
        text, kind = str(value), "bool"
    elif isinstance(value, float) and math.isnan(value):
        text, kind = "", "nan"
    elif isinstance(value, int | float):
        text, kind = str(value), "number"
    elif value is None:
        text, kind = "", "null"
    else:
        raise DataFormatError(
            file,
            f"expected text (a string; a bool, number or null is turned into text), got "
            f"{type(value).__name__}",
            row,
            field,
        )
    if kind is not None:
        counts[kind] = counts.get(kind, 0) + 1
    return text


def parquet_shards(folder: str | Path) -> list[Path]:
    """The ``*.parquet`` files of a folder in name order, checked to have the same columns.

    Released datasets split a table over shards named so that name order is row order
    (``train-00000-of-00002.parquet``, ...). A shard whose columns differ from the first one's is an
    error naming both shards and the columns, since concatenating them would silently drop or
    invent fields.
    """

    folder = Path(folder)
    shards = sorted(p for p in folder.glob("*.parquet") if p.is_file())
    if not shards:
        raise DataFormatError(folder, "is a folder with no *.parquet shards in it")
    first_names: list[str] | None = None
    for shard in shards:
        try:
            names = pq.read_schema(shard).names
        except Exception as e:  # pyarrow raises several unrelated types for a damaged file
            raise DataFormatError(shard, f"cannot read Parquet: {e}") from e
        if first_names is None:
            first_names = names
        elif set(names) != set(first_names):
            missing = sorted(set(first_names) - set(names))
            extra = sorted(set(names) - set(first_names))
            raise DataFormatError(
                shard,
                f"its columns differ from those of {shards[0].name} (missing: {', '.join(missing) or '-'}; "
                f"extra: {', '.join(extra) or '-'}); all shards of a split must have the same columns",
            )
    return shards


def read_dataset(
    path: str | Path, bad_rows: list[DataFormatError] | None = None
) -> list[tuple[str, int, dict]]:
    """``(file, row, record)`` for a file (see :func:`read_records`) or a folder of Parquet shards.

    ``file`` is the shard a record came from and ``row`` its 1-based row there, so a message about
    a record names the place a user can open.
    """
    p = Path(path)
    files = parquet_shards(p) if p.is_dir() else [p]
    return [(str(f), row, rec) for f in files for row, rec in read_records(f, bad_rows)]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object per line (gzip when the name ends with ``.gz``); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
