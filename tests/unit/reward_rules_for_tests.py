"""Rules for the reward-runner tests; a module of their own so spawned workers can import them."""

from __future__ import annotations

import os
import re
import time


def hang(response: str, answer: str | None) -> float:
    """Never returns in time: the runner must kill the worker."""
    time.sleep(1000)
    return 0.0


def boom(response: str, answer: str | None) -> float:
    raise RuntimeError(f"boom on {response!r}")


def equals(response: str, answer: str | None) -> float:
    return 1.0 if response == answer else 0.0


def scripted(response: str, answer: str | None) -> float:
    """Misbehaves when the response says so ("hang", "regex", "boom", "die", "nan", "slow"), else `equals`."""
    if response == "hang":
        return hang(response, answer)
    if response == "boom":
        return boom(response, answer)
    if response == "regex":  # catastrophic backtracking: stuck in C code, deaf to Python-level interrupts
        return float(re.match(r"(a+)+$", "a" * 64 + "b") is not None)
    if response == "die":
        os._exit(3)
    if response == "nan":
        return float("nan")
    if response == "slow":
        time.sleep(0.3)
        return 0.5
    return equals(response, answer)


NOT_A_FUNCTION = 42
