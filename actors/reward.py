"""Reward-rule actor: owns a pool of rule-scoring processes with per-item timeouts."""

from __future__ import annotations

from rrm_ray.actor_group import Worker
from rrm_ray.rewards.runner import RewardBatch, RewardRunner


class RewardWorker(Worker):
    def __init__(self, rule: str | dict[str, float], timeout_s: float, fallback: float, num_workers: int) -> None:
        self.runner = RewardRunner(
            rule, timeout_s=timeout_s, fallback_reward=fallback, num_workers=num_workers
        )

    def score(self, responses: list[str], answers: list[str | None]) -> RewardBatch:
        return self.runner.score(responses, answers)

    def close(self) -> None:
        self.runner.close()
