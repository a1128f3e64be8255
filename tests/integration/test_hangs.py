"""A hung actor is killed and restarted like a dead one, and its call retried; a hung reward rule costs
its item the fallback reward, not the step. Real parts: a Ray actor that blocks in its call (alive,
answering nothing), a rule process stuck in `sleep`."""

from __future__ import annotations

import pytest

from rrm_ray.clients import reward as reward_client
from rrm_ray.clients.restarts import Restarts
from rrm_ray.clients.roles import OwnGroups
from rrm_ray.data.prompts import PromptRow
from rrm_ray.types import Completion
from rrm_ray.validation import load_config

pytestmark = pytest.mark.integration


def test_a_hung_reward_actor_is_restarted_and_a_hung_rule_times_out(ray_local, tmp_path, monkeypatch):
    from tests.integration.fault_hooks import RewardHangingOnce

    monkeypatch.setattr(reward_client, "RewardWorker", RewardHangingOnce)
    marker = tmp_path / "reward.hung"
    cfg = load_config(
        None,
        [
            "cluster.call_timeout_s=20",  # the hang is noticed after 20 s, the ping then waits 5 s
            "cluster.max_actor_restarts=1",
            f"cluster.env.RRM_TEST_HANG_REWARD_MARKER={marker}",
            "reward.rule=tests.integration.rules:count_vowels_hanging_on_hang",
            "reward.timeout_s=2",
            "data.prompts_per_step=1",
            "rollout.n_samples=3",
            "data.eval_max_prompts=3",
            "learner.num_ranks=1",
        ],
    )
    groups: list = []
    restarts = Restarts.alone(cfg, groups)
    client = reward_client.RewardClient.start(cfg, OwnGroups(cfg), restarts, judge=None)
    groups.append(client.group)
    try:
        rows = [PromptRow("Say something.", "x", 1)]
        texts = ["aeiou", "hang on", "ae"]
        completions = [Completion(0, [1], [2], [0.0], t, "stop") for t in texts]
        with pytest.warns(UserWarning, match=r"1 reward actor\(s\) hung .*call_timeout_s=20"):
            scored = client.score(completions, rows)
        assert marker.exists()  # the first call really hung
        assert restarts.faults["reward_hangs"] == 1 and restarts.faults["reward_restarts"] == 0
        # the retry on the restarted actor: the stuck rule's item got the fallback, the others scored
        assert scored.rewards == [0.5, cfg.reward.fallback, 0.2] and scored.timeouts == 1
    finally:
        client.group.shutdown()
