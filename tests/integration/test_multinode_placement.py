"""Placement on a simulated multi-node cluster: where every actor lands, and a GRPO job across nodes.

`ray.cluster_utils.Cluster` starts two real raylets on this machine, each declaring 8 GPUs (a third
joins for the 3-node profile). Ray trusts declared counts, so GPU bundles schedule without GPUs; the
probe actors stand in for vLLM and torch (which need a GPU) and only report where they run. Both
"nodes" share this host (and its IP), so node identity is the Ray node id, not the address.

    node 0 (head): CPU 4, GPU 8        node 1 (worker): CPU 4, GPU 8

Every shipped GPU profile is placed through the driver's own path (`placement_layout` ->
`reserve_placement` -> `place_role`), as shipped and with roles sharing bundles.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from rrm_ray.clients.group import ActorGroup, PlacementError, ordered_bundles, reserve
from rrm_ray.config import to_yaml
from rrm_ray.placement import (
    RoleSpec,
    cannot_hold_message,
    placement_layout,
    placement_problems,
    unplaceable,
)
from rrm_ray.tables import aligned_table
from rrm_ray.validation import load_config
from tests.integration.conftest import REPO, tiny_overrides
from tests.integration.probes import Probe
from tests.readme import runs_command


# -- reading a placement: where each rank landed ------------------------------------------------------
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
    return "\n".join(aligned_table(header, body, align="left", rule=False))


pytestmark = pytest.mark.integration

GPUS_PER_NODE = 8
CPUS_PER_NODE = 4
CONFIGS = REPO / "configs"
# The GPU profiles' CPU asks (6-8 per bundle) shrink to fractions so 17 probes fit 2 x 4 CPUs here.
SMALL_CPUS = [
    "rollout.cpus_per_engine=0.05",
    "learner.cpus_per_rank=0.05",
    "reward.cpus=0.05",
    "judge.cpus_per_engine=0.05",
]


@pytest.fixture(scope="module")
def cluster():
    """Two simulated nodes; a local Ray that a session fixture had started is restarted afterwards."""
    from ray.cluster_utils import Cluster

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # RAY_AUTH_MODE stays as it is: after a token-mode session in this process, a cluster started without
    # it would disagree with this driver's cached auth config, and Ray then cancels every actor creation.
    node = dict(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE, object_store_memory=200 * 2**20)
    sim = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    sim.add_node(**node)
    sim.wait_for_nodes()
    ray.init(address=sim.address)
    alive = [n for n in ray.nodes() if n["Alive"]]
    names = {
        n["NodeID"]: "node0-head" if "node:__internal_head__" in n["Resources"] else "node1" for n in alive
    }
    try:
        yield {"names": names, "nodes": alive, "sim": sim, "node_args": node}
    finally:
        ray.shutdown()
        sim.shutdown()
        if was_up:
            ray.init(address="local", num_cpus=8, include_dashboard=False)


def _free_gpus_become(expected: float, timeout_s: float = 15.0) -> None:
    """Ray's view of free resources trails reservations by a report interval."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("GPU", 0) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) == expected


def _show(title: str, rows: list[dict], names: dict[str, str]) -> None:
    print(f"\n{title}\n{format_placement(rows, names)}")


def _check_group(group: ActorGroup, rows: list[dict]) -> None:
    """Each rank runs on its own bundle, on the node Ray reserved that bundle on, ranks grouped by node."""
    bundle_node = ray.util.placement_group_table(group.pg)["bundles_to_node_id"]
    assert [r["rank"] for r in rows] == list(range(group.spec.num_workers))
    assert [r["bundle"] for r in rows] == group.bundles
    assert sorted(group.bundles) == list(range(group.spec.num_workers))  # one bundle per worker
    for r in rows:
        assert r["node_id"] == bundle_node[r["bundle"]], r
    runs = node_runs(rows)
    assert len(runs) == len({node for node, _ in runs}), f"ranks not contiguous per node: {runs}"


