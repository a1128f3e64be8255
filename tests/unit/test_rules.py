"""Rule rewards: box extraction, each rule's table, the registry, weighted sums, the doctests."""

from __future__ import annotations

import doctest

import pytest

from rrm_ray.rewards import rules
from rrm_ray.rewards.rules import (
    RULES,
    MissingAnswerError,
    RuleError,
    WeightedSum,
    arithmetic_reward,
    boxed_format_reward,
    combined,
    exact_match_reward,
    extract_boxed,
    get_rule,
    math_verify_reward,
    resolve_rule,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{42}", "42"),
        (r"so \boxed{1} no wait \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),
        (r"\boxed{{a}{b}}", "{a}{b}"),
        (r"\boxed {7}", "7"),
        (r"\boxed{}", ""),
        (r"\boxed{\boxed{3}}", r"\boxed{3}"),  # outermost box
        (r"\boxed{5} then truncated \boxed{6", "5"),  # an unclosed box is skipped
        (r"\boxed{6", None),
        ("no box at all", None),
        ("", None),
        (r"\fbox{1}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        (r"\boxed{42}", "42", 1.0),
        (r"\boxed{ 42 }", "42", 1.0),
        (r"\boxed{42.}", "42", 1.0),
        (r"\boxed{42.0}", "42", 1.0),
        (r"\boxed{$42$}", "42", 1.0),
        (r"\boxed{+42}", "42", 1.0),
        (r"\boxed{-7}", "-7", 1.0),
        (r"\boxed{1,000}", "1000", 1.0),
        (r"\boxed{41} hmm, no: \boxed{42}", "42", 1.0),
        (r"\boxed{42} hmm, no: \boxed{41}", "42", 0.0),
        (r"\boxed{42.5}", "42", 0.0),
        (r"\boxed{x = 42}", "42", 0.0),
        (r"\boxed{4 2}", "42", 0.0),
        (r"\boxed{}", "42", 0.0),
        ("42", "42", 0.0),  # the format is part of the task
        (r"\boxed{42", "42", 0.0),
        (r"\boxed{42}", " 42 ", 1.0),
    ],
)
def test_arithmetic_reward(response, answer, expected):
    assert arithmetic_reward(response, answer) == expected


def test_arithmetic_reward_needs_an_integer_answer():
    with pytest.raises(ValueError, match="integer reference answer, got 'forty'"):
        arithmetic_reward(r"\boxed{40}", "forty")


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        (r"\boxed{Paris}", "paris", 1.0),
        (r"\boxed{  New   York }", "new york", 1.0),
        ("  New\nYork  ", "New York", 1.0),  # no box: the whole response
        (r"\boxed{London} \boxed{Paris}", "Paris", 1.0),
        (r"\boxed{Paris} is it", "Paris is it", 0.0),  # a box wins over the surrounding text
        ("Paris.", "Paris", 0.0),
    ],
)
def test_exact_match_reward(response, answer, expected):
    assert exact_match_reward(response, answer) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"the answer is \boxed{3}.", 1.0),
        (r"\boxed{\frac{1}{2}}", 1.0),
        (r"\boxed{1} \boxed{2}", 0.0),  # hedging
        (r"\boxed{\boxed{2}}", 0.0),  # nested counts twice
        (r"\boxed{3} and a dangling \boxed{", 0.0),
        (r"\boxed{   }", 0.0),
        ("3", 0.0),
    ],
)
def test_boxed_format_reward(response, expected):
    assert boxed_format_reward(response, None) == expected
    assert boxed_format_reward(response, "anything") == expected


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{1/2}", r"\frac{1}{2}", 1.0),
        (r"\boxed{2^{1/2}}", r"\sqrt{2}", 1.0),
        (r"\boxed{\dfrac{3}{4}}", "$0.75$", 1.0),
        (r"\boxed{1} no, \boxed{2}", "2", 1.0),
        (r"\boxed{2} no, \boxed{1}", "2", 0.0),
        ("The final answer is 12.", "12", 1.0),  # no box: math-verify reads the whole response
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        (r"\boxed{}", "0.5", 0.0),
        ("I do not know.", "0.5", 0.0),
    ],
)
def test_math_verify_reward(response, answer, expected):
    assert math_verify_reward(response, answer) == expected


