"""Role placement from config, without Ray: which placement groups a job reserves, what share of their
bundles each role asks for, and whether a cluster can hold them.

Placement is configuration, not code. Each role has a bundle shape (CPU, GPU), a count and a Ray
strategy. Roles named together in `cluster.colocate` share ONE placement group: its bundles have the
roles' common shape (the largest CPU ask, their common GPU count), and each of the k roles asks for
1/k of every bundle, so the asks on a bundle add up to exactly one bundle. vLLM sleep/wake lets the
engines take turns on the GPU (`rrm_ray.clients.colocation`).

    cluster.colocate: [[rollout, judge]]      rollout 4 x {GPU 1}, judge 4 x {GPU 1}
      placement group "rollout+judge": 4 bundles {CPU 8, GPU 1}
        bundle b: rollout rank b asks {CPU 4, GPU 0.5}, judge rank b asks {CPU 4, GPU 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rrm_ray.config import ClusterConfig, JobConfig

ROLE_ORDER = ("rollout", "learner", "reward", "judge")  # reservation order
COLOCATABLE = ("rollout", "learner", "judge")
ENGINES = ("rollout", "judge")  # roles that own a vLLM engine (these sleep while another role works)


@dataclass(frozen=True)
class RoleSpec:
    """How a role is placed: bundle shape, count and strategy (all from config)."""

    name: str
    num_workers: int
    cpus: float
    gpus: float = 0.0
    strategy: str = "PACK"
    resources: dict[str, float] | None = None  # custom resources per bundle

    def bundle(self) -> dict[str, float]:
        b: dict[str, float] = {"CPU": self.cpus} if self.cpus or not self.gpus else {}
        if self.gpus:
            b["GPU"] = self.gpus
        b.update(self.resources or {})
        return b


@dataclass(frozen=True)
class RoleShare:
    """One role on its placement group: each of its actors asks `spec` (= the group's bundle x fraction)."""

    role: str
    group: str  # the name of its placement group in `PlacementLayout.groups`
    spec: RoleSpec
    fraction: float  # 1: the bundles are its own; 1/k: k roles share every bundle
    peers: tuple[str, ...] = ()  # the other roles on the same bundles

    @property
    def shared(self) -> bool:
        return bool(self.peers)


@dataclass(frozen=True)
class PlacementLayout:
    """The placement groups a job reserves (name -> bundle shape, reservation order) and each role's share."""

    groups: dict[str, RoleSpec]
    roles: dict[str, RoleShare]

    def colocated(self) -> list[tuple[str, ...]]:
        """The roles of each shared placement group."""
        return [(s.role, *s.peers) for s in self.roles.values() if s.peers and s.role == _first(s)]


def _first(share: RoleShare) -> str:
    return min((share.role, *share.peers), key=ROLE_ORDER.index)


def judge_in_job(cfg: JobConfig) -> bool:
    """Whether the job starts judge engines of its own: the judge is on and not served elsewhere
    (`judge.endpoint.url`: no judge engines, no judge bundles)."""
    return cfg.judge.enabled and cfg.judge.endpoint.url is None


def own_spec(cfg: JobConfig, role: str) -> RoleSpec:
    """A role's bundles as its own section of the config asks for them (before any sharing)."""
    gpu = cfg.cluster.device == "cuda"
    r, lr, j = cfg.rollout, cfg.learner, cfg.judge
    if role == "rollout":
        return RoleSpec(role, r.num_engines, r.cpus_per_engine, r.gpus_per_engine if gpu else 0, r.strategy)
    if role == "learner":
        return RoleSpec(role, lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank if gpu else 0, lr.strategy)
    if role == "judge":
        return RoleSpec(role, j.num_engines, j.cpus_per_engine, j.gpus_per_engine if gpu else 0, j.strategy)
    if role == "reward":
        return RoleSpec(role, 1, cfg.reward.cpus)
    raise ValueError(f"unknown role {role!r}")


def placement_layout(cfg: JobConfig) -> PlacementLayout:
    """Placement groups and per-role shares for a validated config (`rrm_ray.validation` checks that
    colocated roles have equal counts, GPUs per worker and strategies)."""
    roles = [r for r in ROLE_ORDER if r != "judge" or judge_in_job(cfg)]
    group_of = {role: (role,) for role in roles}
    for listed in cfg.cluster.colocate:
        together = tuple(sorted(set(listed), key=ROLE_ORDER.index))
        for role in together:
            group_of[role] = together
    groups: dict[str, RoleSpec] = {}
    shares: dict[str, RoleShare] = {}
    for role in roles:
        members = group_of[role]
        name = "+".join(members)
        if name not in groups:
            specs = [own_spec(cfg, m) for m in members]
            groups[name] = replace(specs[0], name=name, cpus=max(s.cpus for s in specs))
        group, k = groups[name], len(members)
        spec = RoleSpec(role, group.num_workers, group.cpus / k, group.gpus / k, group.strategy)
        shares[role] = RoleShare(role, name, spec, 1.0 / k, tuple(m for m in members if m != role))
    return PlacementLayout(groups, shares)


def shares_bundles(cfg: JobConfig, role: str) -> bool:
    """Whether `role` runs on bundles it shares with another role (`cluster.colocate`)."""
    return (role != "judge" or judge_in_job(cfg)) and any(role in group for group in cfg.cluster.colocate)


def gpus_asked(groups: dict[str, RoleSpec]) -> tuple[float, str]:
    """GPUs the placement groups reserve (a shared bundle counts once), and the sum written out."""
    parts = [(name, g) for name, g in groups.items() if g.gpus]
    total = sum(g.num_workers * g.gpus for _, g in parts)
    return total, " + ".join(f"{name} {g.num_workers}x{g.gpus:g}" for name, g in parts)


def missing_resources(specs: dict[str, RoleSpec], total: dict[str, float]) -> list[str]:
    """Resources the whole job asks for beyond what the cluster has, as readable lines (empty: fits)."""
    asked: dict[str, float] = {}
    for spec in specs.values():
        for key, value in spec.bundle().items():
            asked[key] = asked.get(key, 0.0) + value * spec.num_workers
    return [
        f"{key}: the job asks for {value:g} ({', '.join(_by_role(specs, key))}), "
        f"the cluster has {total.get(key, 0):g}"
        for key, value in asked.items()
        if value > total.get(key, 0.0) + 1e-9
    ]


def _by_role(specs: dict[str, RoleSpec], key: str) -> list[str]:
    return [
        f"{s.name} {s.num_workers}x{s.bundle().get(key, 0):g}" for s in specs.values() if s.bundle().get(key)
    ]


def unplaceable(specs: dict[str, RoleSpec], nodes: list[dict[str, float]]) -> list[str]:
    """Roles whose strategy no set of these nodes can satisfy, even when the cluster totals suffice.

    `nodes` holds each node's total resources (`ray.nodes()[i]["Resources"]`). Each role is checked on
    its own (a necessary condition, not a full packing): every bundle must fit on some node,
    STRICT_PACK needs one node holding all bundles, STRICT_SPREAD needs `num_workers` distinct nodes
    that each hold a bundle. Without this, such a role waits out `cluster.placement_timeout_s`.
    """
    lines = []
    for spec in specs.values():
        bundle = spec.bundle()
        fits = [n for n in nodes if _holds(n, bundle, 1)]
        where = f"{len(nodes)} node(s) with " + ", ".join(
            f"{key} {'/'.join(f'{n.get(key, 0):g}' for n in nodes)}" for key in bundle
        )
        if not fits:
            lines.append(f"{spec.name}: no node can hold one bundle {bundle} ({where})")
        elif spec.strategy == "STRICT_PACK" and not any(_holds(n, bundle, spec.num_workers) for n in nodes):
            lines.append(
                f"{spec.name}: STRICT_PACK needs {spec.num_workers} x {bundle} on one node ({where})"
            )
        elif spec.strategy == "STRICT_SPREAD" and len(fits) < spec.num_workers:
            lines.append(
                f"{spec.name}: STRICT_SPREAD needs {spec.num_workers} distinct nodes that each hold "
                f"{bundle}; {len(fits)} can ({where})"
            )
    return lines


def placement_problems(specs: dict[str, RoleSpec], nodes: list[dict[str, float]]) -> list[str]:
    """Everything that stops these placement groups from being reserved on these nodes (empty: fits).

    `rrm-ray train` (at start) and `rrm-ray plan` (before anything starts) both report these lines."""
    totals: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            totals[key] = totals.get(key, 0.0) + value
    return missing_resources(specs, totals) + unplaceable(specs, nodes)


def cannot_hold_message(problems: list[str]) -> str:
    return "the cluster cannot hold this job:\n  " + "\n  ".join(problems)


def _holds(node: dict[str, float], bundle: dict[str, float], count: int) -> bool:
    return all(node.get(key, 0.0) + 1e-9 >= value * count for key, value in bundle.items())


def likely_layout(specs: dict[str, RoleSpec], nodes: list[dict[str, float]]) -> dict[str, list[int]] | None:
    """A greedy guess at where the bundles land: group name -> node index of each bundle, or None when
    this greedy packing finds no layout (Ray's own search may still find one).

    Groups are placed in order, each by its strategy: PACK fills the node it already uses first,
    SPREAD puts each bundle on the node holding fewest of its group, the STRICT kinds as they say.
    """
    free = [dict(n) for n in nodes]
    layout: dict[str, list[int]] = {}
    for name, spec in specs.items():
        bundle, chosen = spec.bundle(), []
        if spec.strategy == "STRICT_PACK":
            node = next((i for i, n in enumerate(free) if _holds(n, bundle, spec.num_workers)), None)
            if node is None:
                return None
            chosen = [node] * spec.num_workers
        for k in range(spec.num_workers):
            if spec.strategy != "STRICT_PACK":
                fits = [i for i, n in enumerate(free) if _holds(n, bundle, 1)]
                if spec.strategy == "STRICT_SPREAD":
                    fits = [i for i in fits if i not in chosen]
                if not fits:
                    return None
                if spec.strategy == "PACK":  # the node this group fills already, else the first
                    chosen.append(max(fits, key=lambda i: (chosen.count(i), -i)))
                else:  # SPREAD, STRICT_SPREAD: the node holding fewest of this group
                    chosen.append(min(fits, key=lambda i: (chosen.count(i), i)))
            _take(free[chosen[k]], bundle)
        layout[name] = chosen
    return layout


def _take(node: dict[str, float], bundle: dict[str, float]) -> None:
    for key, value in bundle.items():
        node[key] = node.get(key, 0.0) - value


LOCAL_CPUS_ON_CPU = 8  # logical: the CPU roles take fractions of them, whatever the machine has


def local_resources(c: ClusterConfig) -> tuple[int | None, int | None]:
    """(CPUs, GPUs) a local Ray is started with (`cluster.local_num_cpus/gpus`); None: Ray detects them.
    On cpu the logical defaults; on cuda Ray counts the machine's GPUs, as a one-machine GPU job needs."""
    if c.device == "cpu":
        cpus = LOCAL_CPUS_ON_CPU if c.local_num_cpus is None else c.local_num_cpus
        return cpus, c.local_num_gpus or 0
    return c.local_num_cpus, c.local_num_gpus


def declared_nodes(cfg: JobConfig) -> list[dict[str, float]] | None:
    """The nodes a config declares: a local Ray's resources where the config states them, or
    `cluster.num_nodes` x `cluster.gpus_per_node` (CPUs per node are not declared: those nodes have no
    CPU key, and CPUs go unchecked). None: the shape is unknown (only a live cluster can tell)."""
    c = cfg.cluster
    if c.address is None:
        cpus, gpus = local_resources(c)
        node = {} if cpus is None else {"CPU": float(cpus)}
        if gpus:
            node["GPU"] = float(gpus)
        if c.device == "cpu" or gpus is not None:
            return [node]
    if c.num_nodes > 0 and c.gpus_per_node > 0:
        return [{"GPU": float(c.gpus_per_node)} for _ in range(c.num_nodes)]
    return None
