"""One batch generated and scored as a stream (`reward.streaming`): each prompt's group goes to the
rule actor and to the judge as soon as its n samples are done, so judging overlaps generation.

    rollout engines .generate_stream --> group p --> rule actor .score(group p)
                                             \\-> JudgeDispatch --> an idle judge engine .rank(ready)

Judge engines rank every group that finished while they were busy in one call, so the tournaments of
different prompts still share engine batches (`rrm_ray.judge.dispatch`); each tournament is seeded by its
prompt's index, as the batch path seeds it, so a greedy judge gives the same rewards either way.

A role's actor that dies midway is restarted by Ray (`rrm_ray.clients.restarts`) and the whole batch
is produced again: the same seeds give the same samples. Work the failed attempt still had running on
the surviving actors finishes there and is discarded.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

import ray

from rrm_ray.clients.group import ActorDied, RemoteCallTimeout
from rrm_ray.clients.reward import RewardClient
from rrm_ray.clients.rollout import RolloutClient
from rrm_ray.data.prompts import PromptRow
from rrm_ray.judge.dispatch import JudgeDispatch
from rrm_ray.types import Completion, ScoredBatch, StepRewards


@dataclass
class StreamedBatch:
    completions: list[Completion]  # prompt-major, as `RolloutClient.generate` returns them
    rewards: StepRewards
    generate_s: float  # until the last group was generated
    reward_s: float  # after that, until every reward was in: the scoring and judging not overlapped


LOCAL_POLL_S = 0.05  # how often a served judge's Futures are looked at while Ray calls are in flight too


class StreamFailure(Exception):
    """Actors that died during one streamed attempt, every role's death (not only the first seen)."""

    def __init__(self, deaths: list[ActorDied]) -> None:
        super().__init__(f"{len(deaths)} actor(s) died while the batch streamed")
        self.deaths = deaths


def generate_and_score(
    rollout: RolloutClient,
    reward: RewardClient,
    rows: list[PromptRow],
    prompts: list[str],
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    step: int,
) -> StreamedBatch:
    """`rollout.generate` then `reward.score_step`, streamed. After a failed attempt every role whose
    actor died is recovered (counted, restarted; the engines re-synced when they need the learner's
    weights), then the batch is produced again."""
    restarts = rollout.restarts
    judge_group = reward.judge.group if reward.judge is not None else None  # None: a served judge
    roles = [rollout.group, reward.group] + ([judge_group] if judge_group is not None else [])
    groups = {g.spec.name: g for g in roles}
    resync = False
    while True:
        try:
            if resync:
                rollout.sync_weights()
                resync = False
            return _stream(rollout, reward, rows, prompts, n, temperature, max_tokens, seed, step)
        except StreamFailure as failure:
            deaths = failure.deaths
        except ActorDied as exc:  # the re-sync (the stream's own deaths come settled)
            deaths = [exc]
        except RemoteCallTimeout as exc:  # a hang: the roles' actors that answer no ping are restarted
            named = [groups[exc.role]] if exc.role in groups else list(groups.values())
            hung = [g for g in named if g.unresponsive()]
            if not hung:
                raise
            for group in hung:
                needs_weights = restarts.recover_hang(group, exc)
                resync |= needs_weights and group is rollout.group and rollout.source is not None
            continue
        for exc in deaths:
            group = groups.get(restarts.role_of(exc) or "")
            if group is None:
                raise exc  # not a role of the stream (a learner rank in the sync): the caller's to recover
            needs_weights = restarts.recover(group, exc)
            resync |= needs_weights and group is rollout.group and rollout.source is not None


def _stream(
    rollout: RolloutClient,
    reward: RewardClient,
    rows: list[PromptRow],
    prompts: list[str],
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    step: int,
) -> StreamedBatch:
    """One attempt. An actor death raises StreamFailure once every call in flight has settled."""
    started = time.perf_counter()
    judge = reward.judge
    to_judge = set(reward.judged_prompts(rows))
    if judge is not None and to_judge:
        judge.wake()
        judge.stats(reset=True)  # a failed attempt's counting is dropped (calls run in order per engine)
    flow = _Flow(reward, rows, to_judge, rollout.group.call_timeout_s)
    flow.streams = rollout.stream(prompts, n, temperature, max_tokens, seed)
    try:
        flow.drive()
        if len(flow.groups) != len(prompts):
            raise RuntimeError(f"streamed batch: {len(flow.groups)} of {len(prompts)} prompts came back")
        order = range(len(prompts))
        refs = [flow.rule_refs[p] for p in order]
        scored = ScoredBatch.concat(reward.group.get(refs, "score"))
    except ray.exceptions.RayActorError as exc:
        died, others = ActorDied.of(exc), flow.settle()
        raise StreamFailure([died, *(d for d in others if d.actor_id != died.actor_id)]) from exc
    except ActorDied as died:  # from the rule actor's results (`ActorGroup.get`)
        others = flow.settle()
        raise StreamFailure([died, *(d for d in others if d.actor_id != died.actor_id)]) from died
    rewards = reward.combine(scored, {p: flow.judged[p] for p in sorted(flow.judged)}, n, step)
    if flow.dispatch is not None:  # rank calls: one per idle engine each time finished groups waited
        rewards.judge_metrics["judge/stream_rank_calls"] = float(flow.dispatch.sent)
    generated = (flow.generated_at or started) - started
    return StreamedBatch(
        [c for p in order for c in flow.groups[p]],
        rewards,
        generated,
        time.perf_counter() - started - generated,
    )