def _master_addr_is_rank0_node(learner: ActorGroup, nodes: list[dict]) -> None:
    """The driver's rendezvous rule: MASTER_ADDR = the IP of rank 0's node."""
    rank0 = learner.placement()[0]
    address = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes}
    assert rank0["ip"] == address[rank0["node_id"]]
    assert learner.call_rank0("free_port") > 0


def test_spread_learner_ranks_are_renumbered_by_node(cluster):
    """SPREAD alternates bundles between nodes (0, 2 | 1, 3); ranks must not alternate."""
    cfg = load_config(
        CONFIGS / "grpo_gpu_2x8.yaml", [*SMALL_CPUS, "learner.num_ranks=4", "learner.strategy=SPREAD"]
    )
    learner = ActorGroup(Probe, placement_layout(cfg).groups["learner"], placement_timeout_s=120)
    try:
        rows = learner.placement()
        _show("grpo_gpu_2x8.yaml learner.strategy=SPREAD learner.num_ranks=4", rows, cluster["names"])
        _check_group(learner, rows)  # ranks contiguous per node, wherever SPREAD (best effort) put them
        bundle_node = ray.util.placement_group_table(learner.pg)["bundles_to_node_id"]
        by_index = node_runs([{"rank": b, "node_id": bundle_node[b]} for b in range(4)])
        if len(by_index) > 2:  # Ray did alternate the bundles: the ranks were renumbered
            assert learner.bundles != sorted(learner.bundles)
        _master_addr_is_rank0_node(learner, cluster["nodes"])
    finally:
        learner.shutdown()


@pytest.mark.parametrize(
    ("profile", "overrides", "expected_per_node"),
    [
        ("grpo_gpu_1x8.yaml", [], [4]),  # STRICT_PACK: one node
        ("grpo_gpu_2x8.yaml", ["learner.strategy=STRICT_SPREAD", "learner.num_ranks=2"], [1, 1]),
        ("grpo_gpu_2x8.yaml", [], [8]),  # STRICT_PACK
    ],
)
def test_learner_strategy_decides_the_nodes(cluster, profile, overrides, expected_per_node):
    """Placement groups only (no actors): bundles per node, and the rank order `ActorGroup` would use."""
    runs = _learner_runs(profile, [*SMALL_CPUS, *overrides])
    assert sorted(len(ranks) for _, ranks in runs) == sorted(expected_per_node)


def test_spread_uses_both_nodes_when_one_cannot_hold_the_ranks(cluster):
    """SPREAD is best effort (8 ranks once landed 2 + 6): all it promises is a placement; 12 ranks of
    1 GPU cannot fit one 8-GPU node, so both nodes hold some, and ranks stay contiguous per node."""
    overrides = ["learner.strategy=SPREAD", "learner.num_ranks=12", "data.prompts_per_step=48"]
    runs = _learner_runs("grpo_gpu_2x8.yaml", [*SMALL_CPUS, "rollout.num_engines=4", *overrides])
    assert len(runs) == 2 and sum(len(ranks) for _, ranks in runs) == 12
    assert all(len(ranks) <= GPUS_PER_NODE for _, ranks in runs)


def _learner_runs(profile: str, overrides: list[str]) -> list[tuple[str, list[int]]]:
    """The learner's ranks cut into runs per node, checked contiguous (each node one run)."""
    cfg = load_config(CONFIGS / profile, overrides)
    spec = placement_layout(cfg).groups["learner"]
    pg = reserve(spec, timeout_s=60)
    try:
        bundle_node = ray.util.placement_group_table(pg)["bundles_to_node_id"]
        rows = [
            {"role": spec.name, "rank": rank, "bundle": b, "node_id": bundle_node[b]}
            for rank, b in enumerate(ordered_bundles(pg))
        ]
        runs = node_runs(rows)
        assert len(runs) == len({node for node, _ in runs}), runs
        return runs
    finally:
        ray.util.remove_placement_group(pg)


