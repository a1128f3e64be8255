"""A job's roles: the placement groups reserved up front and one typed client per role on them.

    Roles.start():  check the cluster can hold the layout -> reserve every placement group
                    -> rollout engines and judge engines (judge.enabled, on bundles of its own) load
                    -> learner ranks (rendezvous, weight transfer to the engines) -> reward actor
                    -> judge engines that share bundles (they start once the others can sleep;
                    a served judge, judge.endpoint.url: its HTTP client, no engines)
    Roles.close():  every group shut down, the placement groups released

Roles that share bundles (`cluster.colocate`) take turns through `share` (rrm_ray.clients.colocation). Every
client retries through the one `restarts` (rrm_ray.clients.restarts); only a dead learner rank is
the job's to handle (`rebuild_learner`, then restore a checkpoint).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group

from rrm_ray.clients.colocation import Colocation
from rrm_ray.clients.group import ActorGroup, PlacementError, reserve
from rrm_ray.clients.judge import JudgeClient
from rrm_ray.clients.judge_endpoint import EndpointJudgeClient
from rrm_ray.clients.learner import LearnerClient
from rrm_ray.clients.restarts import Restarts
from rrm_ray.clients.reward import RewardClient
from rrm_ray.clients.rollout import RolloutClient
from rrm_ray.config import JobConfig
from rrm_ray.placement import (
    PlacementLayout,
    cannot_hold_message,
    own_spec,
    placement_layout,
    placement_problems,
)


def check_fits(layout: PlacementLayout) -> None:
    """Fail at once when the live cluster cannot hold the placement groups, naming what is missing
    (the lines `rrm-ray plan` prints for the same config), instead of waiting out the timeout."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    problems = placement_problems(layout.groups, nodes)
    if problems:
        raise PlacementError(cannot_hold_message(problems))


def reserve_placement(layout: PlacementLayout, timeout_s: float) -> dict[str, PlacementGroup]:
    """Every placement group of the layout, before any actor starts (a role that cannot be placed fails
    before engines spend minutes loading); on failure the groups already reserved are released."""
    pgs: dict[str, PlacementGroup] = {}
    try:
        for name, spec in layout.groups.items():
            pgs[name] = reserve(spec, timeout_s)
    except BaseException:
        for pg in pgs.values():
            remove_placement_group(pg)
        raise
    return pgs


def place_role(
    layout: PlacementLayout, pgs: dict[str, PlacementGroup], role: str, actor_cls: type, **kwargs: Any
) -> ActorGroup:
    """The actors of `role` on its placement group, each asking for its share of one bundle."""
    share = layout.roles[role]
    return ActorGroup(actor_cls, share.spec, pg=pgs[share.group], **kwargs)


class Placement:
    """The reserved placement groups; calling it places a role's actors on that role's share."""

    def __init__(self, layout: PlacementLayout, pgs: dict[str, PlacementGroup]) -> None:
        self.layout, self.pgs = layout, pgs

    def __call__(self, role: str, actor_cls: type, **kwargs: Any) -> ActorGroup:
        return place_role(self.layout, self.pgs, role, actor_cls, **kwargs)

    def shared(self, role: str) -> bool:
        """Whether `role` shares its bundles with another role (its engines then sleep and wake)."""
        return self.layout.roles[role].shared


