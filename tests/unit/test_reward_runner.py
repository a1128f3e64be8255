"""RewardRunner: worker processes, per-item timeouts, errors counted, never a hang."""

from __future__ import annotations

import time

import pytest

from rrm_ray.rewards.rules import RuleError
from rrm_ray.rewards.runner import RewardRunner, RewardRunnerError

RULES = "tests.unit.reward_rules_for_tests"
TIMEOUT_S = 1.0
FALLBACK = -1.0


@pytest.fixture(scope="module")
def runner():
    """Two workers running `scripted`, kept across tests like the real reward actor keeps them."""
    with RewardRunner(f"{RULES}:scripted", timeout_s=TIMEOUT_S, fallback_reward=FALLBACK, num_workers=2) as r:
        r.score(["warm"], ["warm"])  # pay the spawn once, outside the timed tests
        yield r


def test_scores_registered_rule_in_order():
    with RewardRunner("arithmetic", timeout_s=5.0, fallback_reward=0.0) as r:
        batch = r.score([r"\boxed{3}", r"\boxed{4}", "3", r"\boxed{ 10 }"], ["3", "3", "3", "10"])
    assert batch.rewards == [1.0, 0.0, 0.0, 1.0]
    assert (batch.timeouts, batch.errors, batch.error_messages, batch.failed_indices) == (0, 0, [], [])
    assert batch.seconds > 0


def test_math_verify_in_workers():
    """math-verify runs with its signal timeouts off, so it works in a worker and is bounded by ours."""
    with RewardRunner("math_verify", timeout_s=10.0, fallback_reward=0.0, num_workers=2) as r:
        batch = r.score([r"\boxed{\frac{1}{2}}", r"\boxed{0.4}", "no idea"], ["0.5", "0.5", "0.5"])
    assert batch.rewards == [1.0, 0.0, 0.0]
    assert batch.errors == batch.timeouts == 0


def test_weighted_sum_spec():
    with RewardRunner({"arithmetic": 1.0, "boxed_format": 0.25}, timeout_s=5.0, fallback_reward=0.0) as r:
        batch = r.score([r"\boxed{3}", r"\boxed{4}", "3"], ["3", "3", "3"])
    assert batch.rewards == [1.25, 0.25, 0.0]


def test_many_items_keep_their_order(runner):
    n = 300
    responses = [str(i) if i % 3 else "x" for i in range(n)]
    answers = [str(i) for i in range(n)]
    batch = runner.score(responses, answers)
    assert batch.rewards == [1.0 if i % 3 else 0.0 for i in range(n)]
    assert batch.errors == batch.timeouts == 0


def test_hang_gets_fallback_and_later_items_are_scored(runner):
    responses = ["a", "hang", "b", "boom", "c", "slow", "d"]
    answers = ["a", "a", "b", "b", "x", "slow", "d"]
    t0 = time.monotonic()
    batch = runner.score(responses, answers)
    elapsed = time.monotonic() - t0
    assert batch.rewards == [1.0, FALLBACK, 1.0, FALLBACK, 0.0, 0.5, 1.0]
    assert batch.timeouts == 1
    assert batch.errors == 1
    assert batch.failed_indices == [1, 3]
    assert batch.error_messages == ["item 3: RuntimeError: boom on 'boom'"]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 4.0
    # The killed worker was replaced: the runner keeps working at full strength.
    assert runner.score(["a", "b"], ["a", "b"]).rewards == [1.0, 1.0]


def test_hang_inside_a_chunk_requeues_the_rest(runner):
    n = 40  # several items per chunk: the items after the hung one go back to the queue
    responses = [str(i) for i in range(n)]
    responses[17] = "regex"
    batch = runner.score(responses, [str(i) for i in range(n)])
    assert batch.rewards == [FALLBACK if i == 17 else 1.0 for i in range(n)]
    assert (batch.timeouts, batch.errors, batch.failed_indices) == (1, 0, [17])


