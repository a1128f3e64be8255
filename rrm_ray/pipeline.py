"""Asynchronous GRPO's schedule: which batch is generated with which policy version, when the weights
move, and the staleness bound `trainer.max_staleness` (pure: no Ray; the driver follows it).

A policy *version* counts the learner updates applied since the start of training (a resume starts
from the checkpoint's). The engines hold the version of their last weight sync; a batch remembers the
version that generated it, and its *staleness* is how many updates the learner is ahead when it trains
on it. Per training step t the driver does, in this order:

    1. take the next batch; none ready (k = 0, the first step, after a resume): generate and score one
    2. start the learner's update on it                      (Ray refs: the driver does not wait)
    3. generate and score the next batches, as many as the bound allows      (k = 0: none)
    4. wait for the update; the learner is one version ahead
    5. send the new weights to the engines (nothing generates now: step 3 has finished)

    k = 0 (synchronous)                        k = 1 (one-step-off)
    step t: generate b_t with v_t              step t: train b_t (generated with v_{t-1}) while
            train on b_t -> v_{t+1}                    generating b_{t+1} with v_t -> v_{t+1}
            sync v_{t+1}                               sync v_{t+1}
    staleness 0                                staleness 1 (0 for the first batch)

With k = 0 step 3 never generates, so the order is exactly the synchronous loop's. With k >= 1 the
generation (and the judge and rule scoring) of the next batch overlaps the update, and up to k batches
wait in the queue; weights reach the engines only between batches (step 5), never mid-generation.
The loss corrects for the lag with truncated importance sampling against the behaviour log-probs
(`algorithm.tis_cap`, see `rrm_ray.algo.policy_loss`).

A checkpoint holds no batch in flight: it records the prompt position of the oldest queued batch
(`resume_position`), so a resumed run generates those batches again with the restored weights.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class StalenessError(RuntimeError):
    """A batch would be trained on more than `trainer.max_staleness` versions after the weights that
    generated it: a scheduling bug, never trained on silently."""


@dataclass
class Scheduled(Generic[T]):
    """One generated and scored batch, waiting for its update."""

    step: int  # the training step it is for (its prompts and sampling seed follow from it)
    position: int  # the prompt stream's position before its rows were drawn
    version: int  # learner updates the engines held when they generated it
    batch: T


class Schedule(Generic[T]):
    """The queue of batches generated ahead of the learner, bounded by `max_staleness`."""

    def __init__(self, max_staleness: int) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.max_staleness = max_staleness
        self.queue: deque[Scheduled[T]] = deque()

    def __len__(self) -> int:
        return len(self.queue)

    def push(self, item: Scheduled[T]) -> None:
        self.queue.append(item)

    def pop(self, learner_version: int) -> tuple[Scheduled[T], int]:
        """The oldest batch and its staleness against the learner about to train on it."""
        item = self.queue.popleft()
        staleness = learner_version - item.version
        if not 0 <= staleness <= self.max_staleness:
            raise StalenessError(
                f"the batch for step {item.step + 1} was generated with policy version {item.version} and "
                f"would be trained at version {learner_version}: staleness {staleness}, outside "
                f"[0, trainer.max_staleness={self.max_staleness}]"
            )
        return item, staleness

    def to_produce(self, learner_version: int, engine_version: int, next_step: int, total_steps: int) -> int:
        """How many batches to generate now, while the learner trains towards `learner_version`.

        A batch generated now with `engine_version` is trained after the queued ones, each of whose
        updates adds at most one version: at `learner_version + queued + j` for the j-th new batch, so
        it may be generated while that minus `engine_version` is within the bound. Never beyond the
        run's last step (`next_step` is the step the first new batch is for, 0-based).
        """
        lag = learner_version - engine_version
        room = self.max_staleness - lag - len(self.queue) + 1
        return max(0, min(room, total_steps - next_step))

    def next_step(self, current: int) -> int:
        """The step the next generated batch is for, when step `current` is being trained."""
        return current + 1 + len(self.queue)

    def resume_position(self, stream_position: int) -> int:
        """Where a resumed run must continue the prompt stream: before the oldest batch in flight."""
        return self.queue[0].position if self.queue else stream_position

    def drop(self) -> None:
        """Forget the batches in flight (a restore from a checkpoint generates them again)."""
        self.queue.clear()


@dataclass(frozen=True)
class Event:
    """One call of the driver's loop in `simulate`: what, for which step's batch, at which version."""

    kind: str  # "generate" | "train" | "sync"
    step: int
    version: int
    staleness: int = 0  # for "train"


def simulate(max_staleness: int, total_steps: int) -> list[Event]:
    """The calls `GRPOJob.train_step` makes over a run, in order, by the module docstring's steps
    (every step updates the weights): the reference the unit tests check the schedule against."""
    schedule: Schedule[None] = Schedule(max_staleness)
    events: list[Event] = []
    engines = 0  # the version the engines hold; the learner's is `step` (every step updates)
    for step in range(total_steps):
        if not len(schedule):
            events.append(Event("generate", step, engines))
            schedule.push(Scheduled(step, step, engines, None))
        item, staleness = schedule.pop(step)
        events.append(Event("train", item.step, step, staleness))
        for _ in range(schedule.to_produce(step + 1, engines, schedule.next_step(step), total_steps)):
            upcoming = schedule.next_step(step)
            events.append(Event("generate", upcoming, engines))
            schedule.push(Scheduled(upcoming, upcoming, engines, None))
        engines = step + 1
        events.append(Event("sync", step, engines))
    return events
