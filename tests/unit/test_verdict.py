"""Verdict parsing by both rules: "release" (the released RRMs' evaluation parser) and "lenient"
(last complete box after the first </think>, normalised)."""

from __future__ import annotations

import math

import pytest

from rrm_ray.judge.verdict import (
    boxed_contents,
    choice_probability,
    choice_verdict,
    describe_choice_probability,
    has_think_format,
    normalize_box_content,
    parse_choice_probability,
    parse_verdict,
    verdict_score,
)

B1, B2 = "\\boxed{Assistant 1}", "\\boxed{Assistant 2}"

# The lenient rule on its own cases.
PARSE_CASES = [
    # (id, text, require_think_close, expected)
    ("plain_1", f"weighing both</think>{B1}", True, 1),
    ("plain_2", f"<think>weighing</think>\nFinal: {B2}", True, 2),
    ("no_think_close", f"<think>weighing {B1}", True, None),
    ("no_think_close_no_tags", B1, True, None),
    ("several_boxes_last_wins", f"</think>{B1} no wait, {B2}", True, 2),
    ("box_only_in_thinking", f"<think>maybe {B1}</think>I cannot decide.", True, None),
    ("thinking_box_then_other_after", f"<think>maybe {B1}</think>{B2}", True, 2),
    ("extra_spaces", "</think>\\boxed{ Assistant  2 }", True, 2),
    ("text_wrapper_nested_braces", "</think>\\boxed{\\text{Assistant 1}}", True, 1),
    ("textbf_wrapper", "</think>\\boxed{\\textbf{Assistant 2}}", True, 2),
    ("mathrm_partial_wrapper", "</think>\\boxed{\\mathrm{Assistant}~1}", True, 1),
    ("lowercase_accepted", "</think>\\boxed{assistant 1}", True, 1),
    ("assistant_3", "</think>\\boxed{Assistant 3}", True, None),
    ("bare_number", "</think>\\boxed{1}", True, None),
    ("trailing_period_inside", "</think>\\boxed{Assistant 1.}", True, None),
    ("truncated_box", "</think>\\boxed{Assist", True, None),
    ("truncated_after_complete_box", f"</think>{B2} so \\boxed{{Assist", True, 2),
    ("unbalanced_inner_brace", "</think>\\boxed{\\text{Assistant 1}", True, None),
    ("stray_closing_brace_ok", f"</think>}} {B1} }}", True, 1),
    ("two_think_closes_first_counts", f"a</think>{B1} b</think>{B2}", True, 2),
    ("two_think_closes_box_between", f"a</think>{B1} more </think>", True, 1),
    ("empty_string", "", True, None),
    ("empty_box", "</think>\\boxed{}", True, None),
    ("direct_without_think", B2, False, 2),
    ("direct_several_boxes", f"{B1} {B2}", False, 2),
    ("direct_with_think_block", f"<think>{B1}</think>{B2}", False, 2),
    ("direct_nothing", "Assistant 1 is better.", False, None),
    ("direct_empty", "", False, None),
]


@pytest.mark.parametrize(
    "text, require, expected", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_verdict_lenient(text, require, expected):
    assert parse_verdict(text, "lenient", require_think_close=require) == expected


# The release's parser, worked by hand through the authors' evaluation code (their reward-bench fork:
# scripts/run_generative.py prepends "<think>", splits on "</think>" and takes element [1], then
# last_boxed_only_string / remove_boxed; rewardbench/generative.py process_judgement for the Skywork
# modifier accepts exactly "Assistant 1" / "Assistant 2"). The issue's cases are 2-8.
# (id, generated text, release verdict, lenient verdict)
RELEASE_TABLE = [
    ("1_plain", r"<think>x</think>\boxed{Assistant 1}", 1, 1),
    ("2_text_wrapper", r"<think>x</think>\boxed{\text{Assistant 1}}", None, 1),
    ("3_lower_case", r"<think>x</think>\boxed{assistant 2}", None, 2),
    ("4_spaces_inside", r"<think>x</think>\boxed{ Assistant 1 }", None, 1),
    ("5_second_think_close_hides_box", r"<think>a</think>b</think>\boxed{Assistant 2}", None, 2),
    ("6_box_between_closes", r"<think>a</think>\boxed{Assistant 2}</think>\boxed{Assistant 1}", 2, 1),
    ("7_cut_off_last_box", r"<think>x</think>\boxed{Assistant 1} then \boxed{Assistant 2", None, 1),
    ("8_space_before_brace", r"<think>x</think>\boxed {Assistant 1}", None, None),
    ("9_no_think_close", r"no think tag \boxed{Assistant 1}", None, None),
    ("10_two_boxes_last_wins", r"<think>x</think>\boxed{Assistant 1}\boxed{Assistant 2}", 2, 2),
    ("11_nested_braces", r"<think>x</think>\boxed{Assistant {1}}", None, None),
    ("12_textbf_wrapper", r"<think>x</think>\boxed{\textbf{Assistant 2}}", None, 2),
    ("13_extra_closing_brace", r"<think>x</think>\boxed{Assistant 1}}", 1, 1),
    ("14_unbalanced_open", r"<think>x</think>\boxed{{Assistant 1}", None, None),
    ("15_box_inside_thinking_ignored", r"<think>\boxed{Assistant 2}</think>\boxed{Assistant 1}", 1, 1),
    ("16_instruction_repeated_after", r"<think>x</think>\boxed{Assistant 1} or \boxed{Assistant 2}.", 2, 2),
    ("17_prompt_opened_think", r"x</think>\boxed{Assistant 2}", 2, 2),
    ("18_fbox", r"<think>x</think>\fbox{Assistant 1}", None, None),
    ("19_no_box", r"<think>x</think>no box", None, None),
    ("20_assistant_3", r"<think>x</think>\boxed{Assistant 3}", None, None),
    ("21_math_dollars", r"<think>x</think>$\boxed{Assistant 2}$", 2, 2),
    ("22_wrapped_then_plain", r"<think>x</think>\boxed{\text{Assistant 2}} i.e. \boxed{Assistant 2}", 2, 2),
]


@pytest.mark.parametrize(
    "text, release, lenient", [c[1:] for c in RELEASE_TABLE], ids=[c[0] for c in RELEASE_TABLE]
)
def test_release_table_by_both_rules(text, release, lenient):
    assert parse_verdict(text) == release  # the default rule is the release's
    assert parse_verdict(text, rule="release") == release
    assert parse_verdict(text, rule="lenient") == lenient


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{Assistant 2}", 2),  # DirectJudge: no thinking block, the whole text is the span
        ("\\boxed{Assistant 1} then \\boxed{Assistant 2", None),  # still the last box, still unclosed
        ("a</think>\\boxed{Assistant 1}</think>\\boxed{Assistant 2}", 1),  # a </think>: the release span
        ("Assistant 1", None),
    ],
)
def test_release_rule_without_thinking(text, expected):
    assert parse_verdict(text, "release", require_think_close=False) == expected