class _Flow:
    """The calls of one streamed attempt: engines' streams, rule scorings and rank calls in flight."""

    def __init__(
        self, reward: RewardClient, rows: list[PromptRow], to_judge: set[int], timeout: float
    ) -> None:
        self.reward, self.rows, self.to_judge, self.timeout = reward, rows, to_judge, timeout
        judge = reward.judge
        self.dispatch = JudgeDispatch(len(judge)) if judge is not None and to_judge else None
        self.streams: list[Any] = []
        self.groups: dict[int, list[Completion]] = {}
        self.rule_refs: dict[int, ray.ObjectRef] = {}
        # rank call in flight -> its engine: a Ray ref (an in-job engine) or a Future (a served judge,
        # whose service runs in this process: rrm_ray.clients.judge_endpoint)
        self.judging: dict[Any, int] = {}
        self.judged: dict[int, Any] = {}
        self.generated_at: float | None = None

    def drive(self) -> None:
        """Until every group is generated and ranked: each event is a finished group or rank call."""
        while self.streams or self.judging:
            done = self._next_event()
            if isinstance(done, ray.ObjectRefGenerator):
                self._group_from(done)
            else:
                assert self.dispatch is not None
                results = done.result() if isinstance(done, Future) else ray.get(done, timeout=self.timeout)
                self.judged.update(zip(self.dispatch.done(self.judging.pop(done)), results, strict=True))
            if self.dispatch is not None:
                assert self.reward.judge is not None
                for engine, ps in self.dispatch.take():
                    items = [self.reward.judge_item(self.rows[p], self.groups[p]) for p in ps]
                    self.judging[self.reward.judge.rank_on(engine, items, ps)] = engine

    def _next_event(self) -> Any:
        """The next finished stream step or rank call. Ray refs are waited on by Ray; a served judge's
        Futures are polled between short Ray waits (`LOCAL_POLL_S`) while both kinds are in flight."""
        local = [h for h in self.judging if isinstance(h, Future)]
        remote = [*self.streams, *(h for h in self.judging if not isinstance(h, Future))]
        deadline = time.monotonic() + self.timeout
        while True:
            finished = [f for f in local if f.done()]
            if finished:
                return finished[0]
            left = max(0.0, deadline - time.monotonic())
            if not remote:
                futures_wait(local, timeout=left, return_when=FIRST_COMPLETED)
            else:
                ready, _ = ray.wait(remote, num_returns=1, timeout=min(left, LOCAL_POLL_S) if local else left)
                if ready:
                    return ready[0]
            if time.monotonic() >= deadline and not any(f.done() for f in local):
                raise RemoteCallTimeout(
                    f"streamed batch: no group was generated and no judge call returned within "
                    f"cluster.call_timeout_s={self.timeout:g}s ({len(self.groups)} groups in)"
                )

    def _group_from(self, stream: Any) -> None:
        try:  # `ray.wait` said its next item is ready (or that it ended): neither waits
            group: list[Completion] = ray.get(next(stream), timeout=self.timeout)
        except StopIteration:
            self.streams.remove(stream)
            if not self.streams:
                self.generated_at = time.perf_counter()
            return
        p = group[0].prompt_index
        self.groups[p] = group
        self.rule_refs[p] = self.reward.score_async(group, self.rows)  # cheap: every group at once
        if p in self.to_judge:
            assert self.dispatch is not None
            self.dispatch.arrive([p])

    def settle(self) -> list[ActorDied]:
        """After a failure: wait for every call still in flight and return each distinct actor death
        among them. A live actor finishes its call before it can take the retry's anyway, so this costs
        no time, and every role that died is recovered and counted, not only the first one seen."""
        deaths: dict[Any, ActorDied] = {}
        deadline = time.monotonic() + self.timeout  # one bound for all of it: a hung call is not waited on

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        def outcome(call: Any) -> None:
            try:
                call.result(timeout=left()) if isinstance(call, Future) else ray.get(call, timeout=left())
            except ray.exceptions.RayActorError as exc:
                deaths.setdefault(exc.actor_id, ActorDied.of(exc))
            except Exception:  # only deaths matter now (a timeout too); the first error is raised already
                pass

        for stream in self.streams:
            while True:
                if not ray.wait([stream], timeout=left())[0]:  # next(stream) itself would wait unbounded
                    break
                try:
                    ref = next(stream)
                except StopIteration:
                    break
                except ray.exceptions.RayActorError as exc:
                    deaths.setdefault(exc.actor_id, ActorDied.of(exc))
                    break
                outcome(ref)
        for call in [*self.rule_refs.values(), *self.judging]:
            outcome(call)
        return list(deaths.values())
