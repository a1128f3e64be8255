"""Fault injection for the fault tests: real engines and real crashes, no mocks. Workers import this
module by name, so it stays small and imports nothing of pytest."""

from __future__ import annotations

import os
from typing import Any

from actors.judge import JudgeWorker
from tests.integration.rules import kill_once


class JudgeDyingOnce(JudgeWorker):
    """A real judge engine whose first `rank` call kills its own process mid-call (then Ray restarts
    it); the marker file named by RRM_TEST_KILL_JUDGE_MARKER keeps the restarted engine alive."""

    def rank(self, *args: Any, **kwargs: Any) -> Any:
        kill_once("RRM_TEST_KILL_JUDGE_MARKER", os.getpid())
        return super().rank(*args, **kwargs)
