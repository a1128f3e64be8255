"""Recovery per role: what the driver does when one of its actors dies (pure: no Ray in here).

    role that died   action                                                     faults/ counter
    rollout engine   wait for Ray's restart, send the learner's weights again   rollout_restarts
                     (a restarted engine holds the initial weights), retry
    judge engine     wait for Ray's restart, retry the call: its weights are    judge_restarts
                     `judge.model_path`, never the learner's, so nothing to sync
    reward actor     wait for Ray's restart, retry (rule scoring is pure)       reward_restarts
    learner rank     rebuild the learner group from the last complete           learner_recoveries
                     checkpoint: the ranks share sharded weights and optimizer
                     state, so one rank cannot come back on its own

A hung actor (a call past `cluster.call_timeout_s`, and the actor answers no ping meanwhile) is killed
and then handled as if it had died: restarted and retried, or for a learner rank, the learner rebuilt;
it counts in `faults/<role>_hangs` instead of `<role>_restarts` (and against the same budget).

Ray restarts an actor at most `cluster.max_actor_restarts` times over its life. While a restart is
pending Ray reports the actor *unavailable*; once none is left it reports it *dead* for good, and then
the policy fails at once with a message naming the role instead of waiting for an actor that never
comes back. Deaths are also counted per actor, so a role can never loop past its budget.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

# The restartable roles and the `faults/...` counter each one bumps.
RESTART_COUNTERS: dict[str, str] = {
    "rollout": "rollout_restarts",
    "judge": "judge_restarts",
    "reward": "reward_restarts",
}
# A hung actor killed (then restarted like a dead one): the `faults/...` counter of each role.
HANG_COUNTERS: dict[str, str] = {role: f"{role}_hangs" for role in (*RESTART_COUNTERS, "learner")}
LEARNER_COUNTER = "learner_recoveries"
# Roles whose weights come from the learner: a restarted actor of theirs must be synced before a retry.
TRAINED_ROLES = frozenset({"rollout"})


class RoleFailure(RuntimeError):
    """An actor of `role` died and cannot be recovered; the message says why and what to change."""

    def __init__(self, role: str | None, message: str) -> None:
        super().__init__(message)
        self.role = role


@dataclass(frozen=True)
class Decision:
    """What to do about one dead actor.

    action: "restart" (wait for Ray's restart, maybe sync weights, retry the call) |
            "rebuild_learner" (new learner group, restored from the last checkpoint) | "fail".
    """

    action: Literal["restart", "rebuild_learner", "fail"]
    role: str | None
    counter: str | None = None  # the `faults` key to bump (None for "fail")
    resync_weights: bool = False
    message: str = ""  # for "fail": the error to raise


def attribute(
    actor_id: str | None, ids_by_role: Mapping[str, Collection[str]], default: str | None = None
) -> str | None:
    """The role whose actor has `actor_id` (Ray keeps an actor's id across restarts); `default` when the
    error names no actor or one of no role (the role of the call that failed, where there is one)."""
    if actor_id is not None:
        for role, ids in ids_by_role.items():
            if actor_id in ids:
                return role
    return default


@dataclass
class RecoveryPolicy:
    """Role that failed -> action, with the restart budget of `cluster.max_actor_restarts`."""

    max_restarts: int
    deaths: dict[str, int] = field(default_factory=dict)  # per actor id, over this driver's life

    def on_death(
        self,
        role: str | None,
        actor_id: str | None,
        *,
        gone_for_good: bool,
        weights_trained: bool = False,
        has_checkpoint: bool = False,
        learner_recoveries: int = 0,
        hung: bool = False,
    ) -> Decision:
        """Decide for an actor of `role` that died.

        gone_for_good: Ray said the actor is dead and will not be restarted (`ActorDiedError`), rather
            than unavailable while it restarts (`ActorUnavailableError`).
        weights_trained: the learner's weights differ from the initial ones (a step was trained, or the
            run resumed), so a restarted engine of a trained role needs them again.
        has_checkpoint / learner_recoveries: for a learner rank, whether a complete checkpoint exists to
            roll back to, and how often the learner was rebuilt already (over resumes too).
        hung: the actor did not die but hung (the caller kills it): counted as `<role>_hangs`.
        """
        m = self.max_restarts
        died = "hung" if hung else "died"
        if role == "learner":
            if not has_checkpoint:
                return self._fail(
                    role,
                    f"a learner rank {died} and this run has no complete checkpoint to roll the learner "
                    "back to (set checkpoint.every > 0 to make the learner recoverable)",
                )
            if learner_recoveries >= m:
                return self._fail(
                    role,
                    f"a learner rank {died} again: the learner was rebuilt {learner_recoveries} times "
                    f"already, the most cluster.max_actor_restarts={m} allows",
                )
            return Decision("rebuild_learner", role, HANG_COUNTERS[role] if hung else LEARNER_COUNTER)
        if role not in RESTART_COUNTERS:
            return self._fail(
                role, f"an actor of no known role died (actor id {actor_id}); nothing to restart"
            )
        key = actor_id or f"{role}:?"
        self.deaths[key] = self.deaths.get(key, 0) + 1
        n = self.deaths[key]
        if gone_for_good or n > m:
            why = "hangs" if hung else "dies"
            return self._fail(
                role,
                f"the {role} actor {(actor_id or '?')[:12]} {died} ({n} time{'s' * (n != 1)} seen by this "
                f"driver) and Ray will not restart it again: cluster.max_actor_restarts={m} restarts per "
                f"actor are used up (raise it, or find in the actor's log why it {why})",
            )
        counter = HANG_COUNTERS[role] if hung else RESTART_COUNTERS[role]
        return Decision("restart", role, counter, weights_trained and role in TRAINED_ROLES)

    @staticmethod
    def _fail(role: str | None, message: str) -> Decision:
        return Decision("fail", role, message=message)
