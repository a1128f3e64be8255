"""Data files with a bad byte, damaged gzip data or a record nested too deeply fail naming file and row
(or, under data.on_error=skip, the row is dropped and counted), instead of a bare UnicodeDecodeError,
BadGzipFile or RecursionError; prompts too long for the engine are found before any engine starts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rrm_ray.config import ConfigError
from rrm_ray.data.io import DataFormatError, read_records
from rrm_ray.data.preference import load_preference_pairs
from rrm_ray.data.prompts import PromptDataError, load_prompts
from rrm_ray.data.tasks import load_task_rows
from rrm_ray.judge.benchmarks import load_rewardbench
from rrm_ray.models import load_tokenizer, resolve_model_path
from rrm_ray.validation import load_config

GOOD = {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3", "answer": "2", "subset": "math"}
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit: json raises RecursionError


def jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def good(**extra) -> bytes:
    return json.dumps({**GOOD, **extra}).encode()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"prompt": "caf\xe9"}', r"row 2: not valid UTF-8 \(byte b'\\xe9' at position 16 of line 2\)"),
        (DEEP.encode(), r"row 2: nested too deeply to parse"),
        (b'{"prompt": ', r"row 2: invalid JSON on line 2"),
    ],
)
def test_a_bad_row_names_file_and_row_or_is_skipped_and_counted(tmp_path, line, message):
    path = jsonl(tmp_path / "pairs.jsonl", [good(), line, good(prompt="x")])
    with pytest.raises(DataFormatError, match=rf"pairs\.jsonl: {message}"):
        read_records(path)
    with pytest.raises(DataFormatError, match=message):
        load_preference_pairs(path, on_error="raise")
    pairs, skipped = load_preference_pairs(path, on_error="skip")
    assert len(pairs) == 2 and skipped == 1
    bench = load_rewardbench(jsonl(tmp_path / "bench.jsonl", [good(id=1), line, good(id=3)]), on_error="skip")
    assert [i.id for i in bench.items] == [1, 3] and len(bench.skipped) == 1
    with pytest.raises(PromptDataError, match=r"prompts\.jsonl: (row|line) 2"):
        load_prompts(jsonl(tmp_path / "prompts.jsonl", [good(), line, good()]))
    skipped_rows: list[str] = []
    rows = load_prompts(tmp_path / "prompts.jsonl", skipped=skipped_rows)
    assert [r.row for r in rows] == [1, 3] and len(skipped_rows) == 1


def test_damaged_gzip_data_names_the_file_and_where_it_broke(tmp_path):
    data = gzip.compress(b"".join(good(prompt=str(i)) + b"\n" for i in range(2000)))
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])  # a download cut short
    with pytest.raises(
        DataFormatError, match=r"pairs\.jsonl\.gz: cannot read: damaged gzip data after line \d+"
    ):
        read_records(path)
    with pytest.raises(DataFormatError, match="damaged gzip data"):
        load_preference_pairs(path, on_error="skip")  # a file that cannot be read always raises
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match=r"bad\.json\.gz: cannot read: damaged gzip data after line 0"):
        read_records(tmp_path / "bad.json.gz")
    with pytest.raises(PromptDataError, match=r"p\.jsonl\.gz: cannot read"):
        load_prompts(tmp_path.joinpath("p.jsonl.gz").write_bytes(b"nope") and tmp_path / "p.jsonl.gz")


def test_a_json_document_with_a_bad_byte_names_its_line(tmp_path):
    path = tmp_path / "items.json"
    path.write_bytes(b'[\n{"prompt": "a"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(
        DataFormatError, match=r"items\.json: row 3: not valid UTF-8 \(byte b'\\xff' on line 3\)"
    ):
        read_records(path)
    path.write_text(DEEP)
    with pytest.raises(DataFormatError, match="nested too deeply"):
        read_records(path)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_path("smollm2"))


def test_prompts_longer_than_the_context_are_found_before_any_engine_starts(tmp_path, tokenizer):
    long = "word " * 400  # about 400 tokens
    rows = [{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": long, "answer": "x"}]
    rows += [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)] + [{"prompt": long}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [f"data.train_path={train}", "data.eval_path=null", "model.max_model_len=256"]
    with pytest.raises(
        ConfigError,
        match=r"train\.jsonl: 2 prompts have model\.max_model_len=256 tokens or more "
        r"\(the longest \d+\), so the engine cannot generate from them: rows 2, 6\. .*on_error=skip",
    ):
        load_task_rows(load_config(None, base), tokenizer)
    kept, _, counts = load_task_rows(load_config(None, [*base, "data.on_error=skip"]), tokenizer)
    assert [r.row for r in kept] == [1, 3, 4, 5] and counts["over_context_rows/train.jsonl"] == 2
    fits, _, _ = load_task_rows(load_config(None, [*base, "model.max_model_len=1024"]), tokenizer)
    assert len(fits) == 6
