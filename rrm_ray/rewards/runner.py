"""Score many (response, answer) items with a rule, a per-item timeout, and no way to hang the caller.

A rule can hang (a catastrophic regex, a sympy simplification that never ends) inside C code, where
no Python thread can interrupt it. So rules run in worker PROCESSES that the runner kills when an
item overruns, and the caller always gets one reward per item back:

    driver (RewardRunner.score)                 worker k (spawned process, rule resolved once)
      pending item indices --- chunk [i..j] -->   for each item: value = rule(response, answer)
      deadline_k = t(last message) + timeout  <-- (i, ok, value | error message), one per item

- Each worker gets a chunk of items and reports every item as soon as it is done, so the driver
  knows which item is running and since when: its deadline is the time the previous report (or the
  chunk) arrived plus ``timeout_s``. Reports are observed by the driver a little after they are sent,
  so the limit is never stricter than ``timeout_s``, only up to the driver's loop latency looser.
- An item past its deadline gets ``fallback_reward`` and counts as a timeout; only that worker is
  killed and replaced, the rest of its chunk goes back to the queue, other workers keep going.
- A rule that raises, or returns something that is not a finite number, gives the fallback and counts
  as an error (the first few messages are kept). A worker that dies (segfault, ``os._exit``) costs
  the item it was running, counted as an error, and is replaced.
- Workers are started once (spawn is slow: a fresh interpreter plus the rule's imports) and kept
  across `score` calls; a worker only receives items after it reported that its rule loaded (and
  warmed up, see `rules.warm_up`), so start-up time is never charged to an item.
- Spawned workers import the rule's module by name (the driver's ``sys.path`` is passed on), and
  re-import the driver's main script: a script must guard its entry point with
  ``if __name__ == "__main__":``.

The only errors `score` raises are for a misuse (lists of different lengths, a closed runner) or a
worker that cannot start at all (`RewardRunnerError`): that is a broken environment, not a bad item.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from rrm_ray.rewards.rules import resolve_rule, warm_up

RuleSpec = str | Mapping[str, float]

_MAX_ERROR_MESSAGES = 5
_MAX_MESSAGE_CHARS = 500
_MAX_CHUNK = 32


class RewardRunnerError(RuntimeError):
    """The runner itself failed (a worker that cannot start), or was used after `close`."""


@dataclass
class RewardBatch:
    """The rewards of one `RewardRunner.score` call, in input order, with what went wrong."""

    rewards: list[float]
    timeouts: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)  # the first few, "item 3: ValueError: ..."
    seconds: float = 0.0
    failed_indices: list[int] = field(default_factory=list)  # items that got the fallback, sorted


# ---------------------------------------------------------------------------------------------------
# Worker process


def _worker_main(conn: Connection, spec: RuleSpec) -> None:
    """Load the rule, say "ready", then score chunks until told to stop or the driver goes away."""
    # Ctrl-C goes to the whole process group; the driver decides what to do, workers must not die mid-item.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rule = resolve_rule(spec)
        warm_up(rule)
    except Exception as e:
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:  # the driver exited
            return
        if chunk is None:
            return
        for index, response, answer in chunk:
            try:
                value = float(rule(response, answer))
                if not math.isfinite(value):
                    raise ValueError(f"rule returned a non-finite reward {value}")
                conn.send((index, True, value))
            except Exception as e:
                conn.send((index, False, f"{type(e).__name__}: {e}"[:_MAX_MESSAGE_CHARS]))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    ready: bool = False
    started: float = 0.0  # monotonic time of spawn (for the start-up deadline)
    assigned: deque[int] = field(default_factory=deque)  # items sent, not reported yet; [0] is running
    deadline: float = math.inf  # when the running item times out


# ---------------------------------------------------------------------------------------------------
# Driver side


class RewardRunner:
    """Score responses with a rule in a pool of worker processes, each item bounded by ``timeout_s``.

    ``rule`` is a rule name (``"math_verify"``), an import path (``"my_pkg.rewards:fn"``, imported in
    the workers, so it must be importable there) or ``{name: weight}`` for a weighted sum. It is also
    resolved here first, so a typo fails in the constructor, not in a worker.

        with RewardRunner("arithmetic", timeout_s=5.0, fallback_reward=0.0) as runner:
            batch = runner.score(responses, answers)

    Not thread-safe: one `score` at a time.
    """

    def __init__(
        self,
        rule: RuleSpec,
        timeout_s: float,
        fallback_reward: float,
        num_workers: int = 1,
        start_method: str = "spawn",
        startup_timeout_s: float = 120.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not math.isfinite(fallback_reward):
            raise ValueError(f"fallback_reward must be a finite number, got {fallback_reward}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not startup_timeout_s > 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {startup_timeout_s}")
        # Fork is excluded: a forked copy of a driver that holds threads (Ray, torch) can deadlock.
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        resolve_rule(rule)  # fail fast, with the rule's own message
        self.rule = dict(rule) if isinstance(rule, Mapping) else rule
        self.timeout_s = float(timeout_s)
        self.fallback_reward = float(fallback_reward)
        self.num_workers = num_workers
        self.startup_timeout_s = startup_timeout_s
        self._ctx = mp.get_context(start_method)
        self._closed = False
        self._workers = [self._spawn() for _ in range(num_workers)]

    # -- lifecycle ----------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child, self.rule), daemon=True)
        process.start()
        child.close()  # keep only the worker's copy open, so its death reads as EOF here
        return _Worker(process=process, conn=parent, started=time.monotonic())

    @staticmethod
    def _kill(worker: _Worker) -> None:
        worker.conn.close()
        worker.process.terminate()
        worker.process.join(2.0)
        if worker.process.is_alive():  # the rule installed a SIGTERM handler, or is stuck in the kernel
            worker.process.kill()
            worker.process.join(2.0)

    def _replace(self, worker: _Worker) -> None:
        self._kill(worker)
        self._workers[self._workers.index(worker)] = self._spawn()

    def close(self) -> None:
        """Stop the workers (politely, then by force). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            with contextlib.suppress(OSError):  # already dead
                w.conn.send(None)
        deadline = time.monotonic() + 2.0
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            self._kill(w)
        self._workers = []

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring ------------------------------------------------------------------------------------

    def score(self, responses: list[str], answers: list[str | None]) -> RewardBatch:
        """One reward per response, in order; failures get ``fallback_reward`` and are counted."""
        if self._closed:
            raise RewardRunnerError("RewardRunner.score() called after close()")
        if len(responses) != len(answers):
            raise ValueError(f"got {len(responses)} responses but {len(answers)} answers; need one each")
        t0 = time.monotonic()
        n = len(responses)
        batch = RewardBatch(rewards=[self.fallback_reward] * n)
        pending = deque(range(n))
        # Small chunks balance load across workers; a cap keeps a killed worker's re-queue cheap.
        chunk = max(1, min(_MAX_CHUNK, math.ceil(n / (4 * self.num_workers))))

        def fail(index: int, message: str | None) -> None:
            batch.failed_indices.append(index)
            if message is None:
                batch.timeouts += 1
                return
            batch.errors += 1
            if len(batch.error_messages) < _MAX_ERROR_MESSAGES:
                batch.error_messages.append(f"item {index}: {message}")

        try:
            while pending or any(w.assigned for w in self._workers):
                self._dispatch(pending, chunk, responses, answers)
                now = time.monotonic()
                next_deadline = min(
                    [w.deadline for w in self._workers if w.assigned]
                    + [w.started + self.startup_timeout_s for w in self._workers if not w.ready]
                )
                for conn in wait([w.conn for w in self._workers], timeout=max(0.0, next_deadline - now)):
                    self._drain(next(w for w in self._workers if w.conn is conn), batch, pending, fail)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.assigned and now >= w.deadline:
                        fail(w.assigned.popleft(), None)
                        pending.extendleft(reversed(w.assigned))
                        self._replace(w)
                    elif not w.ready and now >= w.started + self.startup_timeout_s:
                        raise RewardRunnerError(
                            f"a reward worker for rule {self.rule!r} did not start within "
                            f"{self.startup_timeout_s}s"
                        )
        except RewardRunnerError:
            self.close()  # a worker that cannot start will not start next time either
            raise
        finally:
            # Interrupted (e.g. KeyboardInterrupt): a busy worker would later report items of this
            # abandoned batch as if they belonged to the next one, so replace it.
            for w in list(self._workers):
                if w.assigned:
                    self._replace(w)
        batch.failed_indices.sort()
        batch.seconds = time.monotonic() - t0
        return batch

    def _dispatch(
        self, pending: deque[int], chunk: int, responses: list[str], answers: list[str | None]
    ) -> None:
        """Send a chunk of pending items to every ready, idle worker; its first item starts now."""
        for w in list(self._workers):
            if not (w.ready and not w.assigned and pending):
                continue
            ids = [pending.popleft() for _ in range(min(chunk, len(pending)))]
            try:
                w.conn.send([(i, responses[i], answers[i]) for i in ids])
            except OSError:  # it died while idle: nothing of ours was running, so no item is blamed
                pending.extendleft(reversed(ids))
                self._replace(w)
                continue
            w.assigned.extend(ids)
            w.deadline = time.monotonic() + self.timeout_s

    def _drain(
        self, w: _Worker, batch: RewardBatch, pending: deque[int], fail: Callable[[int, str | None], None]
    ) -> None:
        """Read every message waiting from worker ``w``; replace it if it has died."""
        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                w.process.join(1.0)
                if w.assigned:
                    fail(w.assigned.popleft(), f"worker died (exit code {w.process.exitcode}) on this item")
                    pending.extendleft(reversed(w.assigned))
                elif not w.ready:
                    raise RewardRunnerError(
                        f"a reward worker for rule {self.rule!r} exited while starting "
                        f"(exit code {w.process.exitcode}; its stderr says why). A common cause: the "
                        "worker re-imports the main script, which must guard its entry point with "
                        "`if __name__ == '__main__':`"
                    ) from None
                self._replace(w)
                return
            if msg[0] == "ready":
                w.ready = True
            elif msg[0] == "fatal":
                raise RewardRunnerError(f"a reward worker could not load rule {self.rule!r}: {msg[1]}")
            else:
                index, ok, value = msg
                if not w.assigned or w.assigned[0] != index:  # not ours (cannot happen; never trust it)
                    continue
                # Reports come in assignment order; the next item started when this one ended.
                w.assigned.popleft()
                w.deadline = time.monotonic() + self.timeout_s
                if ok:
                    batch.rewards[index] = value
                else:
                    fail(index, value)
