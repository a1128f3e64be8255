"""Best-of-N against the truth: pick accuracy, oracle and the exact random-pick expectation, the
settings lists, and the table."""

from __future__ import annotations

import pytest

from rrm_ray.judge import best_of_n as bon
from rrm_ray.judge.best_of_n import BestOfNError, PickScores, SettingRow
from rrm_ray.validation import load_config


def test_pick_accuracy_oracle_and_random_over_prompts_with_answers():
    correct = [
        [True, False, False, False],  # picked 0: right; random 1/4
        [False, False, True, True],  # picked 0: wrong, but the oracle has it; random 1/2
        [False, False, False, False],  # nothing right: no picker can score
        None,  # no answer: left out
    ]
    scores = bon.pick_scores(correct, [0, 0, 1, 3])
    assert scores.prompts == 3
    assert scores.pick_accuracy == pytest.approx(1 / 3)
    assert scores.oracle == pytest.approx(2 / 3)
    assert scores.random_pick == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)  # exact expectation, not sampled


def test_no_answers_give_no_rates():
    assert bon.pick_scores([None, None], [0, 1]) == PickScores(0, None, None, None)


def test_a_pick_outside_the_responses_is_a_bug_not_a_score():
    with pytest.raises(ValueError, match="pick 2 outside the 2 responses"):
        bon.pick_scores([[True, False]], [2])
    with pytest.raises(ValueError, match="2 prompts of flags but 1 picks"):
        bon.pick_scores([[True], [False]], [0])


def test_methods_and_votes_lists_become_settings():
    assert bon.parse_methods("knockout, elo", "swiss") == ["knockout", "elo"]
    assert bon.parse_methods(None, "swiss") == ["swiss"]
    assert bon.parse_votes("1,3", 5) == [1, 3] and bon.parse_votes(None, 5) == [5]
    assert bon.settings(["knockout", "elo"], [1, 3]) == [
        ("knockout", 1),
        ("knockout", 3),
        ("elo", 1),
        ("elo", 3),
    ]


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (bon.parse_methods, "knockout,bracket", "'bracket' is not a method"),
        (bon.parse_methods, "elo,elo", "listed twice"),
        (bon.parse_votes, "1,x", "'x' is not an integer"),
        (bon.parse_votes, "0", "at least 1"),
        (bon.parse_votes, "3,3", "listed twice"),
    ],
)
def test_bad_lists_say_what_is_wrong(parse, text, message):
    with pytest.raises(BestOfNError, match=message):
        parse(text, 1)


def test_correctness_is_the_accuracy_rule_as_in_training():
    assert bon.correctness_rule(load_config(None).reward) == "arithmetic"
    weighted = load_config(None, ["reward.rule_weights={math_verify: 1.0, boxed_format: 0.2}"]).reward
    assert bon.correctness_rule(weighted) == "math_verify"
    explicit = load_config(None, ["reward.accuracy_rule=exact_match"]).reward
    assert bon.correctness_rule(explicit) == "exact_match"


def _table_rows(scores: PickScores) -> list[SettingRow]:
    return [SettingRow("knockout", 1, 4, scores, 3, 1.25), SettingRow("elo", 3, 4, scores, 18, 4.5)]


def test_the_table_puts_settings_side_by_side():
    scores = bon.pick_scores([[True, False], [False, False]], [0, 1])
    lines = bon.settings_table(_table_rows(scores), prompts=2).splitlines()
    assert lines[0].split() == [
        "method",
        "votes",
        "n",
        "judge",
        "pick",
        "acc",
        "oracle",
        "random",
        "judge",
        "calls",
        "seconds",
    ]
    assert lines[2].split() == ["knockout", "1", "4", "0.500", "0.500", "0.250", "3", "1.2"]
    assert lines[3].split() == ["elo", "3", "4", "0.500", "0.500", "0.250", "18", "4.5"]
    assert lines[-1] == "accuracies over all 2 prompts (each has a reference answer)"
    metrics = bon.metrics(_table_rows(scores))
    assert metrics["best_of_n/elo/votes_3/pick_accuracy"] == 0.5 and metrics["best_of_n/oracle"] == 0.5
    assert metrics["best_of_n/random_pick"] == 0.25 and metrics["best_of_n/knockout/votes_1/judge_calls"] == 3


def test_the_table_says_when_prompts_have_no_answers():
    none = bon.pick_scores([None, None, None], [0, 0, 0])
    lines = bon.settings_table(_table_rows(none), prompts=3).splitlines()
    assert lines[2].split()[3:6] == ["-", "-", "-"]
    assert lines[-1] == "no prompt has a reference answer (3 prompts): only the picks are written"
    assert "best_of_n/oracle" not in bon.metrics(_table_rows(none))
    some = bon.pick_scores([[True], None, None], [0, 0, 0])
    assert bon.settings_table(_table_rows(some), prompts=3).endswith("the other 2 have picks only")
