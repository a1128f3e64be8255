"""Preference readers (generic, skywork, tulu, hh_rlhf), record files and judge examples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rrm_ray.data.io import DataFormatError, read_records
from rrm_ray.data.preference import (
    PreferenceDataError,
    PreferencePair,
    load_preference_pairs,
    to_judge_examples,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HH_REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- read_records


def test_read_records_formats(tmp_path):
    recs = [{"a": 1}, {"a": 2}]
    (tmp_path / "l.json").write_text(json.dumps(recs))
    (tmp_path / "d.json").write_text(json.dumps({"data": recs}))
    (tmp_path / "j.json").write_text("\n".join(json.dumps(r) for r in recs))  # JSON Lines named .json
    (tmp_path / "b.jsonl").write_text(json.dumps(recs[0]) + "\n\n" + json.dumps(recs[1]) + "\n")
    with gzip.open(tmp_path / "g.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in recs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet")
    for name in ("l.json", "d.json", "j.json", "g.jsonl.gz", "t.parquet"):
        assert read_records(tmp_path / name) == [(1, recs[0]), (2, recs[1])], name
    assert read_records(tmp_path / "b.jsonl") == [(1, recs[0]), (3, recs[1])]  # blank line 2 still counts


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("x.jsonl", '{"a": 1}\n{"a": 2}\n{"a": \n', "row 3: invalid JSON on line 3"),
        ("x.jsonl", '{"a": 1}\n[1, 2]\n', "row 2: expected a JSON object, got list"),
        ("x.json", '{"rows": []}', "expected a JSON list of records"),
        ("x.json", '[{"a": 1},', "invalid JSON at line 1"),
        ("x.csv", "a,b\n", "unknown file type"),
    ],
)
def test_read_records_errors(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as e:
        read_records(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_read_records_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------------------- formats


def test_generic_with_configured_fields(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"data": [{"question": "Q?", "good": " yes ", "bad": "no"}]}))
    pairs, skipped = load_preference_pairs(
        path, "generic", prompt_field="question", chosen_field="good", rejected_field="bad"
    )
    assert skipped == 0
    assert pairs == [PreferencePair("Q?", "yes", "no", str(path), 1)]  # replies are stripped


def test_skywork_fixture():
    pairs, skipped = load_preference_pairs(FIXTURES / "skywork_tiny.jsonl", "skywork")
    assert skipped == 0
    assert (pairs[0].query, pairs[0].chosen, pairs[0].rejected) == (
        "What is the capital of Japan?",
        "Tokyo.",
        "Kyoto.",
    )
    # Multi-turn: everything before the compared reply, rendered turn by turn.
    assert pairs[1].query == "User: Pick a number.\n\nAssistant: Seven.\n\nUser: Double it."
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].row) == ("Fourteen.", "Twelve.", 2)


def test_skywork_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [json.loads(line) for line in (FIXTURES / "skywork_tiny.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "s.parquet")
    pairs, _ = load_preference_pairs(tmp_path / "s.parquet", "skywork")
    assert [p.chosen for p in pairs] == ["Tokyo.", "Fourteen."]


def test_tulu_fixture():
    pairs, skipped = load_preference_pairs(FIXTURES / "tulu_tiny.jsonl", "tulu")
    assert skipped == 0
    # 1: tulu-3 mixture (prompt string + full conversations) -> conversation prefix is the query.
    assert (pairs[0].query, pairs[0].chosen, pairs[0].rejected) == ("Spell 'cat' backwards.", "tac", "cta")
    # 2: prompt as a message list with a system message; chosen/rejected hold only the reply.
    assert (pairs[1].query, pairs[1].chosen, pairs[1].rejected) == (
        "System: Be brief.\n\nUser: 2 + 3?",
        "5",
        "6",
    )
    # 3: conversation under "messages".
    assert (pairs[2].query, pairs[2].chosen) == ("Largest planet?", "Jupiter.")


def test_tulu_plain_strings(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    assert load_preference_pairs(path, "tulu")[0][0].chosen == "A"


def test_hh_rlhf_fixture():
    pairs, skipped = load_preference_pairs(FIXTURES / "hh_rlhf_tiny.jsonl", "hh_rlhf")
    assert skipped == 0 and len(pairs) == 3
    assert pairs[0].query == "What is the boiling point of water?"
    assert pairs[0].chosen == "100 degrees Celsius at sea level."
    assert pairs[1].query == (
        "User: Can you help me pick a lock?\n\nAssistant: Is it your own lock?\n\nUser: No, my neighbor's."
    )
    assert pairs[1].rejected == "Sure, first get a tension wrench."
    assert pairs[2].chosen == "Why did the bicycle fall over? It was two tired."  # extra space stripped


@pytest.mark.skipif(
    not HH_REAL.is_file(), reason=f"real HH-RLHF data not present at {HH_REAL} (outside a clone)"
)
def test_hh_rlhf_real_data():
    pairs, skipped = load_preference_pairs(HH_REAL, "hh_rlhf", on_error="skip")
    # 2,312 rows; 4 have an empty final reply and 5 pairs of transcripts differ before the last reply.
    assert (len(pairs), skipped) == (2303, 9)
    assert all(p.query and p.chosen and p.rejected and p.chosen != p.rejected for p in pairs)
    assert pairs[0].query.startswith("User: what are some pranks with a pen i can do?")
    with pytest.raises(PreferenceDataError, match=r"row 87: field 'chosen': the chosen reply is empty"):
        load_preference_pairs(HH_REAL, "hh_rlhf")


# ----------------------------------------------------------------------------- malformed rows

_MSG = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
_MSG_B = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]


@pytest.mark.parametrize(
    "fmt, record, field, needle",
    [
        ("generic", {"prompt": "Q", "chosen": "A"}, "rejected", "missing"),
        (
            "generic",
            {"prompt": "Q", "chosen": ["A"], "rejected": "B"},
            "chosen",
            "expected a string, got list",
        ),
        ("generic", {"prompt": " ", "chosen": "A", "rejected": "B"}, "prompt", "non-empty"),
        ("generic", {"prompt": "Q", "chosen": "A", "rejected": " A "}, "rejected", "identical"),
        ("skywork", {"chosen": "A", "rejected": _MSG_B}, "chosen", "expected a list of messages"),
        ("skywork", {"chosen": [], "rejected": _MSG_B}, "chosen", "non-empty list"),
        (
            "skywork",
            {"chosen": _MSG[:1], "rejected": _MSG_B},
            "chosen",
            "last message must be from the assistant",
        ),
        (
            "skywork",
            {"chosen": [_MSG[0], {"role": "bot", "content": "A"}], "rejected": _MSG_B},
            "chosen[1]",
            "role",
        ),
        ("skywork", {"chosen": [_MSG[0], {"role": "assistant"}], "rejected": _MSG_B}, "chosen[1]", "content"),
        (
            "skywork",
            {"chosen": _MSG, "rejected": [{"role": "user", "content": "Z"}, _MSG_B[1]]},
            "rejected",
            "share",
        ),
        ("skywork", {"chosen": _MSG[1:], "rejected": _MSG_B[1:]}, "chosen", "no user message"),
        ("skywork", {"chosen": _MSG, "rejected": _MSG}, "rejected", "identical"),
        ("tulu", {"chosen": _MSG[1:], "rejected": _MSG_B[1:]}, "messages", "missing"),
        ("tulu", {"prompt": "Q", "chosen": _MSG[1:], "rejected": _MSG_B}, "rejected", "must too"),
        ("hh_rlhf", {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "no turns"}, "rejected", "no '"),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Z\n\nAssistant: B"},
            "rejected",
            "share",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: Q\n\nAssistant: ", "rejected": "\n\nHuman: Q\n\nAssistant: B"},
            "chosen",
            "empty",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: Q", "rejected": "\n\nHuman: Q\n\nAssistant: B"},
            "chosen",
            "assistant",
        ),
        (
            "hh_rlhf",
            {"chosen": "hi\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: B"},
            "chosen",
            "before",
        ),
    ],
)
def test_malformed_rows(tmp_path, fmt, record, field, needle):
    good = {
        "generic": {"prompt": "Q", "chosen": "A", "rejected": "B"},
        "skywork": {"chosen": _MSG, "rejected": _MSG_B},
        "tulu": {"chosen": _MSG, "rejected": _MSG_B},
        "hh_rlhf": {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: B"},
    }[fmt]
    path = _jsonl(tmp_path / "bad.jsonl", [good, record, good])
    with pytest.raises(DataFormatError) as e:
        load_preference_pairs(path, fmt)
    msg = str(e.value)
    assert msg.startswith(f"{path}: row 2: field '{field}'"), msg
    assert needle in msg, msg
    assert e.value.row == 2 and e.value.field == field
    pairs, skipped = load_preference_pairs(path, fmt, on_error="skip")
    assert [p.row for p in pairs] == [1, 3] and skipped == 1


def test_bad_arguments(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    with pytest.raises(ValueError, match="format must be one of"):
        load_preference_pairs(path, "csv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error"):
        load_preference_pairs(path, "generic", on_error="ignore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- judge examples


def _pairs(n: int, source: str = "/data/a/train.jsonl") -> list[PreferencePair]:
    return [PreferencePair(f"q{i}", f"good{i}", f"bad{i}", source, i) for i in range(1, n + 1)]


def test_judge_examples_place_chosen_where_label_says():
    pairs = _pairs(200)
    examples = to_judge_examples(pairs, seed=3)
    for p, ex in zip(pairs, examples, strict=True):
        assert ex.query == p.query and ex.pair_row == p.row and ex.source == p.source
        assert (ex.response_1, ex.response_2) == (
            (p.chosen, p.rejected) if ex.label == 1 else (p.rejected, p.chosen)
        )
    firsts = sum(ex.label == 1 for ex in examples)
    assert 70 <= firsts <= 130  # a fair coin: 200 flips land in [70, 130] with overwhelming odds


def test_judge_examples_reproducible_per_row():
    pairs = _pairs(50)
    a = to_judge_examples(pairs, seed=1)
    assert a == to_judge_examples(pairs, seed=1)
    # Order and subsetting do not change a pair's placement ...
    b = to_judge_examples(list(reversed(pairs[10:])), seed=1)
    assert {ex.pair_row: ex.label for ex in b} == {ex.pair_row: ex.label for ex in a[10:]}
    # ... nor does the directory the file lives in; the seed does.
    moved = to_judge_examples(_pairs(50, "/elsewhere/train.jsonl"), seed=1)
    assert [ex.label for ex in moved] == [ex.label for ex in a]
    assert [ex.label for ex in to_judge_examples(pairs, seed=2)] != [ex.label for ex in a]
