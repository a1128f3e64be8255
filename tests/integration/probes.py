"""Stand-in actors for placement tests, and probes the tests run inside real actors.

`Probe` replaces vLLM engines and torch ranks (which need a GPU) and only reports where it runs. The
functions below run inside a live actor through Ray's `__ray_call__` (`on_rank0`, `on_all`): what the
tests read of an engine or a learner rank that the system itself never needs (log-probs of a fixed
sequence, weight checksums, the sleep log, the full weights). Workers import this module by name, so
it stays small: nothing of pytest or the test modules (an actor that imports them starts seconds
slower)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.worker import Worker


class Probe(Worker):
    """A placement probe: starts in a blink and only answers `node_info`, `free_port` and `ping`."""


def on_rank0(group: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(actor, *args)` inside the group's rank-0 actor."""
    return group.get([group.actors[0].__ray_call__.remote(fn, *args)], fn.__name__)[0]


def on_all(group: Any, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """`fn(actor, *args)` inside every actor of the group (collective calls need all ranks), in rank order."""
    return group.get([a.__ray_call__.remote(fn, *args) for a in group.actors], fn.__name__)


def engine_logprobs(engine: Any, token_ids: list[int]) -> list[float]:
    """Log-probs (temperature 1) a vLLM engine gives a fixed sequence: a functional weight checksum.

    On CPU vLLM repacks linear weights into kernel formats, so comparing parameters directly is
    impossible; equal log-probs on the same tokens show the engine computes with the same weights.
    A LoRA engine computes them with the adapter its requests carry."""
    from vllm import SamplingParams, TokensPrompt

    out = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=token_ids)],
        SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0),
        use_tqdm=False,
        lora_request=getattr(engine, "lora_request", None),  # a LoRA engine's current adapter
    )[0]
    steps = out.prompt_logprobs[1:]  # the first token has no log-prob
    return [float(step[tok].logprob) for tok, step in zip(token_ids[1:], steps, strict=True)]


def learner_logprobs(learner: Any, token_ids: list[int]) -> list[float]:
    """The same from a learner rank (collective under FSDP2: run it on every rank, `on_all`)."""
    import torch

    with torch.no_grad():
        ids = torch.tensor([token_ids], device=learner.device)
        lp, _ = learner.policy.model(
            input_ids=ids, logprob_temperature=1.0, logprob_chunk=learner.cfg.logprob_chunk
        )
    return lp[0].tolist()


def _worker_checksums(worker: Any, skip_lm_head: bool) -> dict[str, list[float]]:
    from tests.weight_checks import layer_checksums

    return layer_checksums(worker.model_runner.model.named_parameters(), skip_lm_head)


def engine_checksums(engine: Any) -> dict[str, list[float]]:
    """Per-layer checksums of the weights a vLLM engine holds (`tests.weight_checks`)."""
    return engine.llm.collective_rpc(_worker_checksums, args=(engine.tied_embeddings,))[0]


def sleep_log(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    """An engine's sleep/wake events and the awake state of every call it was given."""
    return {"events": list(engine.sleep_events), "calls": list(engine.work_calls)}


def export_weights(learner: Any, bucket_mb: int) -> tuple[list, list[Any]] | None:
    """Collective: rank 0 returns (manifest, bucket refs in the object store); the others None."""
    import ray

    from rrm_ray.weight_sync import buckets, manifest_of

    sd = learner._full_state_dict()
    if learner.rank != 0:
        return None
    named = list(sd.items())
    refs = [ray.put(b) for b in buckets(named, bucket_mb * 1024 * 1024)]
    return manifest_of(named), refs


def master_weights(learner: Any) -> dict[str, Any] | None:
    """Collective: rank 0 returns the full master weights (fp32 under mixed precision) on CPU."""
    sd = learner.policy.full_state_dict()
    return sd if learner.rank == 0 else None


def break_sync_after(learner: Any, tensors: int) -> None:
    """The learner's next sync fails after `tensors` tensors were streamed (a rank failing half-way:
    an out-of-memory, a lost peer). The next `init_weight_transfer` builds a sound source again."""
    source = learner.weight_source
    stream = source.stream

    def failing(dtype: Any) -> Any:
        for i, item in enumerate(stream(dtype)):
            if i == tensors:
                raise RuntimeError(f"injected: the sync failed after {tensors} tensors")
            yield item

    source.stream = failing
