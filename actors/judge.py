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

The driver side, N engines behind one typed client, is `rrm_ray.clients.judge.JudgeClient`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from actors.engine import VLLMEngine
from rrm_ray.config import JudgeConfig
from rrm_ray.judge.prompts import PREFIXED_VERDICTS, choice_token_ids
from rrm_ray.judge.records import JudgePair, JudgeSettings, PairJudgment, RankResult, judge_cache_key
from rrm_ray.judge.service import JudgeService
from rrm_ray.judge.verdict import choice_probability


class JudgeWorker(VLLMEngine):
    """One judge engine. Results are plain dataclasses (picklable), reasoning traces included."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        judge: JudgeConfig,
        seed: int,
        device: str = "cpu",
        max_num_batched_tokens: int = 16384,
        enable_sleep_mode: bool = False,
    ) -> None:
        super().__init__(
            model_path,
            dtype,
            judge.max_model_len,
            seed,
            device,
            gpu_memory_utilization=judge.gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            max_num_batched_tokens=max_num_batched_tokens,
            tensor_parallel_size=judge.tensor_parallel_size,
            enable_prefix_caching=judge.prefix_caching,
        )
        self.model_path, self.seed = model_path, seed
        self.configure(judge)

    def configure(self, judge: JudgeConfig) -> None:
        """Sampling-time settings (`rrm_ray.judge.sweep.SESSION_KEYS`: decoding, votes, prompt and
        tournament rules) on this running engine, e.g. a test-time-scaling sweep's next point. A new
        service: an empty cache (its keys name the old settings) and counters from zero."""
        model_path, seed = self.model_path, self.seed
        self.temperature = judge.temperature
        self.top_p = judge.top_p
        self.max_new_tokens = judge.max_new_tokens
        self.batch_timeout_s = judge.batch_timeout_s
        self.think_budget = judge.think_budget
        # Everything outside JudgeSettings that changes a verdict; weights changes clear the cache.
        cache_key = judge_cache_key(model_path, judge)
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

    def _generate(self, prompts: list[list[int]], n: int) -> list[list[str] | None]:
        """n samples per prompt (its token ids, as the service encoded them: vLLM tokenizes nothing, so
        a template's BOS is not doubled), sent as n requests of one sample each: vLLM runs n > 1 as n
        requests anyway, but reports prefix-cache hits for one of them only, so this keeps the counts
        exact."""
        batch = self.generate_texts(
            [{"prompt_token_ids": p} for p in prompts for _ in range(n)],
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

    def _choice_probs(self, prompts: list[list[int]]) -> list[float | None]:
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

        tokens = [{"prompt_token_ids": p} for p in prompts]
        found = self._run_until(tokens, [params] * len(prompts), start + self.batch_timeout_s, read)
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
