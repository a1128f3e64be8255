"""Judge actor: a vLLM engine holding the judge model, and the JudgeService that batches its work.

The actor is thin: `JudgeService` (pure, `rrm_ray.judge.service`) does the voting, caching and
tournaments and calls back into `_generate` once per voting wave; `_generate` runs that wave as ONE
vLLM batch with the configured sampling and a deadline (`judge.batch_timeout_s`), after which the
unfinished judgments are aborted and count as timed out.

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
from rrm_ray.judge.prompts import choice_token_ids
from rrm_ray.judge.service import JudgePair, JudgeService, JudgeSettings, PairJudgment, RankResult
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
        )
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
        self.service = JudgeService(
            self._generate, self.tokenizer, JudgeSettings.from_config(judge, seed, cache_key)
        )
        # A forced choice generates one token, "1" or "2" (see rrm_ray.judge.prompts.CHOICE_PREFIX).
        choice = self.service.settings.verdict == "choice"
        self.choice_ids = choice_token_ids(self.tokenizer) if choice else None
        self._engine_stats = {"generated_tokens": 0, "generate_s": 0.0}

    def _generate(self, prompts: list[str], n: int) -> list[list[str] | None]:
        batch = self.generate_texts(
            prompts,
            n,
            self.temperature,
            self.top_p,
            1 if self.choice_ids else self.max_new_tokens,
            self.batch_timeout_s,
            allowed_token_ids=self.choice_ids,
            think_budget=self.think_budget,
        )
        self._engine_stats["generated_tokens"] += batch.generated_tokens
        self._engine_stats["generate_s"] += batch.seconds
        return batch.texts

    # -- the judge API -------------------------------------------------------------------------------
    def compare(
        self, pairs: Sequence[JudgePair | tuple | dict], votes: int | None = None
    ) -> list[PairJudgment]:
        return self.service.compare(pairs, votes)

    def rank(
        self, items: Sequence[tuple[str, Sequence[str]]], method: str | None = None, votes: int | None = None
    ) -> list[RankResult]:
        return self.service.rank(items, method, votes)

    def best_of_n(
        self, items: Sequence[tuple[str, Sequence[str]]], method: str | None = None, votes: int | None = None
    ) -> list[int]:
        return self.service.best_of_n(items, method, votes)

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Service counters plus generated tokens and engine seconds since the last reset."""
        counters = self.service.reset_stats() if reset else self.service.stats
        out: dict[str, float] = {**dataclasses.asdict(counters), **self._engine_stats}
        if reset:
            self._engine_stats = {"generated_tokens": 0, "generate_s": 0.0}
        return out

    def set_batch_timeout(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"judge batch timeout must be > 0 seconds, got {seconds}")
        self.batch_timeout_s = float(seconds)

    def clear_cache(self) -> None:
        self.service.cache.clear()

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
        self, items: Sequence[tuple[str, Sequence[str]]], method: str | None = None, votes: int | None = None
    ) -> list[RankResult]:
        return self._sharded("rank", items, method=method, votes=votes)

    def best_of_n(
        self, items: Sequence[tuple[str, Sequence[str]]], method: str | None = None, votes: int | None = None
    ) -> list[int]:
        return self._sharded("best_of_n", items, method=method, votes=votes)

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Counters summed over the engines."""
        total: dict[str, float] = {}
        for part in self.group.call_all("stats", reset):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        return total

    def set_batch_timeout(self, seconds: float) -> None:
        self.group.call_all("set_batch_timeout", seconds)

    def clear_cache(self) -> None:
        self.group.call_all("clear_cache")

    def shutdown(self) -> None:
        self.group.shutdown()