def test_math_verify_works_off_the_main_thread():
    """Its signal-based timeout is off, so a thread (or a pool worker's thread) can call it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_verify_reward, r"\boxed{\frac{1}{2}}", "0.5").result(timeout=30) == 1.0


def test_math_verify_rejects_an_unparseable_reference():
    with pytest.raises(ValueError, match="could not parse the reference answer"):
        math_verify_reward(r"\boxed{1}", "")


@pytest.mark.parametrize("name", ["arithmetic", "exact_match", "math_verify"])
def test_rules_that_compare_need_an_answer(name):
    with pytest.raises(MissingAnswerError, match=f"rule '{name}' needs a reference answer"):
        RULES[name](r"\boxed{1}", None)


def test_registry_and_import_paths():
    assert set(RULES) == {
        "arithmetic",
        "boxed_format",
        "exact_match",
        "math_verify",
        "judge_rrm",
        "judge_direct",
    }
    for name, fn in RULES.items():
        assert get_rule(name) is fn
    assert get_rule("rrm_ray.rewards.rules:exact_match_reward") is exact_match_reward


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("arithmetics", r"unknown reward rule 'arithmetics'; known rules: arithmetic, boxed_format, "),
        ("", "unknown reward rule ''"),
        (":fn", "must look like 'package.module:function'"),
        ("os.path:", "must look like 'package.module:function'"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("rrm_ray.rewards.rules:nope", "has no attribute 'nope'"),
        ("rrm_ray.rewards.rules:RULES", "'RULES' is a dict, expected a function"),
    ],
)
def test_get_rule_errors(name, match):
    with pytest.raises(RuleError, match=match):
        get_rule(name)


def test_combined_weights_and_resolve():
    rule = combined({"arithmetic": 1.0, "boxed_format": 0.1})
    assert isinstance(rule, WeightedSum)
    assert rule(r"\boxed{4}", "4") == pytest.approx(1.1)
    assert rule(r"\boxed{3}", "4") == pytest.approx(0.1)
    assert rule("4", "4") == 0.0
    assert resolve_rule({"exact_match": 2})(r"\boxed{a}", "a") == 2.0
    assert resolve_rule("arithmetic") is arithmetic_reward


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({}, "at least one rule"),
        ({"arithmetic": "1"}, "must be a finite number"),
        ({"arithmetic": True}, "must be a finite number"),
        ({"arithmetic": float("inf")}, "must be a finite number"),
        ({"nope": 1.0}, "unknown reward rule 'nope'"),
    ],
)
def test_combined_errors(spec, match):
    with pytest.raises(RuleError, match=match):
        resolve_rule(spec)


def test_resolve_rule_rejects_other_types():
    with pytest.raises(RuleError, match="got list"):
        resolve_rule(["arithmetic"])


def test_warm_up_imports_math_verify_once(monkeypatch):
    calls = []
    monkeypatch.setitem(rules._WARM_UPS, math_verify_reward, lambda: calls.append(1))
    rules.warm_up(arithmetic_reward)
    rules.warm_up(math_verify_reward)
    rules.warm_up(combined({"math_verify": 1.0, "boxed_format": 0.1}))
    assert calls == [1, 1]


def test_docstring_examples():
    result = doctest.testmod(rules)
    assert result.attempted >= 10
    assert result.failed == 0


@pytest.mark.parametrize(
    ("rule", "response", "label", "expected"),
    [
        ("judge_rrm", r"compare...</think> \boxed{Assistant 1}", "1", 1.0),
        ("judge_rrm", r"compare...</think> \boxed{Assistant 2}", "1", -1.0),
        ("judge_rrm", r"\boxed{Assistant 1}", "1", -1.0),  # no </think>: malformed
        ("judge_rrm(correct=2,wrong=-1,format_fail=-0.5)", r"no verdict", "2", -0.5),
        ("judge_rrm(correct=2,wrong=-1,format_fail=-0.5)", r"x</think>\boxed{Assistant 2}", "2", 2.0),
        ("judge_direct", r"\boxed{Assistant 2}", "2", 1.0),
        ("judge_direct", r"\boxed{Assistant 2}", "1", -1.0),
    ],
)
def test_judge_verdict_rules(rule, response, label, expected):
    from rrm_ray.rewards.rules import get_rule

    assert get_rule(rule)(response, label) == expected


def test_judge_rule_rejects_bad_labels_and_params():
    from rrm_ray.rewards.rules import RuleError, get_rule

    with pytest.raises(ValueError, match="label must be '1' or '2'"):
        get_rule("judge_rrm")("x</think>\\boxed{Assistant 1}", "A")
    with pytest.raises(RuleError, match="expected judge_rrm"):
        get_rule("judge_rrm(nope=1)")
