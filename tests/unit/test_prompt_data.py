"""Prompt files: the formats, every row error, and rendering with a tokenizer built offline."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rrm_ray.data.prompts import PromptDataError, PromptRow, load_prompts, render_prompt

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]
ROWS = [
    {"prompt": "What is 1 + 1?", "answer": "2", "source": "toy"},
    {"prompt": CHAT, "answer": "4", "source": "chat"},
]


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _expected_rows():
    return [
        PromptRow(prompt="What is 1 + 1?", answer="2", row=1, extra={"source": "toy"}),
        PromptRow(prompt=CHAT, answer="4", row=2, extra={"source": "chat"}),
    ]


def test_jsonl(tmp_path):
    assert load_prompts(_write(tmp_path / "p.jsonl", _jsonl(ROWS))) == _expected_rows()


def test_jsonl_gz_and_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n" + _jsonl(ROWS[:1]) + "\n  \n" + _jsonl(ROWS[1:]))
    assert [r.row for r in load_prompts(path)] == [2, 5]


def test_json_list(tmp_path):
    assert load_prompts(_write(tmp_path / "p.json", json.dumps(ROWS))) == _expected_rows()


def test_parquet_round_trip(tmp_path):
    rows = [{"question": f"q{i}", "solution": str(i), "level": i % 3} for i in range(5)]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    loaded = load_prompts(path, prompt_field="question", answer_field="solution", require_answer=True)
    assert [(r.prompt, r.answer, r.row, r.extra) for r in loaded] == [
        (f"q{i}", str(i), i + 1, {"level": i % 3}) for i in range(5)
    ]


def test_parquet_chat_prompts(tmp_path):
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT, "answer": "4"}]), path)
    (row,) = load_prompts(path, prompt_field="messages")
    assert row.prompt == CHAT and row.answer == "4"


def test_answers_optional_numeric_or_ignored(tmp_path):
    rows = [
        {"prompt": "a", "answer": 42},
        {"prompt": "b", "answer": 0.5},
        {"prompt": "c"},
        {"prompt": "d", "answer": None},
    ]
    path = _write(tmp_path / "p.jsonl", _jsonl(rows))
    assert [r.answer for r in load_prompts(path)] == ["42", "0.5", None, None]
    assert [r.answer for r in load_prompts(path, answer_field=None)] == [None] * 4
    assert load_prompts(path, answer_field=None)[0].extra == {"answer": 42}


@pytest.mark.parametrize(
    ("content", "kwargs", "match"),
    [
        (
            '{"prompt": "a"}\n{"answer": "1"}\n',
            {},
            r"p\.jsonl: row 2: missing field 'prompt' \(fields: answer\)",
        ),
        ('{"prompt": 3}\n', {}, r"row 1: field 'prompt': expected a non-empty string or .* got a int"),
        ('{"prompt": null}\n', {}, r"row 1: field 'prompt': expected .* got a null"),
        ('{"prompt": "  "}\n', {}, r"row 1: field 'prompt': expected .* got an empty string"),
        ('{"prompt": []}\n', {}, r"row 1: field 'prompt': expected .* got an empty list"),
        ('{"prompt": ["hi"]}\n', {}, r"row 1: field 'prompt': message 1: expected an object, got a str"),
        ('{"prompt": [{"role": "user"}]}\n', {}, r"message 1: expected a string 'content', got null"),
        ('{"prompt": [{"role": 1, "content": "x"}]}\n', {}, r"message 1: expected a string 'role', got int"),
        (
            '{"prompt": "a", "answer": [1]}\n',
            {},
            r"row 1: field 'answer': expected a string or a number, got a list",
        ),
        (
            '{"prompt": "a", "answer": true}\n',
            {},
            r"field 'answer': expected a string or a number, got a bool",
        ),
        (
            '{"prompt": "a"}\n',
            {"require_answer": True},
            r"row 1: field 'answer': missing \(require_answer=True",
        ),
        ('{"prompt": "a"}\n', {"require_answer": True, "answer_field": None}, "needs an answer_field"),
        ('{"q": "a"}\n', {"prompt_field": "question"}, r"row 1: missing field 'question' \(fields: q\)"),
        ('{"prompt": "a"}\n{"prompt": "b",\n', {}, r"p\.jsonl: line 2: invalid JSON \(.* at column \d+\)"),
        ('["prompt", "a"]\n', {}, r"row 1: expected a JSON object, got a list"),
        ("", {}, r"p\.jsonl: no rows \(the file is empty\)"),
        ("\n\n  \n", {}, "no rows"),
    ],
)
def test_jsonl_errors(tmp_path, content, kwargs, match):
    path = _write(tmp_path / "p.jsonl", content)
    with pytest.raises(PromptDataError, match=match):
        load_prompts(path, **kwargs)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("p.json", '{"prompt": "a"}', r"p\.json: expected a JSON list of objects, got a dict"),
        ("p.json", "[1, 2", r"p\.json: invalid JSON"),
        ("p.json", "[]", "no rows"),
        ("p.json", "", "no rows"),
        ("p.json", '[{"prompt": "a"}, {"answer": "b"}]', r"row 2: missing field 'prompt'"),
        ("p.csv", "prompt\na\n", "unsupported file type"),
        ("p.parquet", "not parquet", r"p\.parquet: not a readable Parquet file"),
        ("p.jsonl.gz", "not gzip", r"p\.jsonl\.gz: cannot read"),
    ],
)
def test_other_file_errors(tmp_path, name, content, match):
    path = _write(tmp_path / name, content)
    with pytest.raises(PromptDataError, match=match):
        load_prompts(path)


def test_missing_file(tmp_path):
    with pytest.raises(PromptDataError, match=r"nope\.jsonl: file not found"):
        load_prompts(tmp_path / "nope.jsonl")


def test_parquet_missing_column_and_null(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "a", "answer": "1"}, {"prompt": None, "answer": "2"}]), path
    )
    with pytest.raises(PromptDataError, match=r"row 2: field 'prompt': expected .* got a null"):
        load_prompts(path)
    with pytest.raises(PromptDataError, match=r"row 1: missing field 'text'"):
        load_prompts(path, prompt_field="text")


# ------------------------------------------------------------------------------------------------
# render_prompt

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory: no download, just enough to apply a chat template."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", chat_template=chat_template)


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer(TEMPLATE)


@pytest.mark.parametrize(
    ("prompt", "system", "expected"),
    [
        ("What is 1 + 1?", None, "<|user|>What is 1 + 1?\n<|assistant|>"),
        ("What is 1 + 1?", "Be brief.", "<|system|>Be brief.\n<|user|>What is 1 + 1?\n<|assistant|>"),
        (CHAT, None, "<|system|>Be brief.\n<|user|>2 + 2?\n<|assistant|>"),
        (CHAT, "Ignored: the chat has its own.", "<|system|>Be brief.\n<|user|>2 + 2?\n<|assistant|>"),
        (CHAT[1:], "Be kind.", "<|system|>Be kind.\n<|user|>2 + 2?\n<|assistant|>"),
    ],
)
def test_render_with_chat_template(tokenizer, prompt, system, expected):
    assert render_prompt(tokenizer, prompt, system) == expected


@pytest.mark.parametrize(
    ("prompt", "system", "expected"),
    [
        ("What is 1 + 1?", None, "What is 1 + 1?"),
        ("What is 1 + 1?", "Be brief.", "Be brief.\n\nWhat is 1 + 1?"),
        (CHAT, None, "Be brief.\n\n2 + 2?"),
    ],
)
def test_render_raw(tokenizer, prompt, system, expected):
    assert render_prompt(tokenizer, prompt, system, use_chat_template=False) == expected
    assert render_prompt(_tokenizer(None), prompt, system) == expected  # a base model has no template


def test_render_does_not_modify_the_row(tokenizer):
    chat = [dict(m) for m in CHAT[1:]]
    render_prompt(tokenizer, chat, "Be kind.")
    assert chat == CHAT[1:]