# What each profile is placed with: as shipped, and with roles sharing bundles (equal counts, strategies).
JUDGE_ON_ROLLOUT = ["judge.enabled=true", "judge.num_engines=4", "cluster.colocate=[[rollout,judge]]"]
PROFILE_CASES = [
    pytest.param("grpo_gpu_1x8.yaml", [], id="1x8"),
    pytest.param("grpo_gpu_1x8.yaml", JUDGE_ON_ROLLOUT, id="1x8-judge-on-rollout"),
    pytest.param("grpo_gpu_2x8.yaml", [], id="2x8"),
    pytest.param(
        "grpo_gpu_2x8.yaml",
        ["learner.strategy=PACK", "cluster.colocate=[[rollout,learner]]"],
        id="2x8-shared",
    ),
    pytest.param("train_rrm_7b.yaml", [], id="rrm7b"),
    pytest.param("train_rrm_7b.yaml", ["cluster.colocate=[[rollout,learner]]"], id="rrm7b-shared"),
    pytest.param("train_rrm_32b.yaml", [], id="rrm32b-3-nodes"),  # 24 GPUs: a third node joins
    pytest.param(
        "train_rrm_32b.yaml",  # a shared engine takes 1 GPU (Ray splits one GPU, not several)
        [
            "rollout.gpus_per_engine=1",
            "rollout.tensor_parallel_size=1",
            "learner.num_ranks=4",
            "cluster.colocate=[[rollout,learner]]",
        ],
        id="rrm32b-shared",
    ),
    pytest.param("grpo_rrm32b_judge_2x8.yaml", [], id="judge32b-shared"),  # as shipped; judge at TP 4
    pytest.param(
        "grpo_rrm32b_judge_2x8.yaml",
        ["cluster.colocate=[]", "rollout.num_engines=4", "learner.num_ranks=4"],
        id="judge32b-own",
    ),
]


