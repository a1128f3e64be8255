"""The streaming judge's schedule: which finished groups go to which judge engine, and when.

A prompt's group is ready for the judge once its n samples are generated. An engine that is idle gets
every ready group at once (one `rank` call, so the tournaments of all of them advance in the same
engine batches, wave by wave); groups that finish while every engine is busy wait for the next idle
one. Several idle engines split the ready groups into contiguous shares. Pure bookkeeping, no Ray:
`rrm_ray.clients.streamed_batch` drives it with the rollout's streamed groups and the judge's results.
"""

from __future__ import annotations

from collections.abc import Iterable


class JudgeDispatch:
    """Ready prompts (by batch index) and the judge engines' state: idle, or ranking some prompts."""

    def __init__(self, engines: int) -> None:
        if engines < 1:
            raise ValueError(f"JudgeDispatch: needs at least one judge engine, got {engines}")
        self.ready: list[int] = []
        self.busy: dict[int, list[int]] = {}  # engine -> the prompts it ranks now
        self.engines = engines
        self.sent = 0  # rank calls so far

    def arrive(self, prompts: Iterable[int]) -> None:
        """Prompts whose groups just finished generating."""
        self.ready.extend(prompts)

    def take(self) -> list[tuple[int, list[int]]]:
        """(engine, prompts) for each rank call to send now: the ready prompts over the idle engines."""
        idle = [e for e in range(self.engines) if e not in self.busy]
        if not self.ready or not idle:
            return []
        idle = idle[: len(self.ready)]
        size = -(-len(self.ready) // len(idle))
        calls = [(e, self.ready[k * size : (k + 1) * size]) for k, e in enumerate(idle)]
        calls = [(e, ps) for e, ps in calls if ps]
        self.ready = []
        for engine, prompts in calls:
            self.busy[engine] = prompts
        self.sent += len(calls)
        return calls

    def done(self, engine: int) -> list[int]:
        """The engine returned its results; the prompts they are for."""
        if engine not in self.busy:
            raise ValueError(f"JudgeDispatch: engine {engine} was not ranking anything")
        return self.busy.pop(engine)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is being ranked."""
        return not self.ready and not self.busy
