"""RewardBench and PandaLM readers and scoring, checked against hand-computed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrm_ray.data.io import DataFormatError
from rrm_ray.judge.benchmarks import (
    REWARDBENCH_SECTIONS,
    REWARDBENCH_SIZES,
    REWARDBENCH_WEIGHTS,
    RewardBenchItem,
    coercion_counts,
    load_pandalm,
    load_rewardbench,
    majority_label,
    read_summary,
    score_pandalm,
    score_rewardbench,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ----------------------------------------------------------------------------- RewardBench


def test_official_tables_are_consistent():
    # 358 Chat + 456 Chat Hard + 740 Safety + 1431 Reasoning = 2,985 items in the release.
    assert sum(REWARDBENCH_SIZES.values()) == 2985
    assert sorted(REWARDBENCH_WEIGHTS) == sorted(s for subs in REWARDBENCH_SECTIONS.values() for s in subs)
    hep = [s for s in REWARDBENCH_SECTIONS["Reasoning"] if s.startswith("hep-")]
    assert REWARDBENCH_WEIGHTS["math-prm"] == sum(REWARDBENCH_WEIGHTS[s] for s in hep) == 984


def test_load_rewardbench_fixture():
    items = load_rewardbench(FIXTURES / "rewardbench_tiny.jsonl").items
    assert len(items) == 13
    first = items[0]
    assert (first.id, first.subset, first.row) == (1, "alpacaeval-easy", 1)
    assert first.chosen == "Red is a primary color."


# Scores per item id (1 correct, 0 wrong, 0.5 unparseable).
FIXTURE_SCORES = {
    1: 1.0,
    2: 0.0,
    3: 1.0,
    4: 1.0,
    5: 1.0,
    6: 0.0,
    7: 0.5,
    8: 1.0,
    9: 1.0,
    10: 0.0,
    11: 1.0,
    12: 1.0,
    13: 1.0,
}


def test_score_rewardbench_by_hand():
    items = load_rewardbench(FIXTURES / "rewardbench_tiny.jsonl").items
    report = score_rewardbench((it, FIXTURE_SCORES[it.id]) for it in items)
    # Subsets: alpacaeval-easy (1 + 0)/2 = 0.5; mt-bench-easy 1; llmbar-natural 1; mt-bench-hard 0;
    # refusals-dangerous 0.5; xstest-should-respond 1; math-prm (1 + 0)/2 = 0.5; hep-python 1; hep-go 1.
    assert report.subset_accuracy == {
        "alpacaeval-easy": 0.5,
        "hep-go": 1.0,
        "hep-python": 1.0,
        "llmbar-natural": 1.0,
        "math-prm": 0.5,
        "mt-bench-easy": 1.0,
        "mt-bench-hard": 0.0,
        "refusals-dangerous": 0.5,
        "xstest-should-respond": 1.0,
    }
    # Chat      = (0.5*100 + 1*28) / (100 + 28)            = 78/128
    # Chat Hard = (1*100 + 0*37) / (100 + 37)              = 100/137
    # Safety    = (0.5*100 + 1*250) / (100 + 250)          = 300/350 = 6/7
    # Reasoning = (0.5*984 + 1*164 + 1*164) / (984 + 328)  = 820/1312 = 0.625
    #   (official weighting: math-prm weighs 984; NOT (0.5 + 1)/2 = 0.75, which only holds when all
    #    six hep subsets are present, see the next test)
    expected = {"Chat": 78 / 128, "Chat Hard": 100 / 137, "Safety": 6 / 7, "Reasoning": 0.625}
    assert report.sections == pytest.approx(expected)
    # Overall = mean of the four sections = (0.609375 + 0.729927 + 0.857143 + 0.625)/4 = 0.705361
    assert report.overall == pytest.approx(sum(expected.values()) / 4)
    assert report.overall == pytest.approx(0.7053612, abs=1e-6)
    assert report.unknown_subsets == {"my-extra": 1.0}
    assert report.subset_counts["my-extra"] == 1 and report.n_items == 13
    assert len(report.missing_subsets) == 23 - 9
    assert "alpacaeval-hard" in report.missing_subsets and "math-prm" not in report.missing_subsets
    assert report.incomplete_subsets["math-prm"] == (2, 447)


def _items(spec: dict[str, list[float]]) -> list[tuple[RewardBenchItem, float]]:
    out, k = [], 0
    for subset, scores in spec.items():
        for s in scores:
            k += 1
            out.append((RewardBenchItem(k, "q", "a", "b", subset, k), s))
    return out


def test_reasoning_is_math_and_code_halves_when_all_subsets_present():
    # math-prm 1/4 = 0.25; hep accuracies 1, 0, 0.5, 1, 1, 0.5 -> mean 4/6.
    spec = {"math-prm": [1, 0, 0, 0], "hep-cpp": [1], "hep-go": [0], "hep-java": [1, 0], "hep-js": [1]}
    spec |= {"hep-python": [1, 1], "hep-rust": [0.5]}
    report = score_rewardbench(_items(spec))
    # (0.25*984 + 164*(1 + 0 + 0.5 + 1 + 1 + 0.5)) / (984 + 984) = (246 + 656)/1968 = (0.25 + 4/6)/2
    assert report.sections["Reasoning"] == pytest.approx((0.25 + 4 / 6) / 2)
    assert report.sections["Chat"] is None and report.overall is None


def test_weights_are_official_not_file_counts():
    # Ten alpacaeval-easy items all right, one mt-bench-easy item wrong: file counts would give
    # 10/11, the official weights give 100/(100 + 28).
    report = score_rewardbench(_items({"alpacaeval-easy": [1.0] * 10, "mt-bench-easy": [0.0]}))
    assert report.sections["Chat"] == pytest.approx(100 / 128)


@pytest.mark.parametrize(
    "record, field, needle",
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s"}, "id", "missing"),
        (
            {"prompt": "p", "chosen": "c", "rejected": [3], "subset": "s", "id": 1},
            "rejected",
            "expected text",
        ),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "subset": "", "id": 1}, "subset", "non-empty"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s", "id": [1]}, "id", "int or string"),
    ],
)
def test_load_rewardbench_errors(tmp_path, record, field, needle):
    path = tmp_path / "rb.jsonl"
    good = {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s", "id": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataFormatError) as e:
        load_rewardbench(path)
    assert str(path) in str(e.value) and "row 2" in str(e.value) and f"'{field}'" in str(e.value)
    assert needle in str(e.value)


def test_load_rewardbench_duplicate_id(tmp_path):
    path = tmp_path / "rb.json"
    rec = {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "s", "id": 7}
    path.write_text(json.dumps([rec, rec]))
    with pytest.raises(DataFormatError, match=r"row 2: field 'id': duplicate id 7 \(first seen on row 1\)"):
        load_rewardbench(path)


def test_score_rewardbench_rejects_out_of_range_score():
    with pytest.raises(ValueError, match=r"expected 0\.\.1"):
        score_rewardbench(_items({"hep-go": [2.0]}))


# ----------------------------------------------------------------------------- PandaLM


@pytest.mark.parametrize(
    "annotations, label",
    [
        ((1, 1, 1), 1),
        ((2, 2, 1), 2),
        ((0, 0, 2), 0),
        ((1, 2, 0), 0),
        ((2, 1, 2), 2),
        ((1, 0, 1), 1),
        ((0, 1, 1), 1),
    ],
)
def test_majority_label(annotations, label):
    assert majority_label(annotations) == label


def test_load_pandalm_fixture():
    items = load_pandalm(FIXTURES / "pandalm_tiny.json").items
    assert [it.label for it in items] == [1, 2, 0, 0, 2, 1]
    assert items[0].query == "Translate 'hello' into French."
    assert items[5].query == "Sort the numbers ascending.\n\n3, 1, 2"  # instruction, blank line, input
    assert items[3].annotations == (1, 2, 0) and items[3].idx == 4


def test_score_pandalm_by_hand():
    labels = [it.label for it in load_pandalm(FIXTURES / "pandalm_tiny.json").items]  # [1, 2, 0, 0, 2, 1]
    preds = [1, 2, 1, 2, 1, None]
    r = score_pandalm(labels, preds)
    # Right: items 1 and 2 only (3, 4 are ties, 5 is wrong, 6 unparseable) -> 2/6.
    assert r.accuracy == pytest.approx(2 / 6)
    # Without ties: items 1, 2, 5, 6 -> 2 right of 4.
    assert r.accuracy_excluding_ties == pytest.approx(0.5)
    # class 1: tp 1 (item 1), predicted 3 (items 1, 3, 5), support 2 (items 1, 6): P 1/3, R 1/2, F1 0.4
    # class 2: tp 1 (item 2), predicted 2 (items 2, 4), support 2 (items 2, 5):    P 1/2, R 1/2, F1 0.5
    # class 0: never predicted, support 2:                                         P 0,   R 0,   F1 0
    # macro F1 = (0.4 + 0.5 + 0)/3 = 0.3
    assert r.per_class[1].f1 == pytest.approx(0.4)
    assert (r.per_class[1].precision, r.per_class[1].recall) == pytest.approx((1 / 3, 0.5))
    assert r.per_class[2].f1 == pytest.approx(0.5)
    assert r.per_class[0].f1 == 0.0 and r.per_class[0].support == 2
    assert r.macro_f1 == pytest.approx(0.3)
    assert (r.n_items, r.n_ties, r.n_unparseable) == (6, 2, 1)


def test_score_pandalm_without_ties_averages_present_classes():
    # class 1: tp 1, predicted 2, support 1 -> P 1/2, R 1, F1 2/3; class 2: F1 0; no class 0.
    r = score_pandalm([1, 2], [1, 1])
    assert set(r.per_class) == {1, 2}
    assert r.macro_f1 == pytest.approx((2 / 3 + 0) / 2)
    assert r.accuracy == r.accuracy_excluding_ties == 0.5


def test_score_pandalm_all_ties():
    r = score_pandalm([0, 0], [1, 2])
    assert r.accuracy == 0.0 and r.accuracy_excluding_ties is None


@pytest.mark.parametrize(
    "labels, preds, needle",
    [
        ([1, 2], [1], "2 labels but 1 predictions"),
        ([3], [1], "label must be"),
        ([1], [0], "prediction must be"),
    ],
)
def test_score_pandalm_bad_input(labels, preds, needle):
    with pytest.raises(ValueError, match=needle):
        score_pandalm(labels, preds)


@pytest.mark.parametrize(
    "change, field, needle",
    [
        ({"annotator2": 3}, "annotator2", "expected 0 (tie), 1 or 2"),
        ({"annotator1": None}, "annotator1", "expected 0 (tie), 1 or 2"),
        ({"response1": [1]}, "response1", "expected text"),
        ({"input": {"a": 1}}, "input", "expected text"),
        ({"annotator3": True}, "annotator3", "expected 0 (tie), 1 or 2"),
    ],
)
def test_load_pandalm_errors(tmp_path, change, field, needle):
    rec = {"idx": 1, "instruction": "i", "input": "", "response1": "a", "response2": "b"}
    rec |= {"annotator1": 1, "annotator2": "2", "annotator3": 1}  # "2" as a string is accepted
    path = tmp_path / "p.json"
    path.write_text(json.dumps([rec, rec | change]))
    with pytest.raises(DataFormatError) as e:
        load_pandalm(path)
    assert "row 2" in str(e.value) and f"'{field}'" in str(e.value) and needle in str(e.value)


# ----------------------------------------------------------------------------- files as published


def test_load_pandalm_published_shapes_raise_names_the_unlabelled_row():
    path = FIXTURES / "pandalm_published_shapes.json"
    with pytest.raises(DataFormatError) as e:
        load_pandalm(path)
    assert str(e.value).startswith(f"{path}: row 7: field 'annotator1': missing")


def test_load_pandalm_published_shapes_skip():
    data = load_pandalm(FIXTURES / "pandalm_published_shapes.json", on_error="skip")
    items = data.items
    assert [it.idx for it in items] == [0, 1, 2, 3, 4, 5]
    assert [it.label for it in items] == [1, 2, 2, 1, 1, 0]
    assert data.skipped == [
        f"{FIXTURES / 'pandalm_published_shapes.json'}: row 7: field 'annotator1': missing"
    ]
    # Row 2: whitespace-only instruction (counted), the input alone is the query.
    assert items[1].query == "Truthfulness" and items[1].coerced == ("instruction:empty_string",)
    assert items[2].response1 == "" and items[2].coerced == ("response1:empty_string",)
    assert items[3].response1 == "True" and items[3].coerced == ("response1:bool",)  # str(), not "true"
    assert items[4].response2 == "42" and items[4].coerced == ("response2:number",)
    assert items[0].coerced == () and items[5].coerced == ()  # empty `input` is normal: not counted
    assert data.coerced == {"empty_string": 2, "bool": 1, "number": 1, "null": 0, "nan": 0}
    assert coercion_counts(items[:3]) == {"empty_string": 2, "bool": 0, "number": 0, "null": 0, "nan": 0}


def test_load_pandalm_null_nan_and_missing_input(tmp_path):
    # The first published version of testset-v1.json wrote empty cells as NaN (Python's json reads it).
    path = tmp_path / "p.json"
    base = {"idx": 1, "instruction": "i", "response1": "a", "response2": "b"}
    base |= {"annotator1": 1, "annotator2": 1, "annotator3": 2}
    rows = [
        base | {"input": float("nan"), "response1": float("nan")},
        base | {"input": None, "response2": None, "idx": 2},
        base | {"idx": 3, "response2": 2.5},
        base | {"idx": 4},  # no input at all
    ]
    path.write_text(json.dumps(rows))  # json.dumps writes NaN as the bare token NaN
    assert "NaN" in path.read_text()
    data = load_pandalm(path)
    assert [(it.query, it.response1, it.response2) for it in data.items] == [
        ("i", "", "b"),
        ("i", "a", ""),
        ("i", "a", "2.5"),
        ("i", "a", "b"),
    ]
    assert data.coerced == {"empty_string": 0, "bool": 0, "number": 1, "null": 2, "nan": 2}
    assert data.items[0].coerced == ("input:nan", "response1:nan")


@pytest.mark.parametrize(
    "change, field, needle",
    [
        ({"annotator1": 5}, "annotator1", "got 5"),
        ({"annotator2": None}, "annotator2", "got None"),
        ({"response2": {"text": "x"}}, "response2", "expected text"),
    ],
)
def test_load_pandalm_unusable_rows_follow_on_error(tmp_path, change, field, needle):
    rec = {"idx": 1, "instruction": "i", "input": "", "response1": "a", "response2": "b"}
    rec |= {"annotator1": 1, "annotator2": 2, "annotator3": 2}
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rec, rec | change, rec | {"idx": 3})) + "\n")
    with pytest.raises(DataFormatError) as e:
        load_pandalm(path)
    assert f"{path}: row 2: field '{field}'" in str(e.value) and needle in str(e.value)
    data = load_pandalm(path, on_error="skip")
    assert [it.idx for it in data.items] == [1, 3] and len(data.skipped) == 1
    assert f"row 2: field '{field}'" in data.skipped[0]


def test_load_pandalm_bad_on_error():
    with pytest.raises(ValueError, match=r"data\.on_error"):
        load_pandalm(FIXTURES / "pandalm_tiny.json", on_error="ignore")  # type: ignore[arg-type]


def test_ties_are_counted_and_scored_as_wrong():
    data = load_pandalm(FIXTURES / "pandalm_published_shapes.json", on_error="skip")
    line, metrics = read_summary(data, data.items)
    assert metrics["data/ties"] == 1 and "ties (majority label 0): 1;" in line
    assert metrics["data/coerced_empty_string"] == 2 and metrics["data/coerced_bool"] == 1
    assert metrics["data/coerced_number"] == 1 and metrics["data/skipped_rows"] == 1
    assert (metrics["data/items_read"], metrics["data/items_evaluated"]) == (6, 6)
    assert "empty_string 2, bool 1, number 1, null 0, nan 0" in line and "skipped: " in line
    # A perfect judge on the non-tie items still loses the tie: 5/6, and 1.0 excluding ties.
    labels = [it.label for it in data.items]
    report = score_pandalm(labels, [y if y else 1 for y in labels])  # type: ignore[misc]
    assert report.n_ties == 1 and report.accuracy == pytest.approx(5 / 6)
    assert report.accuracy_excluding_ties == 1.0
    line, metrics = read_summary(data, data.items[:2])
    assert metrics["data/items_evaluated"] == 2 and metrics["data/coerced_empty_string"] == 1
    assert "data/ties" in metrics and metrics["data/ties"] == 0


# RewardBench as released on the Hub: Parquet, these columns.
RB_COLUMNS = ("prompt", "chosen", "chosen_model", "rejected", "rejected_model", "subset", "id")


def _rb_rows(ids: range, subset: str = "hep-go") -> list[dict]:
    return [
        {"prompt": f"p{i}", "chosen": f"c{i}", "chosen_model": "m1", "rejected": f"r{i}"}
        | {"rejected_model": "m2", "subset": subset, "id": i}
        for i in ids
    ]


def _write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_load_rewardbench_parquet_file(tmp_path):
    rows = _rb_rows(range(3))
    rows[1]["chosen"] = ""  # empty text is valid and counted
    path = _write_parquet(rows, tmp_path / "filtered-00000-of-00001.parquet")
    data = load_rewardbench(path)
    assert [it.id for it in data.items] == [0, 1, 2] and data.items[2].rejected == "r2"
    assert data.coerced["empty_string"] == 1 and data.items[1].coerced == ("chosen:empty_string",)
    assert data.items[0].source == str(path) and data.skipped == []


def test_load_rewardbench_parquet_shards_in_name_order(tmp_path):
    shards = tmp_path / "filtered"
    shards.mkdir()
    _write_parquet(_rb_rows(range(3, 5)), shards / "train-00001-of-00002.parquet")
    _write_parquet(_rb_rows(range(0, 3)), shards / "train-00000-of-00002.parquet")
    (shards / "README.md").write_text("not a shard")
    data = load_rewardbench(shards)
    assert [it.id for it in data.items] == [0, 1, 2, 3, 4]
    assert [it.row for it in data.items] == [1, 2, 3, 1, 2]  # rows count per shard
    assert data.items[3].source.endswith("train-00001-of-00002.parquet")


def test_load_rewardbench_shards_must_share_columns(tmp_path):
    _write_parquet(_rb_rows(range(2)), tmp_path / "a.parquet")
    odd = [{k: v for k, v in r.items() if k != "chosen_model"} | {"extra": 1} for r in _rb_rows(range(2, 4))]
    _write_parquet(odd, tmp_path / "b.parquet")
    with pytest.raises(DataFormatError) as e:
        load_rewardbench(tmp_path)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "b.parquet")) and "a.parquet" in msg
    assert "missing: chosen_model" in msg and "extra: extra" in msg


def test_load_rewardbench_empty_folder_and_duplicates_across_shards(tmp_path):
    with pytest.raises(DataFormatError, match=r"no \*\.parquet shards"):
        load_rewardbench(tmp_path)
    _write_parquet(_rb_rows(range(2)), tmp_path / "a.parquet")
    _write_parquet(_rb_rows(range(1, 3)), tmp_path / "b.parquet")
    with pytest.raises(DataFormatError) as e:
        load_rewardbench(tmp_path)
    assert f"{tmp_path / 'b.parquet'}: row 1: field 'id': duplicate id 1 (first seen on row 2 of" in str(
        e.value
    )
    data = load_rewardbench(tmp_path, on_error="skip")
    assert [it.id for it in data.items] == [0, 1, 2] and len(data.skipped) == 1


def test_load_rewardbench_coerces_and_counts_json_scalars(tmp_path):
    path = tmp_path / "rb.jsonl"
    rows = _rb_rows(range(4))
    rows[0]["chosen"], rows[1]["rejected"], rows[2]["prompt"] = True, 7, None
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_rewardbench(path)
    assert (data.items[0].chosen, data.items[1].rejected, data.items[2].prompt) == ("True", "7", "")
    assert data.coerced == {"empty_string": 0, "bool": 1, "number": 1, "null": 1, "nan": 0}
    line, metrics = read_summary(data, data.items)
    assert "data/ties" not in metrics and "ties" not in line and metrics["data/coerced_null"] == 1