class OwnGroups:
    """Placement for a command that starts a role or two on their own (the judge alone; the rollout
    and the judge for best-of-n): each role reserves its own placement group, shared with no one."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg

    def __call__(self, role: str, actor_cls: type, **kwargs: Any) -> ActorGroup:
        return ActorGroup(actor_cls, own_spec(self.cfg, role), **kwargs)

    def shared(self, role: str) -> bool:
        return False


class Roles:
    """The clients of one job. `weights_trained` and `on_fault` come from the job (its step counter
    and its tracker): see `Restarts`."""

    def __init__(
        self,
        cfg: JobConfig,
        model_path: str,
        pad_id: int,
        think_budget: int,
        weights_trained: Callable[[], bool],
        on_fault: Callable[[str, int], None],
    ) -> None:
        self.cfg, self.model_path, self.pad_id, self.think_budget = cfg, model_path, pad_id, think_budget
        self.layout = placement_layout(cfg)  # placement groups, and each role's share of them
        self.pgs: dict[str, PlacementGroup] = {}
        levels = {"rollout": cfg.rollout.sleep_level, "judge": cfg.judge.sleep_level}
        # roles sharing GPUs take turns
        self.share = Colocation(self.layout, levels, self.sync_weights, self.release_learner_memory)
        self.restarts = Restarts(
            cfg.cluster.max_actor_restarts,
            cfg.cluster.call_timeout_s,
            self.actor_ids,
            weights_trained,
            on_fault,
        )
        self.rollout: RolloutClient | None = None
        self.learner: LearnerClient | None = None
        self.reward: RewardClient | None = None
        self.judge: JudgeClient | EndpointJudgeClient | None = None

    @property
    def groups(self) -> list[ActorGroup]:
        """The live groups in role order: rollout, learner, reward, judge (a served judge has none)."""
        clients = (self.rollout, self.learner, self.reward, self.judge)
        return [c.group for c in clients if c is not None and c.group is not None]

    def actor_ids(self) -> dict[str, list[str]]:
        return {g.spec.name: g.actor_ids() for g in self.groups}

    def start(self) -> None:
        """Reserve every placement group, then start the roles. Ray must be connected. A served judge
        (`judge.endpoint.url`) is reached first, so a dead or refusing server fails before engines load."""
        cfg = self.cfg
        if cfg.judge.enabled and cfg.judge.endpoint.url is not None:
            self.judge = EndpointJudgeClient.start(cfg)  # HTTP: no engines, no bundles
        check_fits(self.layout)
        self.pgs = reserve_placement(self.layout, cfg.cluster.placement_timeout_s)
        place = Placement(self.layout, self.pgs)
        # Ray creates actors in the background: the engines load while the learner ranks start.
        self.rollout = RolloutClient.start(
            cfg, self.model_path, place, self.share, self.restarts, self.think_budget
        )
        # A judge on bundles of its own loads alongside them (minutes for a 32B judge); one that shares
        # bundles starts last, once the roles it shares them with can sleep while it sizes its cache.
        alongside = None
        if cfg.judge.enabled and self.judge is None and not place.shared("judge"):
            alongside = self.judge = JudgeClient.start(cfg, place, self.share, self.restarts, wait=False)
        self.learner = LearnerClient(cfg, self.model_path, self.pad_id, place, self.share)
        self.rollout.connect(self.learner)
        self.reward = RewardClient.start(cfg, place, self.restarts, judge=self.judge)
        if alongside is not None:
            alongside.ready()
        elif cfg.judge.enabled and self.judge is None:
            self.judge = self.reward.judge = JudgeClient.start(cfg, place, self.share, self.restarts)
        self.rollout.group.call_all("ping")  # engines are up

    def placement(self) -> list[dict[str, Any]]:
        """Where each rank of each role landed."""
        return [p for g in self.groups for p in g.placement()]

    def sync_weights(self) -> dict[str, int]:
        """The learner's weights into the rollout engines (Colocation's resync, too)."""
        assert self.rollout is not None
        return self.rollout.sync_weights()

    def release_learner_memory(self) -> None:
        """Before an engine wakes on the learner's GPUs (Colocation)."""
        if self.learner is not None:
            self.learner.release_memory()

    def rebuild_learner(self) -> None:
        """New learner ranks on the same bundles, joined to the engines again."""
        assert self.learner is not None and self.rollout is not None
        self.learner.rebuild()
        self.rollout.connect(self.learner)

    def close(self) -> None:
        if self.judge is not None:
            self.judge.shutdown()
        for client in (self.reward, self.learner, self.rollout):
            if client is not None:
                client.group.shutdown()
        self.rollout = self.learner = self.reward = self.judge = None
        for pg in self.pgs.values():  # the groups share these, so the job releases them
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
        self.pgs = {}
