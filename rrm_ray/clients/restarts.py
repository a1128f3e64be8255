"""The per-role retry every client shares: a call whose actor died is retried once Ray restarted it.

The decision (restart, rebuild the learner, or fail) is `rrm_ray.recovery`'s, a pure policy; this is
the Ray half: attribute the error to a role by actor id, count the fault, wait until the restarted
actor answers, re-sync an engine that needs the learner's weights, retry. A call that times out
(`RemoteCallTimeout`) is a hang: the actors of its group that answer no ping are killed, restarted by
Ray and the call retried, as after a death (counted in `faults/<role>_hangs`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from rrm_ray.clients.group import ActorDied, ActorGroup, RemoteCallTimeout
from rrm_ray.config import JobConfig
from rrm_ray.recovery import (
    HANG_COUNTERS,
    LEARNER_COUNTER,
    RESTART_COUNTERS,
    Decision,
    RecoveryPolicy,
    RoleFailure,
    attribute,
)


class Restarts:
    """Role that died -> the policy's action, with the job's `faults/...` counters.

    actor_ids: the live groups' actor ids by role (errors name an actor, not a role).
    weights_trained: whether the learner's weights differ from the initial ones (a restarted engine
        of a trained role then needs them again before the retry).
    on_fault: told each counter's new value (the job logs it as `faults/<counter>`).
    """

    def __init__(
        self,
        max_restarts: int,
        restart_timeout_s: float,
        actor_ids: Callable[[], Mapping[str, list[str]]],
        weights_trained: Callable[[], bool] = lambda: False,
        on_fault: Callable[[str, int], None] = lambda counter, value: None,
    ) -> None:
        self.policy = RecoveryPolicy(max_restarts)
        self.restart_timeout_s = restart_timeout_s
        self.actor_ids = actor_ids
        self.weights_trained = weights_trained
        self.on_fault = on_fault
        self.faults: dict[str, int] = {
            counter: 0 for counter in (*RESTART_COUNTERS.values(), LEARNER_COUNTER, *HANG_COUNTERS.values())
        }

    @classmethod
    def alone(cls, cfg: JobConfig, groups: list[ActorGroup]) -> Restarts:
        """For roles started without a learner: `cluster.max_actor_restarts` per actor, faults counted
        (not logged), no weights to re-sync. `groups` is read at each error: append them as they start."""
        c = cfg.cluster
        return cls(
            c.max_actor_restarts, c.call_timeout_s, lambda: {g.spec.name: g.actor_ids() for g in groups}
        )

    def role_of(self, error: ActorDied, default: str | None = None) -> str | None:
        """The role of the actor `error` is about (Ray keeps an actor's id over restarts)."""
        return attribute(error.actor_id, self.actor_ids(), default)

    def decide(
        self, role: str | None, error: ActorDied, has_checkpoint: bool = False, hung: bool = False
    ) -> Decision:
        return self.policy.on_death(
            role,
            error.actor_id,
            gone_for_good=error.gone_for_good,
            weights_trained=self.weights_trained(),
            has_checkpoint=has_checkpoint,
            learner_recoveries=self.faults[LEARNER_COUNTER],
            hung=hung,
        )

    def count(self, counter: str) -> None:
        self.faults[counter] = self.faults.get(counter, 0) + 1
        self.on_fault(counter, self.faults[counter])

    def retry(
        self, group: ActorGroup, call: Callable[[int], Any], resync: Callable[[], Any] | None = None
    ) -> Any:
        """`call(attempt)` against `group`, retried after one of its actors died and Ray restarted it;
        `resync` first when the policy says the restarted engine needs the learner's weights (None: it
        never does, or the call is the sync itself). An error about another role's actor passes through,
        e.g. a learner rank dying inside a weight sync is the learner's to recover. A call of this group
        that timed out is a hang: its hung actors are killed and it goes on as after a death."""
        role = group.spec.name
        attempt, resync_first = 0, False
        while True:
            try:
                if resync_first:
                    resync()
                return call(attempt)
            except ActorDied as exc:
                if self.role_of(exc, default=role) != role:
                    raise
                resync_first = self.recover(group, exc) and resync is not None
            except RemoteCallTimeout as exc:
                if exc.role != role:
                    raise
                resync_first = self.recover_hang(group, exc) and resync is not None
            attempt += 1

    def recover_hang(self, group: ActorGroup, exc: RemoteCallTimeout) -> bool:
        """A call of `group` timed out: kill the actors that answer no ping (hung, not dead), count each
        as `<role>_hangs`, wait until Ray restarted them. No actor hung (the timeout came from another
        wait): the timeout is raised as it is. True: the engines need the learner's weights."""
        role = group.spec.name
        hung = group.unresponsive()
        if not hung:
            raise exc
        needs_weights = False
        for actor_id in group.kill_for_restart(hung):
            as_death = ActorDied(actor_id, False, str(exc), "hang")
            decision = self.decide(role, as_death, hung=True)
            if decision.action == "fail":
                raise RoleFailure(role, f"{decision.message}\n  {exc}") from exc
            self.count(decision.counter)
            needs_weights |= decision.resync_weights
        warnings.warn(
            f"{len(hung)} {role} actor(s) hung ({exc}); killed, Ray restarts them and the call is retried",
            stacklevel=4,
        )
        self.wait_for_restart(group)
        return needs_weights

    def recover(self, group: ActorGroup, exc: ActorDied) -> bool:
        """One of `group`'s actors died (`exc`): fail naming the role if the policy says so, else count
        the restart and wait until Ray brought it back. True: the engine needs the learner's weights."""
        role = group.spec.name
        decision = self.decide(role, exc)
        if decision.action == "fail":
            raise RoleFailure(role, f"{decision.message}\n  Ray: {exc.detail[:500]}") from exc
        self.count(decision.counter)
        warnings.warn(
            f"a {role} actor died ({exc.kind}); Ray restarts it and the call is retried",
            stacklevel=4,
        )
        self.wait_for_restart(group)
        return decision.resync_weights

    def wait_for_restart(self, group: ActorGroup) -> None:
        """Until every actor of `group` answers again (a restart re-runs `__init__`: an engine reloads its
        model). Ray reports an actor unavailable while it restarts, dead once it never will."""
        role = group.spec.name
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            try:
                group.call_all("ping")
                return
            except ActorDied as exc:
                if exc.gone_for_good:
                    raise RoleFailure(
                        role, f"{self.decide(role, exc).message}\n  Ray: {exc.detail[:500]}"
                    ) from exc
                if time.monotonic() > deadline:
                    raise RoleFailure(
                        role,
                        f"the {role} actors did not come back from a restart within "
                        f"cluster.call_timeout_s={self.restart_timeout_s:g}s",
                    ) from exc
                time.sleep(1.0)