@pytest.mark.parametrize(("profile", "overrides"), PROFILE_CASES)
def test_every_gpu_profile_places_every_role(cluster, profile, overrides):
    """The driver's placement path with stand-in actors: every role starts on its share of a bundle,
    roles sharing a bundle land on the same node, and the asks on a bundle never exceed it."""
    from rrm_ray.clients.roles import check_fits, place_role, reserve_placement

    cfg = load_config(CONFIGS / profile, [*SMALL_CPUS, *overrides])
    plan = placement_layout(cfg)
    needed = -(-sum(g.num_workers * g.gpus for g in plan.groups.values()) // GPUS_PER_NODE)
    extra = [cluster["sim"].add_node(**cluster["node_args"]) for _ in range(int(needed) - 2)]
    try:
        _free_gpus_become(GPUS_PER_NODE * max(2, needed))  # earlier tests released theirs
        check_fits(plan)
        pgs = reserve_placement(plan, timeout_s=60)
        groups = {}
        try:
            for role in plan.roles:
                groups[role] = place_role(plan, pgs, role, Probe, call_timeout_s=120)
            rows = {role: g.placement() for role, g in groups.items()}
            _show(f"{profile} {' '.join(overrides)}", [r for g in rows.values() for r in g], cluster["names"])
            for role, group in groups.items():
                _check_group(group, rows[role])
            for name, spec in plan.groups.items():
                roles = [r for r, share in plan.roles.items() if share.group == name]
                bundle_node = ray.util.placement_group_table(pgs[name])["bundles_to_node_id"]
                for b in range(spec.num_workers):
                    on_b = [(r, row) for r in roles for row in rows[r] if row["bundle"] == b]
                    assert sorted(r for r, _ in on_b) == sorted(roles)  # every sharer once per bundle
                    assert {row["node_id"] for _, row in on_b} == {bundle_node[b]}
                    for key, total in spec.bundle().items():
                        asked = sum(plan.roles[r].spec.bundle().get(key, 0.0) for r in roles)
                        assert asked <= total + 1e-9, (name, b, key, asked, total)
            reserved = sum(g.num_workers * g.gpus for g in plan.groups.values())
            _free_gpus_become(GPUS_PER_NODE * max(2, needed) - reserved)  # a shared bundle counts once
            if profile == "grpo_gpu_2x8.yaml" and not overrides:
                rollout_nodes = {r["node_id"] for r in rows["rollout"]}
                learner_nodes = {r["node_id"] for r in rows["learner"]}
                assert len(rollout_nodes) == 1  # PACK: the 8 engines fill one node
                assert len(learner_nodes) == 1 and learner_nodes != rollout_nodes  # STRICT_PACK: the other
                _master_addr_is_rank0_node(groups["learner"], cluster["nodes"])
        finally:
            for g in reversed(groups.values()):
                g.shutdown()
            for pg in pgs.values():
                ray.util.remove_placement_group(pg)
    finally:
        for node in extra:
            cluster["sim"].remove_node(node)


@runs_command("plan")
def test_more_than_the_cluster_has_fails_fast_and_names_it(cluster, tiny_model, tmp_path):
    from rrm_ray.jobs.grpo import GRPOJob

    # Totals: 12 engines + 8 ranks = 20 GPUs on a 16-GPU cluster (shape left undeclared, so the live
    # cluster is what says no, at start, before any actor exists).
    overrides = [
        "cluster.device=cuda",
        "cluster.num_nodes=0",
        "rollout.num_engines=12",
        "learner.num_ranks=8",
        "data.prompts_per_step=4",
        "tracking.enabled=false",
        *SMALL_CPUS,
    ]
    cfg = load_config(None, tiny_overrides(tiny_model, tmp_path) + overrides)
    job = GRPOJob(cfg)
    with pytest.raises(PlacementError) as info:  # at once: no actor exists (below), no timeout waited
        job.start()
    assert "GPU: the job asks for 20 (rollout 12x1, learner 8x1), the cluster has 16" in str(info.value)
    assert job.roles.groups == []
    job.close()
    # `rrm-ray plan --address` says so, in the same words, before anything starts.
    config = tmp_path / "job.yaml"
    config.write_text(to_yaml(cfg))
    plan = subprocess.run(
        [
            str(Path(sys.executable).with_name("rrm-ray")),
            "plan",
            str(config),
            "--address",
            cluster["sim"].address,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 1, plan.stderr
    assert plan.stderr.splitlines()[-2:] == str(info.value).splitlines()
    assert "the live cluster at" in plan.stdout

    # Totals fit but the strategy cannot (12 ranks STRICT_PACK on 8-GPU nodes): start fails at once too.
    strict = ["learner.num_ranks=12", "learner.strategy=STRICT_PACK", "rollout.num_engines=1"]
    cfg = load_config(
        None, [*tiny_overrides(tiny_model, tmp_path), *overrides, *strict, "data.prompts_per_step=3"]
    )
    job = GRPOJob(cfg)
    with pytest.raises(PlacementError) as info:
        job.start()
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    assert str(info.value) == cannot_hold_message(placement_problems(placement_layout(cfg).groups, nodes))
    assert "learner: STRICT_PACK needs 12 x" in str(info.value) and job.roles.groups == []
    job.close()

    spec = RoleSpec("learner", 12, 0.05, 1.0, "STRICT_PACK")
    lines = unplaceable({"learner": spec}, [n["Resources"] for n in cluster["nodes"]])
    assert lines and "learner: STRICT_PACK needs 12 x" in lines[0]
    with pytest.raises(PlacementError, match=r"GPU: asked 12, cluster total 16"):
        reserve(spec, timeout_s=3)


def test_grpo_step_with_learner_ranks_on_two_nodes(cluster, tiny_model, tmp_path):
    """The real stack on the simulated cluster: vLLM engine, 2 FSDP2 ranks (gloo) on distinct nodes."""
    from rrm_ray.jobs.grpo import GRPOJob

    overrides = {
        "trainer.total_steps": 1,
        "learner.strategy": "STRICT_SPREAD",  # one rank per node
        "data.eval_path": "null",
        "checkpoint.save_final": False,
    }
    cfg = load_config(None, tiny_overrides(tiny_model, tmp_path, **overrides))
    with GRPOJob(cfg) as job:
        job.start()
        _show("tiny GRPO job (cpu)", job.placement, cluster["names"])
        learner = [p for p in job.placement if p["role"] == "learner"]
        assert len({p["node_id"] for p in learner}) == 2
        group = job.roles.learner.group
        dist = group.get([a.__ray_call__.remote(_dist_facts) for a in group.actors], "dist_facts")
        for rank, facts in enumerate(dist):
            assert facts["rank"] == rank and facts["world_size"] == 2
            assert facts["MASTER_ADDR"] == learner[0]["ip"]
        summary = job.run()
    assert summary["steps"] == 1
    assert summary["history"][0]["train/grad_norm"] > 0


def _dist_facts(worker: object) -> dict:
    import torch.distributed as torch_dist

    return {
        "rank": torch_dist.get_rank(),
        "world_size": torch_dist.get_world_size(),
        "MASTER_ADDR": os.environ["MASTER_ADDR"],
        "node_id": ray.get_runtime_context().get_node_id(),
    }


# -- the ordering and checking logic alone (no cluster) ---------------------------------------------


@pytest.mark.parametrize(
    ("bundle_nodes", "expected"),
    [
        ({0: "B", 1: "A", 2: "B", 3: "A"}, [0, 2, 1, 3]),  # SPREAD's alternation
        ({0: "A", 1: "A", 2: "B", 3: "B"}, [0, 1, 2, 3]),  # PACK: already contiguous
        ({3: "C", 0: "B", 1: "C", 2: "A"}, [0, 1, 3, 2]),  # nodes in order of their first bundle
    ],
)
def test_ordered_bundles_groups_by_node(monkeypatch, bundle_nodes, expected):
    monkeypatch.setattr(ray.util, "placement_group_table", lambda pg: {"bundles_to_node_id": bundle_nodes})
    assert ordered_bundles(object()) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (RoleSpec("learner", 8, 1, 1, "STRICT_PACK"), None),
        (RoleSpec("learner", 9, 1, 1, "STRICT_PACK"), "STRICT_PACK needs 9 x"),
        (RoleSpec("learner", 2, 1, 1, "STRICT_SPREAD"), None),
        (RoleSpec("learner", 3, 1, 1, "STRICT_SPREAD"), "STRICT_SPREAD needs 3 distinct nodes"),
        (RoleSpec("rollout", 1, 1, 9, "PACK"), "no node can hold one bundle"),
        (RoleSpec("rollout", 12, 1, 1, "PACK"), None),  # totals are missing_resources' business
    ],
)
def test_unplaceable_names_the_role_and_strategy(spec, problem):
    nodes = [{"CPU": 16, "GPU": 8}, {"CPU": 16, "GPU": 8}]
    lines = unplaceable({spec.name: spec}, nodes)
    if problem is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"{spec.name}: ") and problem in lines[0], lines


def test_placement_table_and_runs():
    rows = [
        {"role": "learner", "rank": 0, "bundle": 2, "node_id": "abc", "ip": "10.0.0.1"},
        {"role": "learner", "rank": 1, "bundle": 0, "node_id": "def", "ip": "10.0.0.2"},
        {"role": "learner", "rank": 2, "bundle": 1, "node_id": "abc", "ip": "10.0.0.1"},
    ]
    assert format_placement(rows, {"abc": "node0"}).splitlines()[1].split() == [
        "learner",
        "0",
        "2",
        "node0",
        "10.0.0.1",
    ]
    assert node_runs(rows) == [("abc", [0]), ("def", [1]), ("abc", [2])]  # not contiguous: 3 runs
