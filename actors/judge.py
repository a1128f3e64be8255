"""Judge actor: a vLLM engine holding the judge model, and the JudgeService that batches its work.

The actor is thin: `JudgeService` (pure, `rrm_ray.judge.service`) does the voting, caching and
tournaments and calls back into `_generate` once per voting wave; `_generate` runs that wave as ONE
vLLM batch with the configured sampling and a deadline (`judge.batch_timeout_s`), after which the
unfinished judgments are aborted and count as timed out. With `judge.verdict=choice_prob` the
service calls `_choice_probs` instead: one single-token forward per presentation, read as the
probabilities of "1" and "2" (`rrm_ray.judge.verdict.choice_probability`).

vLLM's prefix cache (`judge.prefix_caching`) computes the prompt head that all pairs of a query share
(system prompt and question, `rrm_ray.judge.prompts`) once; `stats()` reports the prompt tokens and
how many of them the cache supplied.

`JudgePool` is the driver-side facade over N judge engines (an `ActorGroup`): it splits pairs or
queries into contiguous shards, one per engine, and gathers the results in order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from actors.rollout import VLLMEngine, engine_env
from rrm_ray.actor_group import ActorGroup, RoleSpec
from rrm_ray.config import JobConfig, resolved_dtype
from rrm_ray.judge.prompts import PREFIXED_VERDICTS, choice_token_ids
from rrm_ray.judge.service import (
    JudgePair,
    JudgeService,
    JudgeSettings,
    PairJudgment,
    RankResult,
    judge_rates,
)
from rrm_ray.judge.verdict import choice_probability
from rrm_ray.models import resolve_model_path
from rrm_ray.placement import own_spec, shares_bundles


class JudgeWorker(VLLMEngine):
    """One judge engine. Results are plain dataclasses (picklable), reasoning traces included."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        judge: dict[str, Any],
        seed: int,
        device: str = "cpu",
        max_num_batched_tokens: int = 16384,
        enable_sleep_mode: bool = False,
    ) -> None:
        super().__init__(
            model_path,
            dtype,
            judge["max_model_len"],
            seed,
            device,
            gpu_memory_utilization=judge["gpu_memory_utilization"],
            enable_sleep_mode=enable_sleep_mode,
            max_num_batched_tokens=max_num_batched_tokens,
            tensor_parallel_size=judge["tensor_parallel_size"],
            enable_prefix_caching=bool(judge["prefix_caching"]),
        )
        self.model_path, self.seed = model_path, seed
        self.configure(judge)

    def configure(self, judge: dict[str, Any]) -> None:
        """Sampling-time settings (`rrm_ray.judge.sweep.SESSION_KEYS`: decoding, votes, prompt and
        tournament rules) on this running engine, e.g. a test-time-scaling sweep's next point. A new
        service: an empty cache (its keys name the old settings) and counters from zero."""
        model_path, seed = self.model_path, self.seed
        self.temperature = float(judge["temperature"])
        self.top_p = float(judge["top_p"])
        self.max_new_tokens = int(judge["max_new_tokens"])
        self.batch_timeout_s = float(judge["batch_timeout_s"])
        self.think_budget = int(judge["think_budget"])
        # Everything outside JudgeSettings that changes a verdict; weights changes clear the cache.
        cache_key = (
            f"{model_path}|t={self.temperature:g}|p={self.top_p:g}|max={self.max_new_tokens}"
            f"|think={self.think_budget}"
        )
        settings = JudgeSettings.from_config(judge, seed, cache_key)
        # A forced choice generates one token, "1" or "2" (see rrm_ray.judge.prompts.CHOICE_PREFIX);
        # a choice probability reads both from one forward.
        self.choice_ids = choice_token_ids(self.tokenizer) if settings.verdict in PREFIXED_VERDICTS else None
        self.service = JudgeService(
            self._generate,
            self.tokenizer,
            settings,
            choice_probs=self._choice_probs if settings.verdict == "choice_prob" else None,
        )
        self._engine_stats = self._new_engine_stats()
        # vLLM's prefix cache too: a sweep point or best-of-n setting pays for its own prefill, so the
        # seconds of points do not depend on the order they ran in
        self.llm.reset_prefix_cache()

    @staticmethod
    def _new_engine_stats() -> dict[str, float]:
        return {"generated_tokens": 0, "generate_s": 0.0, "prefill_tokens": 0, "prefix_cached_tokens": 0}

    def _count(self, generated_tokens: int, seconds: float) -> None:
        """Engine counters of one batch; the prefill counts come from `_run_until`'s tally."""
        self._engine_stats["generated_tokens"] += generated_tokens
        self._engine_stats["generate_s"] += seconds
        self._engine_stats["prefill_tokens"] += self.prefill["prompt_tokens"]
        self._engine_stats["prefix_cached_tokens"] += self.prefill["cached_tokens"]
        self.prefill = {"prompt_tokens": 0, "cached_tokens": 0}

    def _generate(self, prompts: list[str], n: int) -> list[list[str] | None]:
        """n samples per prompt, sent as n requests of one sample each: vLLM runs n > 1 as n requests
        anyway, but reports prefix-cache hits for one of them only, so this keeps the counts exact."""
        batch = self.generate_texts(
            [p for p in prompts for _ in range(n)],
            1,
            self.temperature,
            self.top_p,
            1 if self.choice_ids else self.max_new_tokens,
            self.batch_timeout_s,
            allowed_token_ids=self.choice_ids,
            think_budget=self.think_budget,
        )
        self._count(batch.generated_tokens, batch.seconds)
        texts: list[list[str] | None] = []
        for k in range(len(prompts)):
            samples: list[str] = []
            for one in batch.texts[k * n : (k + 1) * n]:
                samples += one or []
            # one unfinished sample leaves the prompt undecided, as a timed-out n-sample request did
            texts.append(samples if len(samples) == n else None)
        return texts

    def _choice_probs(self, prompts: list[str]) -> list[float | None]:
        """verdict choice_prob: ONE forward per prompt (max_tokens=1), returning P("1") renormalised
        over {"1", "2"}; None where the deadline passed. `logprob_token_ids` makes vLLM return exactly
        these two tokens' log-probs (no top-k cut-off); temperature 1 and top_p 1 keep them the
        model's own distribution (the engine reports processed log-probs)."""
        from vllm import SamplingParams

        assert self.choice_ids is not None
        self._check_awake("choice_probs")
        start = time.perf_counter()
        params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, logprob_token_ids=self.choice_ids)

        def read(out: Any) -> dict[int, float]:
            (position,) = out.outputs[0].logprobs  # one generated token: one position
            return {token: float(lp.logprob) for token, lp in position.items()}

        found = self._run_until(prompts, [params] * len(prompts), start + self.batch_timeout_s, read)
        self._count(sum(f is not None for f in found), time.perf_counter() - start)
        return [None if f is None else choice_probability(f, self.choice_ids) for f in found]

    # -- the judge API -------------------------------------------------------------------------------
    def compare(
        self, pairs: Sequence[JudgePair | tuple | dict], votes: int | None = None
    ) -> list[PairJudgment]:
        return self.service.compare(pairs, votes)

    def rank(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        method: str | None = None,
        votes: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> list[RankResult]:
        return self.service.rank(items, method, votes, keys)

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Service counters plus generated tokens, engine seconds, prompt tokens and prefix-cache hits
        since the last reset: plain sums, so the pool can add engines up (ratios: `judge_rates`)."""
        counters = self.service.reset_stats() if reset else self.service.stats
        out: dict[str, float] = {**dataclasses.asdict(counters), **self._engine_stats}
        if reset:
            self._engine_stats = self._new_engine_stats()
        return out

    def set_batch_timeout(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"judge batch timeout must be > 0 seconds, got {seconds}")
        self.batch_timeout_s = float(seconds)

    def clear_cache(self) -> None:
        """The verdict cache and vLLM's prefix cache: the next calls pay for everything they judge."""
        self.service.cache.clear()
        self.llm.reset_prefix_cache()

    def wake_up(self) -> bool:
        """After a level-2 sleep the judge's weights are read again from `judge.model_path` (vLLM's
        in-place reload), so the caller never has to supply them: returns False."""
        if self.awake or self.sleep_level != 2:
            return super().wake_up()
        self.llm.wake_up(tags=["weights"])  # weights first: the reload needs only their memory
        self.llm.collective_rpc("reload_weights")
        self.llm.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()
        self.awake = True
        self.sleep_events.append(("wake", self.sleep_level, time.time()))
        return False

    def finish_weight_update(self) -> dict[str, int]:
        """New judge weights make every cached verdict stale."""
        report = super().finish_weight_update()
        self.service.cache.clear()
        return report


def _chunks(items: Sequence[Any], parts: int) -> list[list[Any]]:
    size = -(-len(items) // parts) if items else 0
    return [list(items[k * size : (k + 1) * size]) for k in range(parts)]


class JudgePool:
    """The judge role: `judge.num_engines` JudgeWorkers on one placement group.

    Work is split into contiguous shards (engine e gets shard e), so each engine batches its shard
    in its own waves; every engine keeps its own cache.
    """

    def __init__(
        self, cfg: JobConfig, spec: RoleSpec | None = None, pg: Any = None, worker_cls: type = JudgeWorker
    ) -> None:
        c, j = cfg.cluster, cfg.judge
        self.model_path = resolve_model_path(j.model_path)
        self.group = ActorGroup(
            worker_cls,
            spec or own_spec(cfg, "judge"),  # the judge alone (rrm-ray judge / eval / best-of-n)
            init_args=(
                self.model_path,
                resolved_dtype(cfg),
                dataclasses.asdict(j),
                cfg.trainer.seed,
                c.device,
            ),
            # engines that share GPUs with another role sleep while it works (rrm_ray.colocation)
            init_kwargs={"enable_sleep_mode": shares_bundles(cfg, "judge")},
            env={**engine_env(c.device, j.kv_cache_gib, j.threads), **c.env},
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
            max_restarts=c.max_actor_restarts,  # a dead engine comes back; callers retry (rrm_ray.recovery)
            pg=pg,
        )
        self.group.call_all("ping")  # engines loaded: later timings measure judging, not start-up

    def _sharded(self, call: str, items: Sequence[Any], **kwargs: Any) -> list[Any]:
        shards = _chunks(items, len(self.group))
        refs = [
            getattr(a, call).remote(s, **kwargs) for a, s in zip(self.group.actors, shards, strict=True) if s
        ]
        return [x for part in self.group.get(refs, what=call) for x in part]

    def compare(self, pairs: Sequence[JudgePair], votes: int | None = None) -> list[PairJudgment]:
        return self._sharded("compare", pairs, votes=votes)

    def rank(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        method: str | None = None,
        votes: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> list[RankResult]:
        """Every item ranked; its tournament seeded by its key (default: its position in `items`), so
        the result does not depend on how many engines share the work."""
        keyed = list(zip(items, range(len(items)) if keys is None else keys, strict=True))
        shards = _chunks(keyed, len(self.group))
        refs = [
            a.rank.remote([i for i, _ in s], method=method, votes=votes, keys=[k for _, k in s])
            for a, s in zip(self.group.actors, shards, strict=True)
            if s
        ]
        return [x for part in self.group.get(refs, what="rank") for x in part]

    def rank_on(self, engine: int, items: Sequence[tuple[str, Sequence[str]]], keys: Sequence[int]) -> Any:
        """One engine ranks these items (a Ray ref): the streaming judge sends each idle engine the
        groups that finished meanwhile (`rrm_ray.streaming.JudgeDispatch`)."""
        return self.group.actors[engine].rank.remote(list(items), keys=list(keys))

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Counters summed over the engines, plus the ratios of `judge_rates` (prefix-cache hit rate,
        generated tokens and seconds per ranked prompt)."""
        total: dict[str, float] = {}
        for part in self.group.call_all("stats", reset):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        return judge_rates(total)

    def set_batch_timeout(self, seconds: float) -> None:
        self.group.call_all("set_batch_timeout", seconds)

    def configure(self, judge: dict[str, Any]) -> None:
        """New sampling-time settings on every engine (`JudgeWorker.configure`); caches, counters anew."""
        self.group.call_all("configure", judge)

    def clear_cache(self) -> None:
        self.group.call_all("clear_cache")

    def shutdown(self) -> None:
        self.group.shutdown()
