"""`rrm-ray judge | eval | best-of-n`: the RRM judge on its own.

rrm-ray judge --data pairs.jsonl --out verdicts.jsonl --config configs/judge_cpu.yaml judge.votes=3
rrm-ray eval --benchmark rewardbench --data rewardbench.jsonl --method rrm --votes 1 --limit 100
rrm-ray best-of-n --data prompts.jsonl --n 8 --method knockout --out picks.jsonl

Each command validates its config first, then starts a local Ray (or connects to cluster.address),
starts the judge engines through `ActorGroup`, and shuts everything down on the way out, errors
included. `eval` logs its config, scores and the first judge traces to MLflow (`tracking`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rrm_ray.cli import add_run_options, with_verbose
from rrm_ray.config import JobConfig, load_config, to_flat_dict
from rrm_ray.data.io import DataFormatError, read_records, require_str
from rrm_ray.judge.service import JudgePair, PairJudgment
from rrm_ray.progress import map_in_chunks

TRACE_TEXT_CHARS = 4000  # per trace in the MLflow table; the JSONL outputs keep the whole text
CHUNK_PER_ENGINE = 32  # items per judge call and engine: the progress bar moves this often


def _compare(pool: Any, pairs: list[JudgePair], cfg: JobConfig) -> list[PairJudgment]:
    """All pairs judged, a chunk at a time behind a progress bar over items."""
    return map_in_chunks("judging", pairs, pool.compare, CHUNK_PER_ENGINE * cfg.judge.num_engines)


@contextlib.contextmanager
def judge_session(cfg: JobConfig, job: str = "judge") -> Iterator[Any]:
    """Ray up (unless already connected), a JudgePool started; both torn down on exit."""
    import ray

    from actors.judge import JudgePool
    from rrm_ray.driver import connect_ray

    started = not ray.is_initialized()
    connect_ray(cfg, job)
    pool = None
    try:
        pool = JudgePool(cfg)
        yield pool
    finally:
        if pool is not None:
            pool.shutdown()
        if started:
            ray.shutdown()


def _write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _coin(seed: int, key: object) -> bool:
    """Reproducible per-item coin: which side the chosen response is listed on."""
    return hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()[0] & 1 == 1


def credit(j: PairJudgment, good_is_a: bool) -> float:
    """Evaluation credit from the votes: 1 if the good response got more, 0 if fewer, 0.5 on a tie
    (an unparseable single vote included: the paper's half credit), whatever the tie rule."""
    good, bad = (j.wins_a, j.wins_b) if good_is_a else (j.wins_b, j.wins_a)
    return 1.0 if good > bad else 0.0 if good < bad else 0.5


def _judgment_fields(j: PairJudgment) -> dict[str, Any]:
    return {
        "verdict": j.winner if j.decided else None,
        "winner": j.winner,
        "votes": {"a": j.wins_a, "b": j.wins_b, "calls": j.votes, "saved": j.calls_saved},
        "unparseable": j.unparseable,
        "timed_out": j.timed_out,
        "from_cache": j.from_cache,
        "truncated": j.truncated,
        "error": j.error,
        "traces": [dataclasses.asdict(t) for t in j.traces],
    }


def _print_stats(stats: dict[str, float], seconds: float) -> None:
    s = {k: int(v) if k != "generate_s" else v for k, v in stats.items()}
    print(
        f"{s['comparisons']} comparisons in {seconds:.1f}s: {s['judge_calls']} judge calls in {s['waves']} "
        f"waves ({s['calls_saved']} saved by adaptive voting, {s['cache_hits']} cache hits), "
        f"{s['unparseable']} unparseable, {s['timed_out']} timed out, {s['truncated']} truncated, "
        f"{s['rejected']} rejected; {s['generated_tokens']} tokens generated"
    )


# ---------------------------------------------------------------------------------------------- judge
def _judge(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, with_verbose(args))
    records = list(read_records(args.data))
    pairs = [
        JudgePair(*(require_str(args.data, row, rec, f) for f in ("query", "response_a", "response_b")))
        for row, rec in records
    ]
    with judge_session(cfg) as pool:
        started = time.perf_counter()  # judging only, not the engine start
        judgments = _compare(pool, pairs, cfg)
        seconds = time.perf_counter() - started
        stats = pool.stats()
    _write_jsonl(
        [{**rec, **_judgment_fields(j)} for (_, rec), j in zip(records, judgments, strict=True)], args.out
    )
    decided = [j.winner for j in judgments if j.decided]
    print(
        f"{len(pairs)} pairs -> {args.out}: a {decided.count('a')}, b {decided.count('b')}, "
        f"undecided {len(pairs) - len(decided)}"
    )
    _print_stats(stats, seconds)
    return 0


# ---------------------------------------------------------------------------------------------- eval
def _tracker(cfg: JobConfig):
    from rrm_ray.tracking import MLflowTracker, NullTracker, default_run_name

    t = cfg.tracking
    if not t.enabled:
        return NullTracker()
    return MLflowTracker(
        t.uri,
        t.experiment,
        t.run_name or default_run_name("eval", cfg.judge.model_path),
        system_metrics_interval_s=t.system_metrics_interval_s if t.system_metrics else None,
    )


def _trace_rows(ids: list[Any], judgments: list[PairJudgment], extra: list[dict], limit: int) -> list[dict]:
    """The first `limit` judge traces as table rows (text cut to TRACE_TEXT_CHARS)."""
    rows: list[dict[str, Any]] = []
    for item_id, j, more in zip(ids, judgments, extra, strict=True):
        for t in j.traces:
            if len(rows) >= limit:
                return rows
            text = t.text if t.text is not None else "<timed out>"
            rows.append(
                {
                    "id": str(item_id),
                    **more,
                    "vote": t.vote,
                    "order": t.order,
                    "verdict": t.verdict,
                    "vote_for": t.winner,
                    "text": text[:TRACE_TEXT_CHARS],
                }
            )
    return rows


def _eval_rewardbench(
    args: argparse.Namespace, cfg: JobConfig, items: list[Any], pool: Any
) -> tuple[dict, list[dict]]:
    from rrm_ray.judge.benchmarks import score_rewardbench

    chosen_a = [_coin(cfg.trainer.seed, it.id) for it in items]
    pairs = [
        JudgePair(it.prompt, it.chosen, it.rejected) if a else JudgePair(it.prompt, it.rejected, it.chosen)
        for it, a in zip(items, chosen_a, strict=True)
    ]
    judgments = _compare(pool, pairs, cfg)
    credits = [credit(j, a) for j, a in zip(judgments, chosen_a, strict=True)]
    report = score_rewardbench(zip(items, credits, strict=True))
    print(f"\n{'subset':<28}{'n':>6}{'accuracy':>10}")
    for subset, acc in {**report.subset_accuracy, **report.unknown_subsets}.items():
        mark = "  (not a RewardBench subset)" if subset in report.unknown_subsets else ""
        print(f"{subset:<28}{report.subset_counts[subset]:>6}{acc:>10.3f}{mark}")
    metrics: dict[str, float] = {f"accuracy/{s}": a for s, a in report.subset_accuracy.items()}
    metrics.update({f"unknown_subset/{s}": a for s, a in report.unknown_subsets.items()})
    for name, score in report.sections.items():
        print(f"section {name:<20}{'-' if score is None else f'{score:.3f}':>16}")
        if score is not None:
            metrics[f"section/{name}"] = score
    print(f"{'overall':<28}{'-' if report.overall is None else f'{report.overall:.3f}':>16}")
    if report.overall is not None:
        metrics["overall"] = report.overall
    metrics["accuracy/all_items"] = sum(credits) / max(len(credits), 1)
    print(f"{'mean credit over all items':<28}{metrics['accuracy/all_items']:>16.3f}  ({len(items)} items)")
    extra = [
        {"subset": it.subset, "chosen_shown_as": "a" if a else "b", "credit": c}
        for it, a, c in zip(items, chosen_a, credits, strict=True)
    ]
    return metrics, _trace_rows([it.id for it in items], judgments, extra, args.traces)


def _eval_pandalm(
    args: argparse.Namespace, cfg: JobConfig, items: list[Any], pool: Any
) -> tuple[dict, list[dict]]:
    from rrm_ray.judge.benchmarks import score_pandalm

    keep = [not _coin(cfg.trainer.seed, it.idx) for it in items]  # response1 listed as a?
    pairs = [
        JudgePair(it.query, it.response1, it.response2)
        if k
        else JudgePair(it.query, it.response2, it.response1)
        for it, k in zip(items, keep, strict=True)
    ]
    judgments = _compare(pool, pairs, cfg)
    predictions: list[int | None] = []
    for j, k in zip(judgments, keep, strict=True):
        if not j.decided:
            predictions.append(None)
        else:
            predictions.append(1 if (j.winner == "a") == k else 2)
    report = score_pandalm([it.label for it in items], predictions)  # type: ignore[misc]
    excl = report.accuracy_excluding_ties
    print(f"\nPandaLM: {report.n_items} items ({report.n_ties} ties, {report.n_unparseable} undecided)")
    print(
        f"accuracy {report.accuracy:.3f}  macro-F1 {report.macro_f1:.3f}  accuracy excluding ties "
        f"{'-' if excl is None else f'{excl:.3f}'}"
    )
    for c, s in report.per_class.items():
        scores = f"precision {s.precision:.3f} recall {s.recall:.3f} f1 {s.f1:.3f}"
        print(f"  class {c}: {scores} (support {s.support})")
    metrics = {"accuracy": report.accuracy, "macro_f1": report.macro_f1}
    if excl is not None:
        metrics["accuracy_excluding_ties"] = excl
    extra = [
        {"label": it.label, "prediction": p, "response1_shown_as": "a" if k else "b"}
        for it, p, k in zip(items, predictions, keep, strict=True)
    ]
    return metrics, _trace_rows([it.idx for it in items], judgments, extra, args.traces)


def _eval(args: argparse.Namespace) -> int:
    extra = [f"judge.mode={args.method}"] if args.method else []
    extra += [f"judge.votes={args.votes}"] if args.votes else []
    cfg = load_config(args.config, [*with_verbose(args), *extra])
    from rrm_ray.judge.benchmarks import load_pandalm, load_rewardbench, read_summary

    load, run = (
        (load_rewardbench, _eval_rewardbench)
        if args.benchmark == "rewardbench"
        else (load_pandalm, _eval_pandalm)
    )
    data = load(args.data, on_error=cfg.data.on_error)  # a bad file fails here, before Ray starts
    items = data.items[: args.limit]
    data_line, data_metrics = read_summary(data, items)  # what was coerced or skipped, never silent
    print(data_line)
    tracker = _tracker(cfg)
    if tracker.run_id:
        print(f"MLflow run {tracker.run_id} at {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
    tracker.log_params(
        {
            **to_flat_dict(cfg),
            "eval.benchmark": args.benchmark,
            "eval.data": args.data,
            "eval.limit": args.limit,
        }
    )
    tracker.set_tags({"rrm_ray.job": "eval", "rrm_ray.benchmark": args.benchmark})
    tracker.log_metrics(data_metrics, step=0)
    status = "FAILED"
    try:
        with judge_session(cfg, "eval") as pool:
            started = time.perf_counter()  # judging only, not the engine start
            metrics, rows = run(args, cfg, items, pool)
            seconds = time.perf_counter() - started
            stats = pool.stats()
        _print_stats(stats, seconds)
        n = max(stats["comparisons"], 1)
        metrics.update({f"judge/{k}": float(v) for k, v in stats.items()})
        metrics["judge/unparseable_rate"] = stats["unparseable"] / max(stats["judge_calls"], 1)
        metrics["judge/comparisons_per_s"] = n / seconds
        metrics["judge/seconds"] = seconds
        tracker.log_metrics(metrics, step=0)
        tracker.log_table(rows, "judge_traces")
        tracker.log_dataset(args.data, "eval")
        if args.benchmark == "rewardbench":  # per-subset accuracy and the four section scores, drawn
            from rrm_ray.figures import rewardbench_scores

            with tempfile.TemporaryDirectory() as tmp:  # logged at once: this tracker is not buffered
                if png := rewardbench_scores(metrics, Path(tmp, "rewardbench_scores.png")):
                    tracker.log_artifact(str(png), "figures")
        status = "FINISHED"
    finally:
        tracker.close(status)
    return 0


# ---------------------------------------------------------------------------------------------- best-of-n
def _best_of_n(args: argparse.Namespace) -> int:
    import ray
    from transformers import AutoTokenizer

    from actors.rollout import RolloutWorker, engine_env
    from rrm_ray.actor_group import ActorGroup, RoleSpec
    from rrm_ray.config import resolved_dtype
    from rrm_ray.data.preference import render_conversation
    from rrm_ray.data.prompts import load_prompts, render_prompt
    from rrm_ray.driver import connect_ray
    from rrm_ray.models import resolve_model_path

    overrides = [*with_verbose(args), *([f"judge.method={args.method}"] if args.method else [])]
    overrides += [f"judge.votes={args.votes}"] if args.votes else []
    cfg = load_config(args.config, overrides)
    if args.n < 1:
        print(f"--n must be at least 1, got {args.n}", file=sys.stderr)
        return 2
    c, r, m = cfg.cluster, cfg.rollout, cfg.model
    rows = load_prompts(args.data, cfg.data.prompt_field, answer_field=None)
    policy = resolve_model_path(m.path)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompts = [render_prompt(tokenizer, row.prompt, m.system_prompt, m.use_chat_template) for row in rows]
    started = time.perf_counter()
    ray_started = not ray.is_initialized()
    connect_ray(cfg, "best-of-n")
    try:
        # Generate everything first and free the policy engine before the judge starts, so the two
        # never need resources at the same time (one GPU, or a small CPU machine, holds either).
        rollout = ActorGroup(
            RolloutWorker,
            RoleSpec("rollout", 1, r.cpus_per_engine, r.gpus_per_engine if c.device == "cuda" else 0),
            init_args=(policy, resolved_dtype(cfg), m.max_model_len, cfg.trainer.seed, c.device),
            init_kwargs={"gpu_memory_utilization": r.gpu_memory_utilization},
            env={**engine_env(c.device, r.kv_cache_gib, r.threads), **c.env},
            placement_timeout_s=c.placement_timeout_s,
            call_timeout_s=c.call_timeout_s,
        )
        try:
            completions = rollout.call_rank0(
                "generate", prompts, args.n, r.temperature, r.top_p, r.max_new_tokens, cfg.trainer.seed
            )
        finally:
            rollout.shutdown()
        responses: list[list[str]] = [[] for _ in rows]
        for comp in completions:
            responses[comp.prompt_index].append(comp.text)
        queries = [
            row.prompt if isinstance(row.prompt, str) else render_conversation(row.prompt) for row in rows
        ]
        with judge_session(cfg) as pool:
            judge_started = time.perf_counter()
            results = map_in_chunks(
                "judging", list(zip(queries, responses, strict=True)), pool.rank, CHUNK_PER_ENGINE
            )
            judge_seconds = time.perf_counter() - judge_started
            stats = pool.stats()
    finally:
        if ray_started:
            ray.shutdown()
    out = []
    for row, query, resp, res in zip(rows, queries, responses, results, strict=True):
        out.append(
            {
                "row": row.row,
                "query": query,
                "responses": resp,
                "pick": res.winner,
                "best": resp[res.winner],
                "method": res.method,
                "ranking": res.ranking,
                "scores": res.scores,
                "rewards": res.rewards,
                "bracket": res.bracket,
                "ratings": res.ratings,
                "comparisons": [
                    {
                        "round": mr.round,
                        "a": mr.a,
                        "b": mr.b,
                        "outcome": mr.outcome,
                        **_judgment_fields(mr.judgment),
                    }
                    for mr in res.comparisons
                ],
            }
        )
    _write_jsonl(out, args.out)
    print(f"{len(rows)} prompts x {args.n} responses -> {args.out} (method {cfg.judge.method})")
    print(f"total {time.perf_counter() - started:.1f}s (generation, engine starts and judging)")
    _print_stats(stats, judge_seconds)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _friendly(func: Any) -> Any:
    """Bad data files end the command with the reader's message (file, row, field), not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from rrm_ray.data.prompts import PromptDataError
        from rrm_ray.judge.service import JudgeInputError

        try:
            return func(args)
        except (DataFormatError, PromptDataError, JudgeInputError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def add_commands(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", help="YAML config (e.g. configs/judge_cpu.yaml); default: built-in defaults"
        )
        add_run_options(p)

    p = sub.add_parser("judge", help="judge pairs from a JSONL file (query, response_a, response_b)")
    p.add_argument("--data", required=True, help="input JSONL: query, response_a, response_b")
    p.add_argument("--out", required=True, help="output JSONL: the input rows plus verdict, votes, traces")
    common(p)
    p.set_defaults(func=_friendly(_judge))

    p = sub.add_parser("eval", help="evaluate the judge on RewardBench or PandaLM; logs to MLflow")
    p.add_argument("--benchmark", required=True, choices=("rewardbench", "pandalm"))
    p.add_argument("--data", required=True, help="benchmark file (JSON / JSONL / Parquet) or Parquet shards")
    p.add_argument("--method", choices=("rrm", "direct"), help="judge.mode: think first, or verdict at once")
    p.add_argument("--votes", type=int, help="judge.votes: sampled judgments per pair (both orders)")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--traces", type=int, default=200, help="judge traces kept in the MLflow table")
    common(p)
    p.set_defaults(func=_friendly(_eval))

    p = sub.add_parser("best-of-n", help="sample n responses per prompt with the policy; the judge picks one")
    p.add_argument("--data", required=True, help="prompts file (data.prompt_field)")
    p.add_argument("--n", type=int, default=8, help="responses per prompt")
    p.add_argument("--method", choices=("knockout", "elo", "swiss"), help="judge.method")
    p.add_argument("--votes", type=int, help="judge.votes")
    p.add_argument("--out", required=True, help="output JSONL: responses, pick, ranking, rewards, traces")
    common(p)
    p.set_defaults(func=_friendly(_best_of_n))
