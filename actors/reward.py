"""Reward-rule actor: owns pools of rule-scoring processes with per-item timeouts."""

from __future__ import annotations

from actors.worker import Worker
from rrm_ray.rewards.runner import RewardRunner
from rrm_ray.types import ScoredBatch


class RewardWorker(Worker):
    """Scores with the reward rule (a name, an import path or weighted rules); `accuracy_rule`, when it
    differs, is scored too so "accuracy" means correctness even when the reward mixes in format terms."""

    def __init__(
        self,
        rule: str | dict[str, float],
        timeout_s: float,
        fallback: float,
        num_workers: int,
        accuracy_rule: str | None = None,
    ) -> None:
        self.runner = RewardRunner(rule, timeout_s, fallback_reward=fallback, num_workers=num_workers)
        same = accuracy_rule is None or accuracy_rule == rule
        self.accuracy = None if same else RewardRunner(accuracy_rule, timeout_s, fallback_reward=0.0)

    def score(self, responses: list[str], answers: list[str | None]) -> ScoredBatch:
        idx = [i for i, a in enumerate(answers) if a is not None]
        out = ScoredBatch([None] * len(responses), [None] * len(responses))
        if not idx:
            return out
        texts, refs = [responses[i] for i in idx], [answers[i] for i in idx]
        batch = self.runner.score(texts, refs)
        judged = batch if self.accuracy is None else self.accuracy.score(texts, refs)
        failed = set(judged.failed_indices)  # a timed-out or raising item got the fallback: not correct
        for k, (i, reward, acc) in enumerate(zip(idx, batch.rewards, judged.rewards, strict=True)):
            out.rewards[i], out.correct[i] = reward, acc > 0 and k not in failed
        out.timeouts, out.errors, out.error_messages = batch.timeouts, batch.errors, batch.error_messages
        return out

    def close(self) -> None:
        self.runner.close()
        if self.accuracy is not None:
            self.accuracy.close()
