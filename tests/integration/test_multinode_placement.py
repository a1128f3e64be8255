"""Placement on a simulated multi-node cluster: where every actor lands, and a GRPO job across nodes.

`ray.cluster_utils.Cluster` starts two real raylets on this machine, each declaring 8 GPUs. Ray trusts
declared counts, so GPU bundles schedule without GPUs; the probe actors only report where they run.
Both "nodes" share this host (and its IP), so node identity is the Ray node id, not the address.

    node 0 (head): CPU 4, GPU 8        node 1 (worker): CPU 4, GPU 8
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import ray

from rrm_ray.actor_group import ActorGroup, PlacementError, RoleSpec, Worker, ordered_bundles, reserve
from rrm_ray.config import load_config
from rrm_ray.placement import (
    format_placement,
    missing_resources,
    node_runs,
    role_specs,
    shared_fraction,
    unplaceable,
)
from tests.integration.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.integration

GPUS_PER_NODE = 8
CPUS_PER_NODE = 4
CONFIGS = REPO / "configs"
# The GPU profiles' CPU asks (6-8 per bundle) shrink to fractions so 17 probes fit 2 x 4 CPUs here.
SMALL_CPUS = ["rollout.cpus_per_engine=0.05", "learner.cpus_per_rank=0.05", "reward.cpus=0.05"]


class Probe(Worker):
    """A placement probe: starts in a blink and only answers `node_info`."""


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
        yield {"names": names, "nodes": alive}
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


def test_shipped_2x8_profile_places_every_role(cluster):
    cfg = load_config(CONFIGS / "grpo_gpu_2x8.yaml", SMALL_CPUS)
    specs = role_specs(cfg)
    assert missing_resources(specs, ray.cluster_resources()) == []
    assert unplaceable(specs, [n["Resources"] for n in cluster["nodes"]]) == []
    groups = [ActorGroup(Probe, spec, placement_timeout_s=120) for spec in specs.values()]
    try:
        rows = {g.spec.name: g.placement() for g in groups}
        _show("grpo_gpu_2x8.yaml", [r for g in rows.values() for r in g], cluster["names"])
        for g in groups:
            _check_group(g, rows[g.spec.name])
        _free_gpus_become(0)  # 8 + 8 bundles of 1 GPU fill 2 x 8
        rollout_nodes = {r["node_id"] for r in rows["rollout"]}
        learner_nodes = {r["node_id"] for r in rows["learner"]}
        assert len(rollout_nodes) == 1  # PACK: the 8 engines fill one node
        assert len(learner_nodes) == 1 and learner_nodes != rollout_nodes  # STRICT_PACK: the other one
        _master_addr_is_rank0_node(groups[1], cluster["nodes"])
    finally:
        for g in reversed(groups):
            g.shutdown()


def test_spread_learner_ranks_are_renumbered_by_node(cluster):
    """SPREAD alternates bundles between nodes (0, 2 | 1, 3); ranks must not alternate."""
    cfg = load_config(
        CONFIGS / "grpo_gpu_2x8.yaml", [*SMALL_CPUS, "learner.num_ranks=4", "learner.strategy=SPREAD"]
    )
    learner = ActorGroup(Probe, role_specs(cfg)["learner"], placement_timeout_s=120)
    try:
        rows = learner.placement()
        _show("grpo_gpu_2x8.yaml learner.strategy=SPREAD learner.num_ranks=4", rows, cluster["names"])
        _check_group(learner, rows)
        assert [len(ranks) for _, ranks in node_runs(rows)] == [2, 2]
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
        ("grpo_gpu_2x8.yaml", ["learner.strategy=SPREAD"], [4, 4]),
        ("grpo_gpu_2x8.yaml", [], [8]),  # STRICT_PACK
    ],
)
def test_learner_strategy_decides_the_nodes(cluster, profile, overrides, expected_per_node):
    """Placement groups only (no actors): bundles per node, and the rank order `ActorGroup` would use."""
    cfg = load_config(CONFIGS / profile, [*SMALL_CPUS, *overrides])
    spec = role_specs(cfg)["learner"]
    pg = reserve(spec, timeout_s=60)
    try:
        bundle_node = ray.util.placement_group_table(pg)["bundles_to_node_id"]
        rows = [
            {"role": spec.name, "rank": rank, "bundle": b, "node_id": bundle_node[b]}
            for rank, b in enumerate(ordered_bundles(pg))
        ]
        runs = node_runs(rows)
        assert sorted(len(ranks) for _, ranks in runs) == sorted(expected_per_node)
        assert len(runs) == len({node for node, _ in runs})
    finally:
        ray.util.remove_placement_group(pg)


def test_colocated_roles_share_bundles_by_fraction(cluster):
    """A judge colocated with the rollout: both groups on the rollout's bundles, half a GPU each."""
    cfg = load_config(
        CONFIGS / "grpo_gpu_1x8.yaml",
        [*SMALL_CPUS, "rollout.num_engines=2", "judge.enabled=true", "judge.colocate_with_rollout=true"],
    )
    specs = role_specs(cfg)
    assert "judge" not in specs  # it takes no bundles of its own
    full = specs["rollout"]
    _free_gpus_become(2 * GPUS_PER_NODE)  # what earlier tests reserved is released
    pg = reserve(full, timeout_s=60)
    rollout = ActorGroup(Probe, shared_fraction(full, 0.5), pg=pg)
    judge = ActorGroup(Probe, shared_fraction(dataclasses.replace(full, name="judge"), 0.5), pg=pg)
    try:
        a, b = rollout.placement(), judge.placement()
        _show("grpo_gpu_1x8.yaml rollout + colocated judge", a + b, cluster["names"])
        assert [(r["bundle"], r["node_id"]) for r in a] == [(r["bundle"], r["node_id"]) for r in b]
        _free_gpus_become(2 * GPUS_PER_NODE - full.num_workers)  # one GPU per bundle, not two
        judge.shutdown()  # a group that did not reserve the placement group leaves it in place
        assert rollout.call_all("ping") == [True] * full.num_workers
        assert ray.util.placement_group_table(pg)["state"] == "CREATED"
    finally:
        judge.shutdown()
        rollout.shutdown()
        ray.util.remove_placement_group(pg)


def test_more_than_the_cluster_has_fails_fast_and_names_it(cluster, tiny_model, tmp_path):
    from rrm_ray.driver import GRPOJob

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
    started = time.monotonic()
    with pytest.raises(PlacementError) as info:
        job.start()
    assert time.monotonic() - started < 10
    assert "GPU: the job asks for 20 (rollout 12x1, learner 8x1), the cluster has 16" in str(info.value)
    assert job.groups == []
    job.close()

    # Totals fit but the strategy cannot: 12 ranks STRICT_PACK on 8-GPU nodes.
    spec = RoleSpec("learner", 12, 0.05, 1.0, "STRICT_PACK")
    lines = unplaceable({"learner": spec}, [n["Resources"] for n in cluster["nodes"]])
    assert lines and "learner: STRICT_PACK needs 12 x" in lines[0]
    started = time.monotonic()
    with pytest.raises(PlacementError, match=r"GPU: asked 12, cluster total 16"):
        reserve(spec, timeout_s=3)
    assert time.monotonic() - started < 15


def test_grpo_step_with_learner_ranks_on_two_nodes(cluster, tiny_model, tmp_path):
    """The real stack on the simulated cluster: vLLM engine, 2 FSDP2 ranks (gloo) on distinct nodes."""
    from rrm_ray.driver import GRPOJob

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
        dist = job.learner.get([a.__ray_call__.remote(_dist_facts) for a in job.learner.actors], "dist_facts")
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
