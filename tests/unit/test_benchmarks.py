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
    load_pandalm,
    load_rewardbench,
    majority_label,
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
    items = load_rewardbench(FIXTURES / "rewardbench_tiny.jsonl")
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
    items = load_rewardbench(FIXTURES / "rewardbench_tiny.jsonl")
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
            {"prompt": "p", "chosen": "c", "rejected": 3, "subset": "s", "id": 1},
            "rejected",
            "expected a string",
        ),
        ({"prompt": "", "chosen": "c", "rejected": "r", "subset": "s", "id": 1}, "prompt", "non-empty"),
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
    items = load_pandalm(FIXTURES / "pandalm_tiny.json")
    assert [it.label for it in items] == [1, 2, 0, 0, 2, 1]
    assert items[0].query == "Translate 'hello' into French."
    assert items[5].query == "Sort the numbers ascending.\n\n3, 1, 2"  # instruction, blank line, input
    assert items[3].annotations == (1, 2, 0) and items[3].idx == 4


def test_score_pandalm_by_hand():
    labels = [it.label for it in load_pandalm(FIXTURES / "pandalm_tiny.json")]  # [1, 2, 0, 0, 2, 1]
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
        ({"response1": ""}, "response1", "non-empty"),
        ({"input": 5}, "input", "expected a string"),
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
