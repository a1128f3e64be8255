"""The RRM judge on its own (`rrm-ray judge | eval | best-of-n`): sessions of judge engines with no
learner, judging in chunks behind a progress bar, benchmark passes, and best-of-n's policy samples
and their correctness.

Each role is the training job's typed client (`rrm_ray.clients`), each on its own placement group and
none with a learner, so a call an engine's death interrupts is retried once Ray restarted it, and
everything is shut down on the way out, errors included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rrm_ray.clients.cluster import ray_session
from rrm_ray.clients.judge import JudgeClient
from rrm_ray.clients.judge_endpoint import EndpointJudgeClient
from rrm_ray.clients.restarts import Restarts
from rrm_ray.clients.reward import RewardClient
from rrm_ray.clients.roles import OwnGroups
from rrm_ray.clients.rollout import RolloutClient
from rrm_ray.config import JobConfig
from rrm_ray.data.prompts import PromptRow, render_prompt
from rrm_ray.judge import best_of_n as bon
from rrm_ray.judge.evaluation import Scored, counted, stats_line
from rrm_ray.judge.prompts import PromptTooLongError
from rrm_ray.judge.records import JudgePair, JudgeSettings, PairJudgment
from rrm_ray.judge.service import presentations
from rrm_ray.models import load_tokenizer, resolve_model_path
from rrm_ray.progress import map_in_chunks
from rrm_ray.types import Completion

CHUNK_PER_ENGINE = 32  # items per judge call and engine: the progress bar moves this often


Client = TypeVar("Client")


def alone(cfg: JobConfig, start: Callable[[Restarts], Client]) -> Client:
    """A client started without a learner (`start(restarts)`); its restarts watch its own group."""
    groups: list[Any] = []
    client = start(Restarts.alone(cfg, groups))
    groups.append(client.group)  # type: ignore[attr-defined]
    return client


@contextlib.contextmanager
def judge_session(cfg: JobConfig, command: str = "judge") -> Iterator[JudgeClient | EndpointJudgeClient]:
    """Ray up (unless already connected), the judge engines started behind a JudgeClient; both torn
    down on exit. A served judge (`judge.endpoint.url`) needs neither: its client talks HTTP."""
    if cfg.judge.endpoint.url is not None:
        served = EndpointJudgeClient.start(cfg)
        try:
            yield served
        finally:
            served.shutdown()
        return
    with ray_session(cfg, command):
        judge = alone(cfg, lambda restarts: JudgeClient.start(cfg, OwnGroups(cfg), None, restarts))
        try:
            yield judge
        finally:
            judge.shutdown()


def render_pairs(cfg: JobConfig, pairs: list[JudgePair]) -> list[dict[str, Any]]:
    """`rrm-ray judge --render-only`: per pair, the presentations the judge would be shown (the orders,
    the messages, the prompt and its token count) and, where its prompt does not fit and would not be cut,
    why (`over_length`). The judge's tokenizer only: no Ray, no engine."""
    tokenizer = load_tokenizer(resolve_model_path(cfg.judge.model_path))
    settings = JudgeSettings.from_config(cfg.judge, cfg.trainer.seed)
    out = []
    for i, pair in enumerate(pairs):
        try:
            out.append({"presentations": presentations(tokenizer, settings, pair), "over_length": None})
        except PromptTooLongError as exc:
            out.append({"presentations": [], "over_length": f"pair {i}: {exc}"})
    return out


def compare_all(
    judge: JudgeClient | EndpointJudgeClient, pairs: list[JudgePair], cfg: JobConfig, label: str = "judging"
) -> list[PairJudgment]:
    """All pairs judged, a chunk at a time behind a progress bar over items."""
    return map_in_chunks(label, pairs, judge.compare, CHUNK_PER_ENGINE * cfg.judge.num_engines)


