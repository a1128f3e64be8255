"""Budget forcing: how a thought is closed and what the loss may train on."""

from __future__ import annotations

import pytest

from rrm_ray.judge.budget import (
    FORCED_CLOSE,
    close_thinking,
    close_thinking_text,
    verdict_allowance,
)
from rrm_ray.rewards.judge_reward import judge_reward

CLOSE_IDS = [90, 91, 92]  # stands for the tokens of FORCED_CLOSE
EOS = 0


def test_a_thought_the_model_closed_is_kept_as_sampled():
    t = close_thinking("check both.</think>", [5, 6, 7], [-0.1, -0.2, -0.3], CLOSE_IDS, {EOS})
    assert t.token_ids == [5, 6, 7] and t.mask == [1, 1, 1] and not t.forced
    assert t.logprobs == [-0.1, -0.2, -0.3] and t.text == "check both.</think>"


def test_an_open_thought_is_closed_by_the_engine_and_masked():
    t = close_thinking("still thinking", [5, 6], [-0.1, -0.2], CLOSE_IDS, {EOS})
    assert t.forced and t.text == "still thinking" + FORCED_CLOSE
    assert t.token_ids == [5, 6, 90, 91, 92]
    assert t.mask == [1, 1, 0, 0, 0]
    assert t.logprobs == [-0.1, -0.2, 0.0, 0.0, 0.0]
    assert t.num_tokens == 5


def test_a_thought_that_ended_with_eos_drops_it_before_the_close():
    t = close_thinking("gave up", [5, EOS], [-0.1, -0.9], CLOSE_IDS, {EOS})
    assert t.token_ids == [5, 90, 91, 92] and t.mask == [1, 0, 0, 0] and t.logprobs[:1] == [-0.1]


def test_tokens_and_logprobs_must_agree():
    with pytest.raises(ValueError, match="2 tokens but 1 log-probs"):
        close_thinking("x", [1, 2], [0.0], CLOSE_IDS)


def test_text_form_matches_token_form():
    assert close_thinking_text("a</think>") == "a</think>"
    assert close_thinking_text("a") == "a" + FORCED_CLOSE


def test_a_forced_close_then_a_verdict_is_well_formed_for_the_rule_reward():
    text = close_thinking_text("Assistant 1 adds wrong") + "\\boxed{Assistant 2}"
    r = judge_reward(text, 2, prompt_opened_think=True, mode="rrm")
    assert r.format_ok and r.correct
    # without a verdict after the close it is still a format failure
    assert not judge_reward(close_thinking_text("hmm") + "no box", 2, True, "rrm").format_ok


@pytest.mark.parametrize(("max_tokens", "used", "left"), [(64, 40, 24), (64, 63, 1), (64, 70, 1)])
def test_verdict_allowance(max_tokens, used, left):
    assert verdict_allowance(max_tokens, used) == left
