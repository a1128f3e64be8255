"""The judge role's client: `judge.num_engines` RRM judge engines (`actors.judge.JudgeWorker`).

Work is split into contiguous shards, engine e gets shard e, so each engine batches its shard in its
own voting waves and keeps its own verdict cache; results come back in order. Every call wakes the
engines first (colocation) and is retried after Ray restarted a dead engine; the judge's weights are
`judge.model_path`, never the learner's, so a restart needs no sync. Usable on its own, without a
learner (`share` None: `rrm-ray judge | eval | best-of-n`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from actors.engine import engine_env
from actors.judge import JudgeWorker
from rrm_ray.clients.group import ActorGroup
from rrm_ray.clients.restarts import Restarts
from rrm_ray.config import JobConfig, JudgeConfig, resolved_dtype
from rrm_ray.judge.records import JudgePair, PairJudgment, RankResult, judge_rates
from rrm_ray.models import resolve_model_path

if TYPE_CHECKING:
    from rrm_ray.clients.colocation import Colocation
    from rrm_ray.clients.roles import Placement


def _chunks(items: Sequence[Any], parts: int) -> list[list[Any]]:
    size = -(-len(items) // parts) if items else 0
    return [list(items[k * size : (k + 1) * size]) for k in range(parts)]


class JudgeClient:
    """The judge engines of one job or command, behind typed calls."""

    def __init__(self, group: ActorGroup, share: Colocation | None, restarts: Restarts) -> None:
        self.group, self.share, self.restarts = group, share, restarts
        self.settings: JudgeConfig | None = None  # set by `configure`; None: the ones it started with

    @classmethod
    def start(
        cls,
        cfg: JobConfig,
        place: Placement,
        share: Colocation | None,
        restarts: Restarts,
        worker_cls: type | None = None,
        wait: bool = True,
    ) -> JudgeClient:
        """The engines on the judge's bundles (`place`), loaded before this returns, so later timings
        measure judging, not start-up. `worker_cls`: a JudgeWorker subclass (benchmarks, fault tests).
        `wait` False: returns once the engines are asked to load, so they load while the caller starts
        other roles; `ready()` then waits for them."""
        c, j = cfg.cluster, cfg.judge
        if share is not None:
            share.before("judge")  # engines on its bundles sleep before it sizes its KV cache
        group = place(
            "judge",
            worker_cls or JudgeWorker,
            init_args=(resolve_model_path(j.model_path), resolved_dtype(cfg), j, cfg.trainer.seed, c.device),
            # engines that share GPUs with another role sleep while it works (rrm_ray.clients.colocation)
            init_kwargs={"enable_sleep_mode": place.shared("judge")},
            env={**engine_env(c.device, j.kv_cache_gib, j.threads, j.tensor_parallel_size), **c.env},
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
            max_restarts=c.max_actor_restarts,  # a dead engine comes back; calls retry (rrm_ray.recovery)
        )
        client = cls(group, share, restarts)
        if wait:
            client.ready()
        return client

    def ready(self) -> None:
        """Until every engine answers (its model loaded); engines that share bundles then sleep."""
        self.group.call_all("ping")
        if self.share is not None:
            self.share.register("judge", self.group)

    def __len__(self) -> int:
        return len(self.group)

    # -- calls ---------------------------------------------------------------------------------------------
    def _call(self, call: Callable[[], Any]) -> Any:
        def once(attempt: int) -> Any:
            self.wake()
            if attempt and self.settings is not None:  # a restarted engine came back with its first ones
                self.group.call_all("configure", self.settings)
            return call()

        return self.restarts.retry(self.group, once)

    def wake(self) -> None:
        """Roles sharing the judge's GPUs sleep (rrm_ray.clients.colocation): before every call, and
        before work sent to the engines directly (the streamed batch's `rank_on`)."""
        if self.share is not None:
            self.share.before("judge")

    def compare(self, pairs: Sequence[JudgePair], votes: int | None = None) -> list[PairJudgment]:
        """Each pair judged (both orders, `votes` or `judge.votes` sampled judgments), in order."""

        def sharded() -> list[PairJudgment]:
            shards = _chunks(pairs, len(self.group))
            refs = [
                a.compare.remote(s, votes=votes) for a, s in zip(self.group.actors, shards, strict=True) if s
            ]
            return [x for part in self.group.get(refs, what="compare") for x in part]

        return self._call(sharded)

    def rank(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        method: str | None = None,
        votes: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> list[RankResult]:
        """Every item (a query and its responses) ranked. `method` / `votes` None: `judge.method` /
        `judge.votes` (best-of-n compares others); `keys` seed each item's tournament (None: its
        position), so a result does not depend on how many engines share the work."""

        def sharded() -> list[RankResult]:
            keyed = list(zip(items, range(len(items)) if keys is None else keys, strict=True))
            shards = _chunks(keyed, len(self.group))
            refs = [
                a.rank.remote([i for i, _ in s], method=method, votes=votes, keys=[k for _, k in s])
                for a, s in zip(self.group.actors, shards, strict=True)
                if s
            ]
            return [x for part in self.group.get(refs, what="rank") for x in part]

        return self._call(sharded)

    def rank_on(self, engine: int, items: Sequence[tuple[str, Sequence[str]]], keys: Sequence[int]) -> Any:
        """One engine ranks these items, returning its Ray ref at once: the streamed batch sends each
        idle engine the groups that finished meanwhile (`rrm_ray.judge.dispatch.JudgeDispatch`)."""
        return self.group.actors[engine].rank.remote(list(items), keys=list(keys))

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Counters summed over the engines, plus the ratios of `judge_rates` (prefix-cache hit rate,
        generated tokens and seconds per ranked prompt); no wake-up: reading them is no work."""

        def summed(_: int) -> dict[str, float]:
            total: dict[str, float] = {}
            for part in self.group.call_all("stats", reset):
                for k, v in part.items():
                    total[k] = total.get(k, 0) + v
            return judge_rates(total)

        return self.restarts.retry(self.group, summed)

    def configure(self, judge: JudgeConfig) -> None:
        """New sampling-time settings on every engine (`JudgeWorker.configure`: a sweep's next point; an
        empty cache, counters from zero), kept to be set again on an engine Ray restarts."""
        self.settings = judge
        self.restarts.retry(self.group, lambda _: self.group.call_all("configure", judge))

    def clear_cache(self) -> None:
        """Every engine's verdict and prefix caches emptied (best-of-n: each setting pays for its
        comparisons)."""
        self.restarts.retry(self.group, lambda _: self.group.call_all("clear_cache"))

    def shutdown(self) -> None:
        self.group.shutdown()