def benchmark_pass(
    cfg: JobConfig,
    items: list[Any],
    judge: JudgeClient | EndpointJudgeClient,
    run: Any,
    traces: int,
    label: str,
) -> tuple[Scored, dict[str, float], float]:
    """One benchmark pass (`run`: `rrm_ray.judge.evaluation`'s pass for the benchmark) on running
    engines, with the judge's counters (reset after) and seconds; `traces` judge traces kept."""
    started = time.perf_counter()  # judging only, not the engine start
    scored = run(items, lambda pairs: compare_all(judge, pairs, cfg, label), cfg.trainer.seed, traces)
    seconds = time.perf_counter() - started
    stats = judge.stats(reset=True)
    scored.metrics.update({f"judge/{k}": float(v) for k, v in stats.items()})
    scored.metrics["judge/unparseable_rate"] = stats["unparseable"] / max(stats["judge_calls"], 1)
    scored.metrics["judge/comparisons_per_s"] = max(stats["comparisons"], 1) / seconds
    scored.metrics["judge/seconds"] = seconds
    return scored, stats, seconds


def sample_policy(cfg: JobConfig, rows: list[PromptRow], n: int) -> list[Completion]:
    """n policy samples per prompt (prompt-major), on rollout engines started as training starts
    them (`rollout.*`), shut down before the judge starts, so the two never need resources at the
    same time (one GPU, or a small CPU machine, holds either). They keep the weights they loaded:
    no learner, no weight-transfer backend."""
    r, m = cfg.rollout, cfg.model
    policy = resolve_model_path(m.path)
    tokenizer = load_tokenizer(policy)
    prompts = [render_prompt(tokenizer, row.prompt, m.system_prompt, m.use_chat_template) for row in rows]
    print(f"starting {r.num_engines} rollout engine(s) for {policy}", flush=True)
    rollout = alone(
        cfg,
        lambda restarts: RolloutClient.start(
            cfg, policy, OwnGroups(cfg), None, restarts, takes_weights=False
        ),
    )
    print(f"sampling {n} responses for each of {len(prompts)} prompts", flush=True)
    try:
        return rollout.generate(prompts, n, r.temperature, r.max_new_tokens, cfg.trainer.seed)
    finally:
        rollout.group.shutdown()


def score_correct(cfg: JobConfig, rule: str, rows: list[PromptRow], samples: list[Completion]) -> list[Any]:
    """Per prompt, whether each response is correct, or None without an answer: the reward actor's
    accuracy (`rule`, `reward.timeout_s` per item), as training reports it. A response the rule
    times out or fails on gets `reward.fallback`, and the console says how many."""
    answers = [row.answer for row in rows]
    index = [s.prompt_index for s in samples]
    if all(a is None for a in answers):  # nothing to verify: no reward actor
        return bon.correct_flags(answers, index, [None] * len(samples))
    reward = alone(cfg, lambda restarts: RewardClient.start(cfg, OwnGroups(cfg), restarts, judge=None))
    try:
        scored = reward.score(samples, rows)
    finally:
        reward.group.shutdown()
    if scored.timeouts or scored.errors:
        print(
            f"rule {rule!r}: {scored.timeouts} responses timed out and {scored.errors} failed; counted as "
            f"incorrect. {'; '.join(scored.error_messages)}"
        )
    return bon.correct_flags(answers, index, scored.correct)


def rank_settings(
    judge: JudgeClient | EndpointJudgeClient,
    grid: list[tuple[str, int]],
    rows: list[PromptRow],
    queries: list[str],
    responses: list[list[str]],
    correct: list[Any],
    n: int,
) -> tuple[list[bon.SettingRow], list[dict[str, Any]]]:
    """Best-of-n: the same responses ranked once per (method, votes) setting, each paying for its own
    comparisons (empty caches); per setting its table row, and the output records of every prompt."""
    table: list[bon.SettingRow] = []
    out: list[dict[str, Any]] = []
    for method, votes in grid:
        judge.clear_cache()
        started = time.perf_counter()
        results = map_in_chunks(
            f"judging ({method}, {counted(votes, 'vote')})",
            list(zip(queries, responses, strict=True)),
            lambda part, m=method, k=votes: judge.rank(part, method=m, votes=k),
            CHUNK_PER_ENGINE,
        )
        seconds = time.perf_counter() - started
        stats = judge.stats(reset=True)
        print(f"{method}, {counted(votes, 'vote')}: {stats_line(stats, seconds)}")
        scores = bon.pick_scores(correct, [res.winner for res in results])
        table.append(bon.SettingRow(method, votes, n, scores, int(stats["judge_calls"]), seconds))
        out += bon.pick_records(rows, queries, responses, correct, results, votes)
    return table, out
