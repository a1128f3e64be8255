"""The vLLM engine both engine roles are built on (rollout and judge): one `LLM` in this actor process,
deadline-bounded generation, sleep/wake for colocation, and the engine's side of vLLM's weight-transfer
protocol.

Weights arrive through vLLM's weight-transfer protocol (`actors.weight_transfer`): the learner's rank 0
calls `init_weight_transfer_engine` once (again after a restart of either side), then per sync
`start_weight_update` -> `update_weights` (per chunk) -> `finish_weight_update`, which returns the
engine's completeness report.

vLLM is imported inside the methods: this module is imported by the driver too (to start the actors),
and importing vLLM costs seconds and sets up its platform state.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
import torch

from actors.worker import Worker
from rrm_ray.judge.budget import FORCED_CLOSE, THINK_CLOSE, close_thinking_text, verdict_allowance
from rrm_ray.lora import vllm_max_lora_rank
from rrm_ray.weight_sync import TensorMeta


@dataclass
class TextBatch:
    """One deadline-bounded batch: ``texts[i]`` holds prompt i's n samples, or None when the deadline
    passed first (its requests were aborted). ``generated_tokens`` counts the finished samples."""

    texts: list[list[str] | None]
    generated_tokens: int
    timed_out: int
    seconds: float


def sampled_logprobs(sample: Any) -> list[float]:
    """The log-prob of each sampled token (vLLM returns a dict per position)."""
    steps = sample.logprobs or []
    return [float(s[tok].logprob) for tok, s in zip(sample.token_ids, steps, strict=True)]


SLEEP_TAGS = ("weights", "kv_cache")  # what vLLM's sleep mode frees, and wakes one by one


def engine_env(
    device: str, kv_cache_gib: float, threads: int, tensor_parallel_size: int = 1
) -> dict[str, str]:
    """Environment an engine needs before vLLM is imported (set through the actor's runtime env).

    Tensor parallelism on CPU: vLLM binds each worker's OpenMP threads to the cores of a NUMA node by
    default ("auto"), which needs a node per worker and asserts on a one-node machine ("Not enough
    allowed NUMA nodes"); the engines here share the machine's cores with the other roles anyway, so
    the workers' threads are left unbound (`OMP_NUM_THREADS` each)."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # keep the engine core inside the actor process
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    if device == "cpu":
        env.update(
            VLLM_CPU_KVCACHE_SPACE=str(max(1, int(kv_cache_gib))),
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            OMP_NUM_THREADS=str(threads),
        )
        if tensor_parallel_size > 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env


def executor_kwargs(tensor_parallel_size: int) -> dict[str, Any]:
    """vLLM's executor for an engine inside a Ray actor. TP > 1 runs vLLM's multiprocessing executor:
    its workers are child processes of the actor and use the GPUs Ray gave the actor. Left to itself,
    vLLM picks its Ray executor inside a placement group (vllm/config/parallel.py), which rejects a
    bundle with more than one GPU (v1/executor/ray_utils.py) and does not exist on CPU at all. TP 1
    stays vLLM's single-process executor, in the actor."""
    if tensor_parallel_size <= 1:
        return {}
    return {"tensor_parallel_size": tensor_parallel_size, "distributed_executor_backend": "mp"}


class VLLMEngine(Worker):
    """A vLLM `LLM` (with the weight-receiving extension when it takes weights); base of the rollout
    and judge actors."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        max_model_len: int,
        seed: int,
        device: str = "cpu",
        gpu_memory_utilization: float = 0.5,
        enable_sleep_mode: bool = False,
        max_num_batched_tokens: int = 16384,
        tensor_parallel_size: int = 1,
        weight_transfer_backend: str | None = None,
        enable_prefix_caching: bool | None = None,
        lora_rank: int = 0,
    ) -> None:
        """`weight_transfer_backend`: the vLLM weight-transfer engine weights arrive through (nccl, ipc,
        gloo, rrm_object_store; see `rrm_ray.weight_sync.vllm_backend`); None: weights stay as loaded.
        `enable_prefix_caching`: vLLM's automatic prefix caching on or off; None: vLLM's default.
        `lora_rank` > 0: serves one LoRA adapter of up to this rank (`actors.lora_receiver`); every
        request then carries `self.lora_request`, the adapter last loaded (None: the base model)."""
        from vllm import LLM

        if device == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        kwargs: dict[str, Any] = executor_kwargs(tensor_parallel_size)
        if device == "cuda":
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
        if weight_transfer_backend is not None:
            import actors.weight_transfer  # noqa: F401  (our engines join vLLM's registry first)

            kwargs["weight_transfer_config"] = {"backend": weight_transfer_backend}
            # Only an engine that takes weights carries the receiver: on CPU it keeps dense weights
            # beside the packed kernels (twice the linear weights' memory) and re-packs after a sync.
            kwargs["worker_extension_cls"] = "actors.vllm_ext.WeightReceiver"
        if enable_prefix_caching is not None:
            kwargs["enable_prefix_caching"] = enable_prefix_caching
        if lora_rank:  # one adapter at a time (the policy's current version), kept until the next
            kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(lora_rank), max_loras=1)
        self.lora_request: Any = None
        # vLLM runs full garbage collections while it starts (memory profiling, then `freeze_gc_heap`):
        # with torch and vLLM imported they walk a large heap, ~1.4 s of an engine's start on CPU. The
        # objects alive now live as long as the process, so they leave the collector's view first.
        gc.freeze()
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=device == "cpu",
            logprobs_mode="processed_logprobs",  # log-probs after temperature, as the learner computes them
            max_num_batched_tokens=max(max_num_batched_tokens, max_model_len),
            **kwargs,
        )
        self.max_num_batched_tokens = max(max_num_batched_tokens, max_model_len)
        self.device_kind = device
        self._transfer_initialized = False
        self.tokenizer = self.llm.get_tokenizer()
        # What budget forcing appends (rrm_ray.judge.budget), tokenised once per engine.
        self.forced_close_ids = self.tokenizer.encode(FORCED_CLOSE, add_special_tokens=False)
        self.tied_embeddings = bool(
            getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False)
        )
        # Sleep/wake when colocated (rrm_ray.clients.colocation): the state, and a log the tests read back.
        self.asleep: set[str] = set()  # SLEEP_TAGS not on the device now (empty: awake)
        self.weights_incomplete = False  # a weight update failed half-way (`abort_weight_update`)
        self.sleep_level = 0
        self.sleep_events: list[tuple[str, int, float]] = []  # (sleep | wake, level, wall time)
        self.work_calls: list[tuple[str, bool, float]] = []  # (method, awake?, wall time) per call
        # Prompt tokens of the requests `_run_until` finished, and how many of them vLLM's prefix cache
        # supplied (RequestOutput.num_cached_tokens): what prefix sharing saved. Readers reset them.
        self.prefill = {"prompt_tokens": 0, "cached_tokens": 0}
        self.batch_records: list[dict[str, Any]] | None = None  # record_batches

    def run_batch(self, prompts: list[Any], params: Any) -> list[Any]:
        """One `LLM.generate` over these prompts (vLLM schedules them as one engine batch), recorded
        when `record_batches` is on."""
        record = self._record_start(prompts, params)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        self._record_end(record, outputs)
        return outputs

    def _as_finished(
        self, prompts: list[Any], params: list[Any], deadline: float = math.inf
    ) -> Iterator[tuple[int, Any]]:
        """Step the engine over these requests, yielding (prompt index, its finished vLLM
        `RequestOutput`) as each finishes, until all did or the deadline passed; the unfinished ones
        (or all left, if the caller stops reading) are then aborted."""
        engine = self.llm.llm_engine
        record = self._record_start(prompts, params)
        outputs: list[Any] = [None] * len(prompts)
        ids = self.llm.enqueue(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        # enqueue names request i "<counter>-<random suffix>"; finished outputs carry "<counter>".
        index = {rid.split("-", 1)[0]: i for i, rid in enumerate(ids)}
        pending = set(range(len(prompts)))
        try:
            while pending and time.perf_counter() < deadline and engine.has_unfinished_requests():
                for out in engine.step():
                    i = index.get(out.request_id)
                    if i is not None and out.finished:
                        pending.discard(i)
                        outputs[i] = out
                        yield i, out
        finally:
            if pending:
                engine.abort_request([ids[i] for i in pending], internal=True)
            self._record_end(record, outputs)

    # -- batch records: what each engine batch ran, and its seconds (benchmarks replay them) -----------
    def record_batches(self, on: bool = True) -> None:
        """From now on keep a record of every engine batch (`run_batch` and the stepped batches of
        streaming and deadline-bounded generation): its prompts and `SamplingParams` pickled before vLLM
        sees them, every sample's token ids (None per prompt that did not finish), and its wall
        seconds. `take_batches` returns and clears them."""
        self.batch_records = [] if on else None

    def take_batches(self) -> list[dict[str, Any]]:
        taken = list(self.batch_records or [])
        if self.batch_records is not None:
            self.batch_records = []
        return taken

    def _record_start(self, prompts: Any, params: Any) -> dict[str, Any] | None:
        if self.batch_records is None:
            return None
        return {"args": pickle.dumps((prompts, params)), "started": time.perf_counter()}

    def _record_end(self, record: dict[str, Any] | None, outputs: list[Any]) -> None:
        if record is None or self.batch_records is None:
            return
        seconds = time.perf_counter() - record.pop("started")

        def each(get: Callable[[Any], Any]) -> list[Any]:
            return [None if o is None else get(o) for o in outputs]

        self.batch_records.append(
            {
                **record,
                "seconds": seconds,
                "lengths": each(lambda o: [len(s.token_ids) for s in o.outputs]),
                "prompt_ids": each(lambda o: list(o.prompt_token_ids)),
                "response_ids": each(lambda o: [list(s.token_ids) for s in o.outputs]),
            }
        )

    # -- weights in: vLLM's weight-transfer protocol, driven by the learner's rank 0 ---------------------
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        """Join the learner's transfer (collective backends: its group). A second call replaces the
        first: after the learner was rebuilt or another engine restarted, the old group is dead."""
        if self._transfer_initialized:
            self.llm.shutdown_weight_transfer_engine()
        self.llm.init_weight_transfer_engine({"init_info": init_info})
        self._transfer_initialized = True

    def weight_transfer_ready(self) -> bool:
        """False until `init_weight_transfer_engine` ran in this incarnation (a restart clears it)."""
        return self._transfer_initialized

    def start_weight_update(self, manifest: list[TensorMeta]) -> None:
        """Begin recording what arrives (checked against `manifest` at the end), then vLLM's start."""
        self.llm.collective_rpc("rrm_begin_sync", args=(manifest,))
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """One chunk. Object store: the bucket is fetched here, so vLLM's workers only see tensors."""
        if "bucket_ref" in update_info:
            update_info = {**update_info, "tensors": [t for _, t in ray.get(update_info["bucket_ref"])]}
            del update_info["bucket_ref"]
        self.llm.update_weights({"update_info": update_info})

    def abort_weight_update(self) -> None:
        """End an update that failed half-way (the learner calls this after a failed sync), so the
        next sync can start: vLLM has no abort, so its update is finished if it is still open (the
        layerwise reload is finalised; layers that got no new weights keep their old ones), our receipt
        is dropped, and the transfer is closed (a collective group that broke mid-chunk is unusable),
        so `weight_transfer_ready` says a new one must be set up. Until the next full sync the engine
        holds a mix of old weights, new ones and (gloo) the zeros the learner sent to release its
        receive, so it refuses to generate until a full sync has passed its completeness check."""
        with contextlib.suppress(Exception):  # not open any more: the worker already ended it
            self.llm.finish_weight_update()
        self.weights_incomplete = True  # generating is refused until a full sync (`_check_awake`)
        self.llm.collective_rpc("rrm_abort_sync")
        if self._transfer_initialized:
            with contextlib.suppress(Exception):
                self.llm.shutdown_weight_transfer_engine()
            self._transfer_initialized = False
        self.llm.reset_prefix_cache()

    def finish_weight_update(self) -> dict[str, int]:
        """vLLM's finish (layerwise reload finalised), then the completeness check: raises
        WeightSyncError unless every parameter of the manifest arrived once, with its shape and dtype."""
        self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        report = self.llm.collective_rpc("rrm_finish_sync")[0]
        self.weights_incomplete = False  # a full sync, checked
        return report

    # -- sleep/wake: colocated roles take turns on a GPU (rrm_ray.clients.colocation drives these) -------
    def sleep(self, level: int = 1) -> None:
        """Free the GPU for a role that shares it: level 1 moves the weights to CPU memory, level 2
        drops them; both drop the KV cache. Needs `enable_sleep_mode` on cuda. vLLM-CPU accepts the call
        and ignores it with a warning (nothing is freed) but pauses its scheduler all the same, so the
        orchestration runs, and is tested, on CPU too."""
        if self.asleep == set(SLEEP_TAGS):
            return
        if self.asleep:  # half awake (weights only): whole again first, so vLLM frees both in one sleep
            self.wake_up()
        self.llm.sleep(level=level)
        self.asleep, self.sleep_level = set(SLEEP_TAGS), level
        self.sleep_events.append(("sleep", level, time.time()))

    @property
    def awake(self) -> bool:
        return not self.asleep

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Back on the GPU: `tags` of SLEEP_TAGS (None: all that sleep). A weight sync wakes "weights"
        alone and the KV cache comes after it, so the sync's buffers never compete with vLLM's KV
        budget on a GPU the learner has just released. True when the weights were dropped (level 2) and
        are woken now: the caller must load them before this engine generates (the rollout's come from
        the learner by a weight sync). vLLM resumes scheduling only once every tag is awake."""
        waking = [t for t in SLEEP_TAGS if t in self.asleep and (tags is None or t in tags)]
        if not waking:
            return False
        self.llm.wake_up(tags=waking)
        self.asleep -= set(waking)
        kind = "wake" if not self.asleep and len(waking) == len(SLEEP_TAGS) else "wake:" + ",".join(waking)
        self.sleep_events.append((kind, self.sleep_level, time.time()))
        return "weights" in waking and self.sleep_level == 2

    def _check_awake(self, method: str) -> None:
        """A sleeping engine must not be given work: its scheduler is paused, so the call would wait
        forever (and on GPU its memory belongs to another role)."""
        self.work_calls.append((method, self.awake, time.time()))
        if self.weights_incomplete:
            raise RuntimeError(
                f"{method}: this engine's last weight update failed half-way and it holds a mix of weights; "
                "the driver syncs the weights again before it generates"
            )
        if not self.awake:
            raise RuntimeError(
                f"{method} on a sleeping engine: the driver must wake it first (rrm_ray.clients.colocation)"
            )

    def generate_texts(
        self,
        prompts: list[Any],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        timeout_s: float,
        allowed_token_ids: list[int] | None = None,
        think_budget: int = 0,
    ) -> TextBatch:
        """n samples per prompt, but never longer than ``timeout_s``: the engine is stepped by hand and
        requests still unfinished at the deadline are aborted (their KV blocks freed) and returned as None.
        A prompt is a text or vLLM's ``{"prompt_token_ids": [...]}`` (the judge's: encoded once, so the
        engine adds no second BOS).

        No per-request seeds: vLLM's CPU sampler loses them across a chunked prefill; the engine's own
        seed keeps runs reproducible. ``think_budget`` > 0: budget forcing (``rrm_ray.judge.budget``);
        both phases share the one deadline.
        """
        from vllm import SamplingParams

        self._check_awake("generate_texts")
        start = time.perf_counter()
        deadline = start + timeout_s

        def params(count: int, tokens: int, stop: list[str] | None = None) -> SamplingParams:
            return SamplingParams(
                n=count,
                temperature=temperature,
                top_p=top_p,
                max_tokens=tokens,
                allowed_token_ids=allowed_token_ids,
                stop=stop,
                include_stop_str_in_output=True,
            )

        if think_budget <= 0:
            outs = self._run_until(prompts, [params(n, max_tokens)] * len(prompts), deadline)
            texts = [None if o is None else [t for t, _ in o] for o in outs]
            tokens = sum(k for o in outs if o for _, k in o)
            return TextBatch(texts, tokens, texts.count(None), time.perf_counter() - start)

        thoughts = self._run_until(
            prompts, [params(n, min(think_budget, max_tokens), [THINK_CLOSE])] * len(prompts), deadline
        )
        follow, follow_params, owner = [], [], []
        for i, samples in enumerate(thoughts):
            for text, k in samples or []:
                closed = close_thinking_text(text)
                used = k + (0 if closed == text else len(self.forced_close_ids))
                follow.append(self._continued(prompts[i], closed))
                follow_params.append(params(1, verdict_allowance(max_tokens, used)))
                owner.append((i, closed, k))
        verdicts = self._run_until(follow, follow_params, deadline) if follow else []
        texts: list[list[str] | None] = [None if t is None else [] for t in thoughts]
        tokens = 0
        for (i, closed, k), out in zip(owner, verdicts, strict=True):
            if out is None or texts[i] is None:
                texts[i] = None  # one unfinished vote leaves the prompt undecided, as without a budget
                continue
            texts[i].append(closed + out[0][0])
            tokens += k + out[0][1]
        return TextBatch(texts, tokens, texts.count(None), time.perf_counter() - start)

    def _continued(self, prompt: Any, text: str) -> Any:
        """``prompt`` followed by ``text`` (budget forcing's second phase), in the prompt's own form."""
        if isinstance(prompt, dict):
            extra = self.tokenizer.encode(text, add_special_tokens=False)
            return {"prompt_token_ids": [*prompt["prompt_token_ids"], *extra]}
        return prompt + text

    def _run_until(
        self,
        prompts: list[Any],
        params: list[Any],
        deadline: float,
        read: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """Step the engine until every request finished or the deadline passed; per prompt, its
        samples as (text, generated tokens), or None if it did not finish (aborted). ``read``: what
        to return of a finished vLLM `RequestOutput` instead of those pairs.

        Counts into ``self.prefill`` per finished request; vLLM reports cache hits per request, and a
        request with n > 1 samples reports only one sample's, so callers that count send n=1."""
        results: list[Any] = [None] * len(prompts)
        for i, out in self._as_finished(prompts, params, deadline):
            results[i] = read(out) if read else [(o.text, len(o.token_ids)) for o in out.outputs]
            self.prefill["prompt_tokens"] += len(out.prompt_token_ids)
            self.prefill["cached_tokens"] += out.num_cached_tokens or 0
        return results