def test_parse_verdict_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        parse_verdict("</think>\\boxed{Assistant 1}", rule="strict")  # type: ignore[arg-type]


def test_parse_verdict_rejects_non_string():
    with pytest.raises(TypeError, match="text must be str"):
        parse_verdict(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{a} \\boxed{b{c}d}", ["a", "b{c}d"]),
        ("\\boxed{open \\boxed{x}", ["x"]),
        ("no boxes", []),
    ],
)
def test_boxed_contents(text, expected):
    assert boxed_contents(text) == expected


@pytest.mark.parametrize(
    "content, expected",
    [
        ("  Assistant   1 ", "Assistant 1"),
        ("\\text{\\textbf{Assistant 2}}", "Assistant 2"),
        ("\\text {Assistant}\\ 2", "Assistant 2"),
        ("\\text{Assistant 1", "\\text{Assistant 1"),
    ],
)
def test_normalize_box_content(content, expected):
    assert normalize_box_content(content) == expected


@pytest.mark.parametrize(
    "text, prompt_opened, expected",
    [
        ("<think>reasoning</think>" + B1, False, True),
        ("reasoning</think>" + B1, True, True),
        ("reasoning</think>" + B1, False, False),
        ("</think><think>", False, False),
        ("<think>never closed " + B1, False, False),
        ("never closed " + B1, True, False),
        ("", True, False),
    ],
)
def test_has_think_format(text, prompt_opened, expected):
    assert has_think_format(text, prompt_opened_think=prompt_opened) is expected


@pytest.mark.parametrize(
    "verdict, label, score",
    [(1, 1, 1.0), (2, 2, 1.0), (1, 2, 0.0), (2, 1, 0.0), (None, 1, 0.5), (None, 2, 0.5)],
)
def test_verdict_score(verdict, label, score):
    assert verdict_score(verdict, label) == score


@pytest.mark.parametrize("verdict, label", [(1, 0), (1, 3), (3, 1)])
def test_verdict_score_rejects_bad_values(verdict, label):
    with pytest.raises(ValueError, match="must be"):
        verdict_score(verdict, label)


# ---- choice probabilities (judge.verdict=choice_prob) -------------------------------------------------
ONE, TWO = 17, 18  # token ids of "1" and "2"


@pytest.mark.parametrize(
    "logprobs, expected",
    [
        ({ONE: math.log(0.3), TWO: math.log(0.1)}, 0.75),  # renormalised over the two digits
        ({ONE: math.log(0.3), TWO: math.log(0.1), 5: math.log(0.6)}, 0.75),  # other tokens ignored
        ({ONE: -2.0, TWO: -2.0}, 0.5),
        ({ONE: -1000.0, TWO: -1001.0}, 1 / (1 + math.exp(-1.0))),  # both tiny: still exact
        ({ONE: -math.inf, TWO: -3.0}, 0.0),
    ],
)
def test_choice_probability_renormalises_over_the_two_digits(logprobs, expected):
    assert math.isclose(choice_probability(logprobs, (ONE, TWO)), expected, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize(
    "logprobs, ids, match",
    [
        ({ONE: -1.0}, (ONE, TWO), "no log-prob for verdict token"),
        ({ONE: -1.0, TWO: -1.0}, (ONE, ONE), "two distinct ids"),
        ({ONE: -math.inf, TWO: -math.inf}, (ONE, TWO), "no choice"),
    ],
)
def test_choice_probability_rejects_what_it_cannot_read(logprobs, ids, match):
    with pytest.raises(ValueError, match=match):
        choice_probability(logprobs, ids)


@pytest.mark.parametrize("p, verdict", [(0.9, 1), (0.5000001, 1), (0.5, None), (0.2, 2), (0.0, 2)])
def test_choice_verdict_and_trace_text_round_trip(p, verdict):
    assert choice_verdict(p) == verdict
    assert parse_choice_probability(describe_choice_probability(p)) == p  # exact, for the cache
    assert parse_choice_probability(f"</think>{B1}") is None


def test_parse_choice_probability_rejects_other_numbers():
    assert parse_choice_probability("P(Assistant 1)=1.5") is None
    assert parse_choice_probability("P(Assistant 1)=abc") is None
