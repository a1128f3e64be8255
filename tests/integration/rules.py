"""Reward rules for integration tests: a random tiny model never answers arithmetic, so these give
rewards that vary between samples (a real learning signal) whatever the model writes."""

from __future__ import annotations

import os
import signal
import time


def count_vowels(response: str, answer: str | None) -> float:
    return sum(ch in "aeiou" for ch in response.lower()) / 10.0


def kill_once(marker_env: str, pid: int) -> None:
    """SIGKILL process `pid` the first time this runs anywhere: a real crash, for the fault tests. The marker
    file named by the environment variable `marker_env` (unset: never kill) is created atomically on the
    way, so the actor Ray restarts, and every later call, live on."""
    marker = os.environ.get(marker_env)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(pid, signal.SIGKILL)


def count_vowels_killing_the_reward_actor_once(response: str, answer: str | None) -> float:
    """`count_vowels`, but the first item scored kills the reward actor mid-call: rules run in processes
    the reward actor spawned (rrm_ray.rewards.runner), so the actor is this process's parent."""
    kill_once("RRM_TEST_KILL_REWARD_MARKER", os.getppid())
    return count_vowels(response, answer)


def first_time(marker_env: str) -> bool:
    """True the first time this runs anywhere (the marker file named by `marker_env` is created
    atomically); False ever after, and when the variable is unset."""
    marker = os.environ.get(marker_env)
    if not marker:
        return False
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def count_vowels_hanging_on_hang(response: str, answer: str | None) -> float:
    """`count_vowels`, but a response that says "hang" never gets its reward: a rule stuck for good."""
    if "hang" in response:
        time.sleep(3600)
    return count_vowels(response, answer)
