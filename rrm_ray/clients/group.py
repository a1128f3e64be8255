"""One actor-group abstraction for every role: rollout engines, learner ranks, reward and judge actors.

A group reserves a placement group with one bundle per worker, waits for it with a timeout that names
what is missing, and starts one actor per bundle. Ranks follow the bundles ordered by node, so ranks
on one node are contiguous and rank 0 publishes the master address for torch.distributed:

    node A: bundle 0 -> rank 0 (MASTER_ADDR = node A's IP), bundle 2 -> rank 1
    node B: bundle 1 -> rank 2, bundle 3 -> rank 3

Dispatch is named at the call site: `call_all`, `call_rank0`, `call_sharded`, each returning the
gathered results (every wait bounded by `call_timeout_s`), or `async_*` variants returning refs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rrm_ray.placement import RoleSpec


class PlacementError(RuntimeError):
    """Resources for a role could not be reserved in time."""


class RemoteCallTimeout(TimeoutError):
    """A remote call did not answer within the configured timeout. `role`: the group whose call it was
    (None: calls of several roles, as in a streamed batch)."""

    def __init__(self, message: str, role: str | None = None) -> None:
        super().__init__(message)
        self.role = role


class ActorDied(RuntimeError):
    """An actor died during a call: Ray's `RayActorError` in our terms, so nothing above the clients
    handles Ray's exceptions. `actor_id` names the actor (Ray keeps it over restarts; the clients map it
    to a role), `gone_for_good` says Ray will not restart it, `detail` is Ray's message."""

    def __init__(self, actor_id: str | None, gone_for_good: bool, detail: str, kind: str) -> None:
        super().__init__(detail)
        self.actor_id, self.gone_for_good, self.detail, self.kind = actor_id, gone_for_good, detail, kind

    @classmethod
    def of(cls, error: ray.exceptions.RayActorError) -> ActorDied:
        return cls(
            error.actor_id,
            isinstance(error, ray.exceptions.ActorDiedError),
            str(error),
            type(error).__name__,
        )


@contextlib.contextmanager
def actor_deaths() -> Iterator[None]:
    """Ray's actor errors raised in the block become `ActorDied`."""
    try:
        yield
    except ray.exceptions.RayActorError as exc:
        raise ActorDied.of(exc) from exc


def reserve(spec: RoleSpec, timeout_s: float) -> PlacementGroup:
    """Reserve one bundle per worker, or fail naming the resources the cluster lacks."""
    bundles = [spec.bundle() for _ in range(spec.num_workers)]
    pg = placement_group(bundles, strategy=spec.strategy, name=f"rrm-ray-{spec.name}")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PlacementError(_missing_resources_message(spec, bundles, timeout_s))
    return pg


def _missing_resources_message(spec: RoleSpec, bundles: list[dict[str, float]], timeout_s: float) -> str:
    asked: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            asked[k] = asked.get(k, 0.0) + v
    total = ray.cluster_resources()
    free = ray.available_resources()
    lines = [
        f"could not place role {spec.name!r} ({spec.num_workers} x {spec.bundle()}, strategy "
        f"{spec.strategy}) within {timeout_s:g}s:"
    ]
    for k, v in asked.items():
        lines.append(f"  {k}: asked {v:g}, cluster total {total.get(k, 0):g}, free now {free.get(k, 0):g}")
    if spec.strategy.startswith("STRICT"):
        lines.append(f"  ({spec.strategy} also needs the bundles to fit on one node or on distinct nodes)")
    return "\n".join(lines)


def ordered_bundles(pg: PlacementGroup) -> list[int]:
    """Bundle indexes ordered by node (nodes in order of their first bundle), then by index."""
    table = ray.util.placement_group_table(pg)
    node_of: dict[int, str] = table.get("bundles_to_node_id", {})
    first_seen: dict[str, int] = {}
    for idx in sorted(node_of):
        first_seen.setdefault(node_of[idx], idx)
    return sorted(node_of, key=lambda i: (first_seen[node_of[i]], i)) or list(range(pg.bundle_count))


