"""Role placement from config: one `RoleSpec` per role, and the check that the cluster can hold them.

Placement is configuration, not code: each role has a bundle shape (CPU, GPU), a count and a Ray
strategy. A judge colocated with the rollout shares the rollout's placement group; each of the two
then asks for half of every bundle's resources (vLLM sleep/wake lets both engines fit one GPU).
"""

from __future__ import annotations

from typing import Any

from rrm_ray.actor_group import RoleSpec
from rrm_ray.config import JobConfig


def role_specs(cfg: JobConfig) -> dict[str, RoleSpec]:
    """The roles a job starts, in start order, with their bundle shapes."""
    gpu = cfg.cluster.device == "cuda"
    r, lr, j = cfg.rollout, cfg.learner, cfg.judge
    specs = {
        "rollout": RoleSpec(
            "rollout", r.num_engines, r.cpus_per_engine, r.gpus_per_engine if gpu else 0, r.strategy
        ),
        "learner": RoleSpec(
            "learner", lr.num_ranks, lr.cpus_per_rank, lr.gpus_per_rank if gpu else 0, lr.strategy
        ),
        "reward": RoleSpec("reward", 1, cfg.reward.cpus),
    }
    if j.enabled and not j.colocate_with_rollout:
        specs["judge"] = RoleSpec(
            "judge", j.num_engines, j.cpus_per_engine, j.gpus_per_engine if gpu else 0, j.strategy
        )
    return specs


def shared_fraction(spec: RoleSpec, fraction: float) -> RoleSpec:
    """The same bundles, asking for `fraction` of each resource (for roles that share bundles)."""
    return RoleSpec(spec.name, spec.num_workers, spec.cpus * fraction, spec.gpus * fraction, spec.strategy)


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


def _holds(node: dict[str, float], bundle: dict[str, float], count: int) -> bool:
    return all(node.get(key, 0.0) + 1e-9 >= value * count for key, value in bundle.items())


def node_runs(rows: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """Ranks of one role in rank order, cut into runs of equal node id: [(node_id, [ranks]), ...].

    Ranks are contiguous per node exactly when no node id appears in two runs.
    """
    runs: list[tuple[str, list[int]]] = []
    for row in sorted(rows, key=lambda r: r["rank"]):
        if runs and runs[-1][0] == row["node_id"]:
            runs[-1][1].append(row["rank"])
        else:
            runs.append((row["node_id"], [row["rank"]]))
    return runs


def format_placement(rows: list[dict[str, Any]], node_names: dict[str, str] | None = None) -> str:
    """A fixed-width table (role, rank, bundle, node, ip) of where each actor landed, for logs."""
    names = node_names or {}
    header = ("role", "rank", "bundle", "node", "ip")
    body = [
        (
            str(r["role"]),
            str(r["rank"]),
            str(r["bundle"]),
            names.get(r["node_id"], str(r["node_id"])[:12]),
            str(r.get("ip", "")),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in [header, *body]
    )
