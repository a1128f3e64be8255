"""The judge role's client for a judge served elsewhere (`judge.endpoint.url`): the same typed calls as
`rrm_ray.clients.judge.JudgeClient` (compare, rank, rank_on, stats, configure, clear_cache), with the
pure `JudgeService` running here in the driver and its engine callable an HTTP client.

    JudgeService (voting, cache, tournaments)  --token-id prompts-->  POST <url>/v1/completions
    one per served engine (URL), like one per in-job engine            at most judge.endpoint.max_concurrency
                                                                       requests in flight per URL

Prompts go as token ids (the service encodes each once), so the server neither re-templates nor re-
tokenizes them and a template's BOS is not doubled. A request that fails (connection refused, HTTP 5xx,
a time-out) is sent again after 1, 2, 4, ... s (`judge.endpoint.retries` times), counted as
`endpoint_errors`; after the last retry the call fails with `JudgeEndpointError` naming the URL. A 4xx
answer (a wrong key, a bad request) is not retried. What the wave had already got back is kept until
then; a failed call fails the step, and the run resumes from its checkpoint (`resume=auto`).

The API key is read from the environment variable `judge.endpoint.api_key_env` names, here only, when
the HTTP client is built: the config holds only that name, and the key is never logged.

The job starts no judge engines and reserves no judge bundles (`rrm_ray.placement.judge_in_job`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from rrm_ray.config import JobConfig, JudgeConfig, JudgeEndpointConfig
from rrm_ray.judge.prompts import PREFIXED_VERDICTS, choice_token_ids
from rrm_ray.judge.records import (
    JudgePair,
    JudgeSettings,
    PairJudgment,
    RankResult,
    judge_cache_key,
    judge_rates,
)
from rrm_ray.judge.service import JudgeService
from rrm_ray.judge.verdict import choice_probability
from rrm_ray.models import load_tokenizer, resolve_model_path

MAX_BACKOFF_S = 30.0


class JudgeEndpointError(RuntimeError):
    """The served judge could not be reached, refused the request, or answered something unusable."""


def endpoint_urls(endpoint: JudgeEndpointConfig) -> list[str]:
    """`judge.endpoint.url` as a list: one URL per served engine, without a trailing slash."""
    assert endpoint.url is not None
    return [u.strip().rstrip("/") for u in endpoint.url.split(",") if u.strip()]


def api_key(endpoint: JudgeEndpointConfig) -> str | None:
    """The key from the environment variable `judge.endpoint.api_key_env` names (None: no key)."""
    name = endpoint.api_key_env
    if name is None:
        return None
    key = os.environ.get(name)
    if not key:
        raise JudgeEndpointError(
            f"judge.endpoint.api_key_env={name}, but the environment variable {name} is not set (or empty); "
            f"export {name}=<the key the judge server was started with> (rrm-ray serve-judge prints how)"
        )
    return key


class Completions:
    """`/v1/completions` of one OpenAI-compatible server, with retries and backoff; counts failures."""

    def __init__(self, url: str, endpoint: JudgeEndpointConfig, key: str | None) -> None:
        self.url, self.endpoint = url, endpoint
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=endpoint.max_concurrency)
        self.http = httpx.Client(headers=headers, timeout=endpoint.timeout_s, limits=limits)
        self.errors = 0  # failed attempts (each retried, or the last one raised)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of `method path`, retried on connection errors, time-outs and HTTP 5xx."""
        attempts = self.endpoint.retries + 1
        for attempt in range(attempts):
            try:
                answer = self.http.request(method, f"{self.url}{path}", json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.status_code < 400:
                    try:
                        return answer.json()
                    except ValueError as exc:
                        raise JudgeEndpointError(f"{self.url}{path} answered no JSON: {exc}") from None
                if answer.status_code < 500:
                    raise JudgeEndpointError(self._refused(path, answer))
                problem = f"HTTP {answer.status_code}: {answer.text[:300]}"
            with self._lock:
                self.errors += 1
            if attempt + 1 < attempts:
                time.sleep(min(2.0**attempt, MAX_BACKOFF_S))
        raise JudgeEndpointError(
            f"the judge endpoint {self.url} failed {attempts} times on {method} {path} "
            f"(judge.endpoint.retries={self.endpoint.retries}); last: {problem}"
        )

    def _refused(self, path: str, answer: httpx.Response) -> str:
        name = self.endpoint.api_key_env
        if answer.status_code == 401:
            hint = (
                f"the key in ${name} (judge.endpoint.api_key_env) is not one it accepts"
                if name
                else "it wants an API key: set judge.endpoint.api_key_env to the NAME of the variable "
                "holding it"
            )
            return f"the judge endpoint {self.url} refused the request (HTTP 401 Unauthorized): {hint}"
        return f"the judge endpoint {self.url}{path} answered HTTP {answer.status_code}: {answer.text[:500]}"


class _ServedEngine:
    """One served engine (URL): a JudgeService in this process whose engine callables are HTTP calls,
    and the thread its calls run on (calls on one engine run one at a time, as on an in-job engine)."""

    def __init__(self, http: Completions, model: str, judge: JudgeConfig, seed: int, tokenizer: Any) -> None:
        self.http, self.model, self.tokenizer, self.seed = http, model, tokenizer, seed
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="rrm-judge-endpoint")
        self.requests = ThreadPoolExecutor(
            judge.endpoint.max_concurrency, thread_name_prefix="rrm-judge-http"
        )
        self.configure(judge)

    def configure(self, judge: JudgeConfig) -> None:
        self.judge = judge
        settings = JudgeSettings.from_config(
            judge, self.seed, judge_cache_key(f"{self.http.url}|{self.model}", judge)
        )
        verdict = settings.verdict
        self.choice_ids = choice_token_ids(self.tokenizer) if verdict in PREFIXED_VERDICTS else None
        choice = self._choice_probs if verdict == "choice_prob" else None
        self.service = JudgeService(self._generate, self.tokenizer, settings, choice_probs=choice)
        self.counts = {
            "generated_tokens": 0,
            "generate_s": 0.0,
            "prefill_tokens": 0,
            "prefix_cached_tokens": 0,
        }
        self.errors_at_reset = self.http.errors

    def submit(self, call: Callable[[], Any]) -> Future:
        return self.worker.submit(call)

    # -- the service's engine callables --------------------------------------------------------------
    def _wave(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Every request of one wave, at most max_concurrency in flight; None for the ones the wave's
        deadline (judge.batch_timeout_s) passed on. The first request that fails for good fails all."""
        started = time.perf_counter()
        futures = [self.requests.submit(self.http.request, "POST", "/v1/completions", b) for b in bodies]
        done, pending = wait(futures, timeout=self.judge.batch_timeout_s, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                for other in pending:
                    other.cancel()
                raise f.exception()  # type: ignore[misc]
        for f in pending:
            f.cancel()  # not started yet: never sent; running ones finish and are dropped
        answers = [f.result() if f in done else None for f in futures]
        self.counts["generate_s"] += time.perf_counter() - started
        for answer in answers:
            usage = (answer or {}).get("usage") or {}
            self.counts["generated_tokens"] += int(usage.get("completion_tokens") or 0)
            self.counts["prefill_tokens"] += int(usage.get("prompt_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            self.counts["prefix_cached_tokens"] += int(details.get("cached_tokens") or 0)
        return answers

    def _generate(self, prompts: list[list[int]], n: int) -> list[list[str] | None]:
        j = self.judge
        base: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "max_tokens": 1 if self.choice_ids else j.max_new_tokens,
            "temperature": j.temperature,
            "top_p": j.top_p,
        }
        if self.choice_ids:
            base["allowed_token_ids"] = self.choice_ids
        out: list[list[str] | None] = []
        for answer in self._wave([{**base, "prompt": ids} for ids in prompts]):
            if answer is None:
                out.append(None)
                continue
            choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
            texts = [c.get("text") for c in choices]
            if len(texts) != n or not all(isinstance(t, str) for t in texts):
                raise JudgeEndpointError(
                    f"the judge endpoint {self.http.url} answered {len(texts)} completions for n={n}: "
                    f"{answer!r:.300}"
                )
            out.append(texts)
        return out

    def _choice_probs(self, prompts: list[list[int]]) -> list[float | None]:
        """judge.verdict=choice_prob: one forward per prompt with the log-probs of exactly the tokens of
        "1" and "2" (vLLM's `logprob_token_ids`), keys returned as "token_id:<id>"."""
        assert self.choice_ids is not None
        base = {
            "model": self.model,
            "max_tokens": 1,
            "temperature": 1.0,
            "top_p": 1.0,
            "logprobs": len(self.choice_ids),
            "logprob_token_ids": self.choice_ids,
            "return_tokens_as_token_ids": True,
        }
        out: list[float | None] = []
        for answer in self._wave([{**base, "prompt": ids} for ids in prompts]):
            if answer is None:
                out.append(None)
                continue
            try:
                (position,) = answer["choices"][0]["logprobs"]["top_logprobs"]
                logprobs = {int(k.removeprefix("token_id:")): float(v) for k, v in position.items()}
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise JudgeEndpointError(
                    f"the judge endpoint {self.http.url} answered no choice log-probs ({exc!r}): "
                    f"{answer!r:.300}"
                ) from None
            out.append(choice_probability(logprobs, self.choice_ids))
        return out

    def stats(self, reset: bool) -> dict[str, float]:
        counters = self.service.reset_stats() if reset else self.service.stats
        errors = self.http.errors - self.errors_at_reset
        out: dict[str, float] = {**dataclasses.asdict(counters), **self.counts, "endpoint_errors": errors}
        if reset:
            self.counts = dict.fromkeys(self.counts, 0)
            self.errors_at_reset = self.http.errors
        return out

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.requests.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _chunks(items: Sequence[Any], parts: int) -> list[list[Any]]:
    size = -(-len(items) // parts) if items else 0
    return [list(items[k * size : (k + 1) * size]) for k in range(parts)]


class EndpointJudgeClient:
    """The judge role over HTTP: one `_ServedEngine` per URL, work sharded over them in contiguous parts
    as `JudgeClient` shards it over its engines (so each query's tournament stays on one server and its
    prompt head in that server's prefix cache)."""

    group = None  # no actors: nothing for Ray to restart (a failing server is retried, then reported)

    def __init__(self, engines: list[_ServedEngine]) -> None:
        self.engines = engines
        self.settings: JudgeConfig | None = None

    @classmethod
    def start(cls, cfg: JobConfig) -> EndpointJudgeClient:
        """Reach every URL (`GET /v1/models`, with the key), pick the served model, check its context
        holds judge.max_prompt_tokens + judge.max_new_tokens and that judge.model_path's tokenizer
        (what prompts are encoded with here) encodes as the server does."""
        j = cfg.judge
        tokenizer = load_tokenizer(resolve_model_path(j.model_path))
        key = api_key(j.endpoint)
        engines = []
        try:
            for url in endpoint_urls(j.endpoint):
                http = Completions(url, j.endpoint, key)
                model = _served_model(http, j)
                _check_tokenizer(http, model, tokenizer, j)
                engines.append(_ServedEngine(http, model, j, cfg.trainer.seed, tokenizer))
                print(f"judge: {url} serves {model} (judge.endpoint.url); no judge engines in this job")
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        return cls(engines)

    def __len__(self) -> int:
        return len(self.engines)

    def wake(self) -> None:
        """Nothing sleeps: a served judge shares no GPUs with this job."""

    def _sharded(
        self, items: Sequence[Any], call: Callable[[_ServedEngine, list[Any]], list[Any]]
    ) -> list[Any]:
        shards = _chunks(items, len(self.engines))
        futures = [
            e.submit(lambda e=e, s=s: call(e, s)) for e, s in zip(self.engines, shards, strict=True) if s
        ]
        return [x for f in futures for x in f.result()]

    def compare(self, pairs: Sequence[JudgePair], votes: int | None = None) -> list[PairJudgment]:
        return self._sharded(pairs, lambda e, part: e.service.compare(part, votes))

    def rank(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        method: str | None = None,
        votes: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> list[RankResult]:
        keyed = list(zip(items, range(len(items)) if keys is None else keys, strict=True))
        return self._sharded(
            keyed, lambda e, part: e.service.rank([i for i, _ in part], method, votes, [k for _, k in part])
        )

    def rank_on(self, engine: int, items: Sequence[tuple[str, Sequence[str]]], keys: Sequence[int]) -> Future:
        """One served engine ranks these items; returns a Future at once (the streamed batch waits on it
        as it waits on an in-job engine's Ray ref)."""
        served = self.engines[engine]
        return served.submit(lambda: served.service.rank(list(items), keys=list(keys)))

    def stats(self, reset: bool = False) -> dict[str, float]:
        total: dict[str, float] = {}
        for engine in self.engines:
            for k, v in engine.submit(lambda e=engine: e.stats(reset)).result().items():
                total[k] = total.get(k, 0) + v
        return judge_rates(total)

    def configure(self, judge: JudgeConfig) -> None:
        """New sampling-time settings (a sweep's next point): new services, empty verdict caches. The
        server's prefix cache is left alone: other jobs share it."""
        self.settings = judge
        for engine in self.engines:
            engine.submit(lambda e=engine: e.configure(judge)).result()

    def clear_cache(self) -> None:
        """The verdict caches (the server's prefix cache is shared with other jobs: left alone)."""
        for engine in self.engines:
            engine.submit(engine.service.cache.clear).result()

    def shutdown(self) -> None:
        for engine in self.engines:
            engine.close()
        self.engines = []


def _served_model(http: Completions, j: JudgeConfig) -> str:
    """The model to ask for: judge.endpoint.model, checked against what the server lists, or its only one."""
    listed = http.request("GET", "/v1/models").get("data") or []
    names = [m.get("id") for m in listed]
    wanted = j.endpoint.model
    if wanted is None:
        if len(names) != 1:
            raise JudgeEndpointError(
                f"the judge endpoint {http.url} serves {names or 'no models'}: set judge.endpoint.model "
                "to one of them"
            )
        wanted = names[0]
    elif wanted not in names:
        raise JudgeEndpointError(
            f"judge.endpoint.model={wanted!r} is not served at {http.url}; it serves "
            f"{', '.join(map(str, names))}"
        )
    card = listed[names.index(wanted)]
    context = card.get("max_model_len")
    need = j.max_prompt_tokens + j.max_new_tokens
    if isinstance(context, int) and context < need:
        raise JudgeEndpointError(
            f"the judge served at {http.url} holds {context} tokens, but judge.max_prompt_tokens + "
            f"judge.max_new_tokens = {need}; lower them or serve the judge with a longer max_model_len"
        )
    return str(wanted)


def _check_tokenizer(http: Completions, model: str, tokenizer: Any, j: JudgeConfig) -> None:
    """Prompts are encoded here with judge.model_path's tokenizer and sent as ids: it must be the served
    model's (vLLM's `/tokenize` answers how the server encodes a probe)."""
    probe = "Which assistant is better? \\boxed{Assistant 1} </think> 12345 é"
    try:
        answer = http.http.post(
            f"{http.url}/tokenize", json={"model": model, "prompt": probe, "add_special_tokens": False}
        )
    except httpx.TransportError:
        return  # the server went away since /v1/models: the first request reports it
    if answer.status_code != 200:  # not vLLM (no /tokenize): nothing to compare with
        print(
            f"judge: {http.url} has no /tokenize (HTTP {answer.status_code}): judge.model_path's tokenizer "
            "not checked against the served model's"
        )
        return
    ours = list(tokenizer.encode(probe, add_special_tokens=False))
    if answer.json().get("tokens") != ours:
        raise JudgeEndpointError(
            f"judge.model_path={j.model_path} encodes text differently from the model served at {http.url} "
            f"({model}): prompts are sent as token ids, so point judge.model_path at the served model's "
            "directory (its tokenizer is all that is read)"
        )
