"""Fault injection for the fault tests: real engines and real crashes, no mocks. Workers import this
module by name, so it stays small and imports nothing of pytest."""

from __future__ import annotations

import os
import time
from typing import Any

from actors.judge import JudgeWorker
from actors.reward import RewardWorker
from tests.integration.rules import first_time, kill_once


class JudgeDyingOnce(JudgeWorker):
    """A real judge engine whose first `rank` call kills its own process mid-call (then Ray restarts
    it); the marker file named by RRM_TEST_KILL_JUDGE_MARKER keeps the restarted engine alive."""

    def rank(self, *args: Any, **kwargs: Any) -> Any:
        kill_once("RRM_TEST_KILL_JUDGE_MARKER", os.getpid())
        return super().rank(*args, **kwargs)


class RewardHangingOnce(RewardWorker):
    """A real reward actor whose first `score` call hangs (alive, never answering: a stuck syscall, a
    deadlock); the marker file named by RRM_TEST_HANG_REWARD_MARKER keeps its restarted self working."""

    def score(self, *args: Any, **kwargs: Any) -> Any:
        if first_time("RRM_TEST_HANG_REWARD_MARKER"):
            time.sleep(3600)
        return super().score(*args, **kwargs)
