"""Rollout actor: the policy's vLLM engine. Samples groups for GRPO (all at once, or streamed group by
group), greedy held-out evaluation, and budget-forced generation for judge training; weights arrive
through `actors.engine.VLLMEngine`'s side of vLLM's weight-transfer protocol."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from actors.engine import VLLMEngine, sampled_logprobs
from actors.lora_receiver import AdapterReceiver
from rrm_ray.data.prompts import prompt_token_ids
from rrm_ray.judge.budget import THINK_CLOSE, close_thinking, verdict_allowance
from rrm_ray.seeds import request_seed
from rrm_ray.types import Completion


def _completions(prompt_index: int, out: Any) -> list[Completion]:
    """One prompt's finished vLLM `RequestOutput` as its n Completions."""
    return [
        Completion(
            prompt_index=prompt_index,
            prompt_ids=list(out.prompt_token_ids),
            response_ids=list(sample.token_ids),
            response_logprobs=sampled_logprobs(sample),
            text=sample.text,
            finish_reason=str(sample.finish_reason),
        )
        for sample in out.outputs
    ]


class RolloutWorker(AdapterReceiver, VLLMEngine):
    """The rollout role: policy samples for GRPO and greedy evaluation; a LoRA policy's adapter arrives
    through `AdapterReceiver`."""

    def generate(
        self,
        prompts: list[str],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None = None,
        prompt_offset: int = 0,
        think_budget: int = 0,
    ) -> list[Completion]:
        """n samples for each prompt; greedy when temperature == 0. Returns a flat list, prompt-major.

        `seed` gives every (prompt, sample) its own random stream, distinct across engines too
        (`rrm_ray.seeds.request_seed` of the global prompt index `prompt_offset + i`) and reproducible,
        e.g. across a resume. vLLM's CPU sampler cannot keep per-request seeds through a chunked
        prefill, so on CPU seeds are used only when the whole batch's prefill fits into one scheduler step.
        ``think_budget`` > 0: budget forcing for a thinking judge (see ``_generate_with_budget``).
        """
        self._check_awake("generate")
        inputs = self._encoded(prompts)
        seed = self._usable_seed(inputs, n, seed)
        if think_budget > 0:
            return self._generate_with_budget(
                inputs, n, temperature, top_p, max_tokens, seed, prompt_offset, think_budget
            )
        params = self._sampling(len(prompts), n, temperature, top_p, max_tokens, seed, prompt_offset)
        outputs = self.run_batch(inputs, params)
        return [c for i, out in enumerate(outputs) for c in _completions(prompt_offset + i, out)]

    def generate_stream(
        self,
        prompts: list[str],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None = None,
        prompt_offset: int = 0,
    ) -> Iterator[list[Completion]]:
        """`generate`, yielding each prompt's n samples as soon as they are all done (a Ray streaming
        generator: the caller scores and judges finished groups while the rest still generate). The
        same requests as `generate`, so the same samples; the order of the groups is the engine's."""
        self._check_awake("generate")
        inputs = self._encoded(prompts)
        seed = self._usable_seed(inputs, n, seed)
        params = self._sampling(len(prompts), n, temperature, top_p, max_tokens, seed, prompt_offset)
        finished = 0
        for i, out in self._as_finished(inputs, params):
            finished += 1
            yield _completions(prompt_offset + i, out)
        if finished != len(prompts):
            raise RuntimeError(f"generate_stream: the engine finished {finished} of {len(prompts)} prompts")

    def _encoded(self, prompts: list[str]) -> list[dict[str, list[int]]]:
        """The rendered prompts as token ids, BOS not doubled (`rrm_ray.data.prompts.prompt_token_ids`)."""
        return [{"prompt_token_ids": prompt_token_ids(self.tokenizer, p)} for p in prompts]

    def _usable_seed(self, inputs: list[dict[str, list[int]]], n: int, seed: int | None) -> int | None:
        """vLLM's CPU sampler keeps per-request seeds only when the whole prefill fits one step."""
        if seed is not None and self.device_kind == "cpu":
            prefill = sum(len(p["prompt_token_ids"]) for p in inputs) * n
            if prefill > self.max_num_batched_tokens:
                return None
        return seed

    @staticmethod
    def _sampling(
        count: int, n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None, offset: int
    ) -> list[Any]:
        from vllm import SamplingParams

        return [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                logprobs=0,
                seed=None if seed is None else request_seed(seed, offset + i, n),
            )
            for i in range(count)
        ]

    def _generate_with_budget(
        self,
        prompts: list[dict[str, list[int]]],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None,
        prompt_offset: int,
        think_budget: int,
    ) -> list[Completion]:
        """Budget forcing (``rrm_ray.judge.budget``): think for at most ``think_budget`` tokens, close
        the thought if the model did not, then decide with the rest of ``max_tokens``."""
        from vllm import SamplingParams, TokensPrompt

        def sampling(tokens: int, stop: list[str] | None, request: tuple[int, ...]) -> SamplingParams:
            return SamplingParams(
                n=1 if stop is None else n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=tokens,
                logprobs=0,
                stop=stop,
                include_stop_str_in_output=True,
                seed=None if seed is None else request_seed(seed, *request),
            )

        think = self.run_batch(
            prompts,
            [
                sampling(min(think_budget, max_tokens), [THINK_CLOSE], (prompt_offset + i, n))
                for i in range(len(prompts))
            ],
        )
        eos = {self.tokenizer.eos_token_id} - {None}
        prefixes, inputs, params = [], [], []
        for i, out in enumerate(think):
            for sample in out.outputs:
                thought = close_thinking(
                    sample.text, sample.token_ids, sampled_logprobs(sample), self.forced_close_ids, eos
                )
                prefixes.append((i, list(out.prompt_token_ids), thought))
                inputs.append(TokensPrompt(prompt_token_ids=list(out.prompt_token_ids) + thought.token_ids))
                allowance = verdict_allowance(max_tokens, thought.num_tokens)
                # one verdict request per thought: its own seed stream, by global sample index
                params.append(sampling(allowance, None, (prompt_offset * n + len(params), 1, 1)))
        prefill = sum(len(p["prompt_token_ids"]) for p in inputs)
        if self.device_kind == "cpu" and prefill > self.max_num_batched_tokens:  # as in `generate`
            for p in params:
                p.seed = None
        decide = self.run_batch(inputs, params)
        completions = []
        for (i, prompt_ids, thought), out in zip(prefixes, decide, strict=True):
            sample = out.outputs[0]
            tokens = list(sample.token_ids)
            completions.append(
                Completion(
                    prompt_index=prompt_offset + i,
                    prompt_ids=prompt_ids,
                    response_ids=thought.token_ids + tokens,
                    response_logprobs=thought.logprobs + sampled_logprobs(sample),
                    text=thought.text + sample.text,
                    finish_reason=str(sample.finish_reason),
                    response_mask=thought.mask + [1] * len(tokens),
                    forced_close=thought.forced,
                )
            )
        return completions