class ActorGroup:
    """N actors of one class on one placement group, ranked by (node, bundle)."""

    def __init__(
        self,
        actor_cls: type,
        spec: RoleSpec,
        *,
        init_args: Sequence[Any] = (),
        init_kwargs: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        placement_timeout_s: float = 120.0,
        call_timeout_s: float = 1800.0,
        max_restarts: int = 0,
        pg: PlacementGroup | None = None,
    ) -> None:
        self.spec = spec
        self.call_timeout_s = call_timeout_s
        self._owns_pg = pg is None
        self.pg = pg or reserve(spec, placement_timeout_s)
        self.bundles = ordered_bundles(self.pg)[: spec.num_workers]
        remote_cls = ray.remote(actor_cls)
        self.actors: list[ray.actor.ActorHandle] = []
        for rank, bundle_index in enumerate(self.bundles):
            rank_env = {
                **(env or {}),
                "RANK": str(rank),
                "WORLD_SIZE": str(spec.num_workers),
                "RRM_RAY_ROLE": spec.name,
                "RRM_RAY_BUNDLE": str(bundle_index),
            }
            actor = remote_cls.options(
                num_cpus=spec.cpus,
                num_gpus=spec.gpus,
                resources=spec.resources or None,
                max_restarts=max_restarts,
                max_task_retries=0,
                runtime_env={"env_vars": rank_env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=bundle_index
                ),
                name=None,
            ).remote(*init_args, **(init_kwargs or {}))
            self.actors.append(actor)

    def __len__(self) -> int:
        return len(self.actors)

    def actor_ids(self) -> list[str]:
        """Hex actor ids in rank order: what `ActorDied.actor_id` names (kept across restarts)."""
        return [a._actor_id.hex() for a in self.actors]  # the handle's id; Ray has no public getter

    # -- dispatch ------------------------------------------------------------------------------------
    def async_call_all(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def async_call_sharded(self, method: str, shards: Sequence[Any], **kwargs: Any) -> list[ray.ObjectRef]:
        if len(shards) != len(self.actors):
            raise ValueError(f"{self.spec.name}: {len(shards)} shards for {len(self.actors)} workers")
        return [getattr(a, method).remote(s, **kwargs) for a, s in zip(self.actors, shards, strict=True)]

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call `method` on every rank with the same arguments; results in rank order."""
        return self.get(self.async_call_all(method, *args, **kwargs), what=method)

    def call_rank0(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.get([getattr(self.actors[0], method).remote(*args, **kwargs)], what=method)[0]

    def call_sharded(self, method: str, shards: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Rank i gets `shards[i]`; results in rank order."""
        return self.get(self.async_call_sharded(method, shards, **kwargs), what=method)

    def get(self, refs: list[ray.ObjectRef], what: str = "call") -> list[Any]:
        """Wait for refs with the group's timeout; a silent hang becomes a named error."""
        # Results are taken as they arrive, so a failed rank raises at once instead of after its peers
        # (which may be blocked in a collective with it) time out.
        deadline = time.monotonic() + self.call_timeout_s
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RemoteCallTimeout(
                    f"{self.spec.name}.{what} did not finish within cluster.call_timeout_s="
                    f"{self.call_timeout_s:g}s",
                    role=self.spec.name,
                )
            with actor_deaths():
                ray.get(ready[0], timeout=self.call_timeout_s)  # ready: raises the remote error, if any
        return ray.get(refs, timeout=self.call_timeout_s)  # every one is ready

    def unresponsive(self) -> list[int]:
        """Ranks whose actor does not answer a ping in `ping_timeout_s`: actors run one call at a time,
        so a ping waits behind a call that hangs. (A dead actor answers with its error: not hung.)"""
        refs = [a.ping.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.ping_timeout_s)
        answered = set(ready)
        return [rank for rank, ref in enumerate(refs) if ref not in answered]

    @property
    def ping_timeout_s(self) -> float:
        return min(30.0, max(5.0, self.call_timeout_s / 4))

    def kill_for_restart(self, ranks: list[int]) -> list[str]:
        """Kill these ranks' actors so that Ray restarts them (within their `max_restarts`), as after a
        crash; returns their actor ids."""
        for rank in ranks:
            ray.kill(self.actors[rank], no_restart=False)
        return [self.actor_ids()[rank] for rank in ranks]

    # -- lifecycle -----------------------------------------------------------------------------------
    def placement(self) -> list[dict[str, Any]]:
        """Where each rank landed: node id, IP, bundle index (for logs and placement tests)."""
        infos = self.call_all("node_info")
        return [{"role": self.spec.name, "rank": r, **info} for r, info in enumerate(infos)]

    def shutdown(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        self.actors = []
        if self._owns_pg:
            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
