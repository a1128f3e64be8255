"""The rule reward for judge training: format, verdict position and label, configured values."""

from __future__ import annotations

import pytest

from rrm_ray.judge.verdict import parse_verdict
from rrm_ray.rewards.judge_reward import JudgeRewardResult, judge_reward
from tests.unit.test_verdict import RELEASE_TABLE

A1, A2 = "\\boxed{Assistant 1}", "\\boxed{Assistant 2}"

# The lenient rule: (output, label, prompt_opened_think, mode) -> (reward, format_ok, verdict, correct)
CASES = [
    # RRM mode, full think block in the output.
    (f"<think>compare</think>\n{A1}", 1, False, "rrm", (1.0, True, 1, True)),
    (f"<think>compare</think>\n{A1}", 2, False, "rrm", (-1.0, True, 1, False)),
    # The prompt opened the block: only </think> is needed ...
    (f"compare</think>\n{A2}", 2, True, "rrm", (1.0, True, 2, True)),
    # ... but without the prompt's <think> the same output is malformed (verdict still read).
    (f"compare</think>\n{A2}", 2, False, "rrm", (-1.0, False, 2, False)),
    # Tags out of order.
    (f"</think><think>{A1}", 1, False, "rrm", (-1.0, False, 1, False)),
    # Never stops thinking: a box inside the thinking does not count.
    (f"<think>maybe {A1}", 1, False, "rrm", (-1.0, False, None, False)),
    (f"<think>maybe {A1}</think> done", 1, False, "rrm", (-1.0, False, None, False)),
    # The last box after the first </think> wins; boxes while thinking are ignored.
    (f"<think>maybe {A1}</think>{A1} no, {A2}", 2, False, "rrm", (1.0, True, 2, True)),
    # Only "Assistant 1" / "Assistant 2" are verdicts.
    ("<think>x</think>\\boxed{Assistant 3}", 1, False, "rrm", (-1.0, False, None, False)),
    ("<think>x</think>\\boxed{tie}", 2, True, "rrm", (-1.0, False, None, False)),
    ("<think>x</think>", 1, False, "rrm", (-1.0, False, None, False)),
    ("", 1, True, "rrm", (-1.0, False, None, False)),
    # Direct mode: no thinking needed, last box in the text.
    (A2, 2, False, "direct", (1.0, True, 2, True)),
    (A2, 1, False, "direct", (-1.0, True, 2, False)),
    (f"{A1} or rather {A2}", 2, False, "direct", (1.0, True, 2, True)),
    (f"<think>hm</think>{A1}", 1, True, "direct", (1.0, True, 1, True)),
    ("Assistant 1 is better", 1, False, "direct", (-1.0, False, None, False)),
]


@pytest.mark.parametrize("output, label, opened, mode, expected", CASES)
def test_judge_reward_table_lenient(output, label, opened, mode, expected):
    assert judge_reward(output, label, opened, mode, rule="lenient") == JudgeRewardResult(*expected)


@pytest.mark.parametrize("text", [c[1] for c in RELEASE_TABLE], ids=[c[0] for c in RELEASE_TABLE])
@pytest.mark.parametrize("label", [1, 2])
@pytest.mark.parametrize("opened", [True, False])
def test_release_rule_rewards_exactly_what_the_release_parser_accepts(text, label, opened):
    """A judge trained with the default rule earns +1 only where the release's evaluation parser reads
    the right verdict, -1 where it reads the wrong one, and the format penalty where it reads none."""
    read = parse_verdict(text, "release")
    result = judge_reward(text, label, opened, "rrm")
    assert result.verdict == read and result.format_ok == (read is not None)
    assert result.reward == (1.0 if read == label else -1.0)
    assert result.correct == (read == label)
    malformed = judge_reward(text, label, opened, "rrm", format_fail_reward=-2.0).reward
    assert malformed == (-2.0 if read is None else result.reward)


def test_release_rule_is_the_default_and_differs_from_lenient_on_a_wrapped_box():
    wrapped = "<think>x</think>\\boxed{\\text{Assistant 1}}"
    assert judge_reward(wrapped, 1, True).reward == -1.0  # the release reads no verdict
    assert judge_reward(wrapped, 1, True, rule="lenient").reward == 1.0


@pytest.mark.parametrize("verdict_box, label_first, label_swapped", [(A1, 1.0, -1.0), (A2, -1.0, 1.0)])
def test_swapped_order_flips_the_reward(verdict_box, label_first, label_swapped):
    # The same pair shown with the chosen response first (label 1) and then swapped (label 2):
    # an identical output is right in exactly one of the two orders.
    out = f"<think>compare</think>{verdict_box}"
    assert judge_reward(out, 1, False, "rrm").reward == label_first
    assert judge_reward(out, 2, False, "rrm").reward == label_swapped


@pytest.mark.parametrize(
    "output, label, expected",
    [
        (f"<think>x</think>{A1}", 1, 2.0),  # correct
        (f"<think>x</think>{A1}", 2, -0.5),  # wrong
        (f"<think>x {A1}", 1, -3.0),  # format failure
        ("<think>x</think>", 2, -3.0),
    ],
)
def test_configured_values(output, label, expected):
    r = judge_reward(
        output, label, False, "rrm", correct_reward=2.0, wrong_reward=-0.5, format_fail_reward=-3.0
    )
    assert r.reward == expected


def test_defaults_are_the_paper_values():
    # +1 right, -1 wrong, -1 malformed; mode defaults to "rrm".
    assert judge_reward(f"<think>x</think>{A1}", 1, False).reward == 1.0
    assert judge_reward(f"<think>x</think>{A1}", 2, False).reward == -1.0
    assert judge_reward("x", 1, False).reward == -1.0


@pytest.mark.parametrize(
    "kwargs, exc, needle",
    [
        ({"label": 0}, ValueError, "label must be 1 or 2"),
        ({"mode": "cot"}, ValueError, "mode must be"),
        ({"output": None}, TypeError, "output must be str"),
        ({"rule": "strict"}, ValueError, "rule must be one of"),
    ],
)
def test_bad_arguments(kwargs, exc, needle):
    args = {"output": "x", "label": 1, "prompt_opened_think": False, "mode": "rrm"} | kwargs
    with pytest.raises(exc, match=needle):
        judge_reward(**args)


def test_order_accuracy_splits_by_where_the_better_answer_was_shown():
    from rrm_ray.rewards.judge_reward import order_accuracy

    labels = [1, 1, 2, 2, 2]
    always_second = [lab == 2 for lab in labels]
    assert order_accuracy("eval", labels, always_second) == {
        "eval/accuracy_better_first": 0.0,
        "eval/accuracy_better_second": 1.0,
    }
    assert order_accuracy("x", [2], [False]) == {"x/accuracy_better_second": 0.0}