def test_consecutive_hangs_on_one_worker():
    with RewardRunner(f"{RULES}:scripted", timeout_s=0.5, fallback_reward=FALLBACK) as r:
        batch = r.score(["hang", "hang", "ok"], ["", "", "ok"])
    assert batch.rewards == [FALLBACK, FALLBACK, 1.0]
    assert (batch.timeouts, batch.errors) == (2, 0)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ("die", "worker died (exit code 3)"),
        ("nan", "ValueError: rule returned a non-finite reward nan"),
        ("boom", "RuntimeError: boom"),
    ],
)
def test_failures_are_counted_as_errors(runner, response, message):
    batch = runner.score(["ok", response, "ok"], ["ok", "x", "ok"])
    assert batch.rewards == [1.0, FALLBACK, 1.0]
    assert (batch.timeouts, batch.errors, batch.failed_indices) == (0, 1, [1])
    assert batch.error_messages[0].startswith(f"item 1: {message}")


def test_error_messages_are_capped(runner):
    batch = runner.score(["boom"] * 12, ["x"] * 12)
    assert batch.errors == 12
    assert len(batch.error_messages) == 5
    assert batch.rewards == [FALLBACK] * 12


def test_empty_and_mismatched_inputs(runner):
    empty = runner.score([], [])
    assert (empty.rewards, empty.timeouts, empty.errors, empty.failed_indices) == ([], 0, 0, [])
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        runner.score(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (
            "no_such_rule",
            "known rules: arithmetic, boxed_format, exact_match, judge_direct, judge_rrm, math_verify",
        ),
        ("no_such_pkg.mod:fn", "cannot import module 'no_such_pkg.mod'"),
        (f"{RULES}:missing", "has no attribute 'missing'"),
        (f"{RULES}:NOT_A_FUNCTION", "expected a function"),
        ({"arithmetic": float("nan")}, "finite number"),
    ],
)
def test_bad_rule_fails_in_constructor(rule, match):
    with pytest.raises(RuleError, match=match):
        RewardRunner(rule, timeout_s=1.0, fallback_reward=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"fallback_reward": float("nan")}, "fallback_reward"),
        ({"num_workers": 0}, "num_workers"),
        ({"start_method": "fork"}, "start_method"),
        ({"startup_timeout_s": 0}, "startup_timeout_s"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"timeout_s": 1.0, "fallback_reward": 0.0} | kwargs
    with pytest.raises(ValueError, match=match):
        RewardRunner("arithmetic", **args)


def test_interrupted_score_leaves_no_stale_work(monkeypatch):
    import rrm_ray.rewards.runner as runner_module

    real_wait = runner_module.wait
    with RewardRunner(f"{RULES}:scripted", timeout_s=5.0, fallback_reward=FALLBACK) as r:
        r.score(["warm"], ["warm"])

        def interrupted_wait(conns, timeout):
            real_wait(conns, timeout=0.05)
            raise KeyboardInterrupt

        monkeypatch.setattr(runner_module, "wait", interrupted_wait)
        with pytest.raises(KeyboardInterrupt):
            r.score(["slow", "slow", "slow"], ["", "", ""])
        monkeypatch.setattr(runner_module, "wait", real_wait)
        # The worker that held the abandoned items was replaced: no report of theirs leaks in here.
        assert r.score(["boom", "b", "c"], ["a", "x", "c"]).rewards == [FALLBACK, 0.0, 1.0]


def test_close_is_idempotent_and_final():
    r = RewardRunner(f"{RULES}:equals", timeout_s=5.0, fallback_reward=0.0)
    processes = [w.process for w in r._workers]
    r.close()
    r.close()
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(RewardRunnerError, match="after close"):
        r.score(["a"], ["a"])


def test_an_item_that_got_a_positive_fallback_is_not_correct():
    """reward.fallback > 0 rewards an item whose rule failed, but the reward actor never calls it correct."""
    from actors.reward import RewardWorker

    worker = RewardWorker(f"{RULES}:scripted", TIMEOUT_S, fallback=0.5, num_workers=1)
    try:
        scored = worker.score(["a", "boom", "x"], ["a", "b", None])
    finally:
        worker.close()
    assert scored.rewards == [1.0, 0.5, None] and scored.correct == [True, False, None]
    assert scored.errors == 1
