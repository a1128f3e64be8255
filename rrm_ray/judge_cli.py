"""`rrm-ray judge | eval | best-of-n`: the RRM judge on its own.

rrm-ray judge --data pairs.jsonl --out verdicts.jsonl --config configs/judge_cpu.yaml judge.votes=3
rrm-ray eval --benchmark rewardbench --data rewardbench.jsonl --method rrm --votes 1 --limit 100
rrm-ray eval --benchmark rewardbench --data rb.jsonl --sweep judge.max_new_tokens=256,1024 --sweep votes=1,3
rrm-ray best-of-n --data prompts.jsonl --n 8 --method knockout,elo --votes 1,3 --out picks.jsonl

Each command validates its config first (every sweep point too), then starts a local Ray (or
connects to cluster.address), starts the judge engines through `ActorGroup`, and shuts everything
down on the way out, errors included. `eval` logs its config, scores and the first judge traces to
MLflow (`tracking`); a sweep is a parent run with a child run per point (`rrm_ray.judge.sweep`);
`best-of-n` scores the picks against the verifier where prompts carry answers
(`rrm_ray.judge.best_of_n`) and logs the table.
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


def _compare(pool: Any, pairs: list[JudgePair], cfg: JobConfig, label: str = "judging") -> list[PairJudgment]:
    """All pairs judged, a chunk at a time behind a progress bar over items."""
    return map_in_chunks(label, pairs, pool.compare, CHUNK_PER_ENGINE * cfg.judge.num_engines)


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
def _tracker(
    cfg: JobConfig, job: str = "eval", run_name: str | None = None, parent_run_id: str | None = None
):
    """The command's MLflow run (a NullTracker when tracking is off); `parent_run_id` nests it (a
    sweep's point), and such a run samples no system metrics of its own: its parent does."""
    from rrm_ray.tracking import MLflowTracker, NullTracker, default_run_name

    t = cfg.tracking
    if not t.enabled:
        return NullTracker()
    system = t.system_metrics and parent_run_id is None
    return MLflowTracker(
        t.uri,
        t.experiment,
        run_name or t.run_name or default_run_name(job, cfg.judge.model_path),
        system_metrics_interval_s=t.system_metrics_interval_s if system else None,
        parent_run_id=parent_run_id,
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


@dataclasses.dataclass
class Scored:
    """One benchmark pass: its metrics, the first judge traces, and the headline accuracy as a
    binomial count (`successes` of `n`; RewardBench's half credits count half) for its interval."""

    metrics: dict[str, float]
    traces: list[dict[str, Any]]
    successes: float
    n: int


def _eval_rewardbench(
    args: argparse.Namespace, cfg: JobConfig, items: list[Any], pool: Any, label: str, show: bool
) -> Scored:
    from rrm_ray.judge.benchmarks import score_rewardbench

    chosen_a = [_coin(cfg.trainer.seed, it.id) for it in items]
    pairs = [
        JudgePair(it.prompt, it.chosen, it.rejected) if a else JudgePair(it.prompt, it.rejected, it.chosen)
        for it, a in zip(items, chosen_a, strict=True)
    ]
    judgments = _compare(pool, pairs, cfg, label)
    credits = [credit(j, a) for j, a in zip(judgments, chosen_a, strict=True)]
    report = score_rewardbench(zip(items, credits, strict=True))
    metrics: dict[str, float] = {f"accuracy/{s}": a for s, a in report.subset_accuracy.items()}
    metrics.update({f"unknown_subset/{s}": a for s, a in report.unknown_subsets.items()})
    metrics.update({f"section/{name}": v for name, v in report.sections.items() if v is not None})
    if report.overall is not None:
        metrics["overall"] = report.overall
    metrics["accuracy/all_items"] = sum(credits) / max(len(credits), 1)
    if show:
        print(f"\n{'subset':<28}{'n':>6}{'accuracy':>10}")
        for subset, acc in {**report.subset_accuracy, **report.unknown_subsets}.items():
            mark = "  (not a RewardBench subset)" if subset in report.unknown_subsets else ""
            print(f"{subset:<28}{report.subset_counts[subset]:>6}{acc:>10.3f}{mark}")
        for name, score in report.sections.items():
            print(f"section {name:<20}{'-' if score is None else f'{score:.3f}':>16}")
        print(f"{'overall':<28}{'-' if report.overall is None else f'{report.overall:.3f}':>16}")
        print(
            f"{'mean credit over all items':<28}{metrics['accuracy/all_items']:>16.3f}  ({len(items)} items)"
        )
    extra = [
        {"subset": it.subset, "chosen_shown_as": "a" if a else "b", "credit": c}
        for it, a, c in zip(items, chosen_a, credits, strict=True)
    ]
    traces = _trace_rows([it.id for it in items], judgments, extra, args.traces)
    return Scored(metrics, traces, sum(credits), len(items))


def _eval_pandalm(
    args: argparse.Namespace, cfg: JobConfig, items: list[Any], pool: Any, label: str, show: bool
) -> Scored:
    from rrm_ray.judge.benchmarks import score_pandalm

    keep = [not _coin(cfg.trainer.seed, it.idx) for it in items]  # response1 listed as a?
    pairs = [
        JudgePair(it.query, it.response1, it.response2)
        if k
        else JudgePair(it.query, it.response2, it.response1)
        for it, k in zip(items, keep, strict=True)
    ]
    judgments = _compare(pool, pairs, cfg, label)
    predictions: list[int | None] = []
    for j, k in zip(judgments, keep, strict=True):
        if not j.decided:
            predictions.append(None)
        else:
            predictions.append(1 if (j.winner == "a") == k else 2)
    report = score_pandalm([it.label for it in items], predictions)  # type: ignore[misc]
    excl = report.accuracy_excluding_ties
    if show:
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
    correct = sum(p is not None and p == it.label for it, p in zip(items, predictions, strict=True))
    return Scored(
        metrics, _trace_rows([it.idx for it in items], judgments, extra, args.traces), correct, len(items)
    )


def _load_benchmark(args: argparse.Namespace, cfg: JobConfig) -> tuple[list[Any], str, dict[str, float], Any]:
    """(items, the console line on what was read, data/* metrics, the benchmark's scoring pass)."""
    from rrm_ray.judge.benchmarks import load_pandalm, load_rewardbench, read_summary

    load, run = (
        (load_rewardbench, _eval_rewardbench)
        if args.benchmark == "rewardbench"
        else (load_pandalm, _eval_pandalm)
    )
    data = load(args.data, on_error=cfg.data.on_error)  # a bad file fails here, before Ray starts
    items = data.items[: args.limit]
    data_line, data_metrics = read_summary(data, items)  # what was coerced or skipped, never silent
    return items, data_line, data_metrics, run


def _judged(
    args: argparse.Namespace, cfg: JobConfig, items: list[Any], pool: Any, run: Any, label: str, show: bool
) -> tuple[Scored, dict[str, float], float]:
    """One benchmark pass on a running pool, with the judge's counters (reset after) and seconds."""
    started = time.perf_counter()  # judging only, not the engine start
    scored = run(args, cfg, items, pool, label, show)
    seconds = time.perf_counter() - started
    stats = pool.stats(reset=True)
    scored.metrics.update({f"judge/{k}": float(v) for k, v in stats.items()})
    scored.metrics["judge/unparseable_rate"] = stats["unparseable"] / max(stats["judge_calls"], 1)
    scored.metrics["judge/comparisons_per_s"] = max(stats["comparisons"], 1) / seconds
    scored.metrics["judge/seconds"] = seconds
    return scored, stats, seconds


def _eval_params(args: argparse.Namespace, cfg: JobConfig) -> dict[str, Any]:
    return {
        **to_flat_dict(cfg),
        "eval.benchmark": args.benchmark,
        "eval.data": args.data,
        "eval.limit": args.limit,
    }


def _log_scored(tracker: Any, args: argparse.Namespace, scored: Scored) -> None:
    tracker.log_metrics(scored.metrics, step=0)
    tracker.log_table(scored.traces, "judge_traces")
    if args.benchmark == "rewardbench":  # per-subset accuracy and the four section scores, drawn
        from rrm_ray.figures import rewardbench_scores

        with tempfile.TemporaryDirectory() as tmp:  # logged at once: this tracker is not buffered
            if png := rewardbench_scores(scored.metrics, Path(tmp, "rewardbench_scores.png")):
                tracker.log_artifact(str(png), "figures")


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"judge.mode={args.method}"] if args.method else []
    extra += [f"judge.votes={args.votes}"] if args.votes else []
    return [*with_verbose(args), *extra]


def _eval(args: argparse.Namespace) -> int:
    if args.sweep:
        return _eval_sweep(args)
    if args.out:
        print("error: --out writes the table of a sweep; add --sweep KEY=V1,V2,...", file=sys.stderr)
        return 2
    cfg = load_config(args.config, _eval_overrides(args))
    items, data_line, data_metrics, run = _load_benchmark(args, cfg)
    print(data_line)
    tracker = _tracker(cfg)
    if tracker.run_id:
        print(f"MLflow run {tracker.run_id} at {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
    tracker.log_params(_eval_params(args, cfg))
    tracker.set_tags({"rrm_ray.job": "eval", "rrm_ray.benchmark": args.benchmark})
    tracker.log_metrics(data_metrics, step=0)
    status = "FAILED"
    try:
        with judge_session(cfg, "eval") as pool:
            scored, stats, seconds = _judged(args, cfg, items, pool, run, "judging", show=True)
        _print_stats(stats, seconds)
        _log_scored(tracker, args, scored)
        tracker.log_dataset(args.data, "eval")
        status = "FINISHED"
    finally:
        tracker.close(status)
    return 0


# ---------------------------------------------------------------------------------------------- eval --sweep
def _eval_sweep(args: argparse.Namespace) -> int:
    """Every point of the grid evaluated on the same items: one judge session per engine the points
    need (rrm_ray.judge.sweep), one MLflow child run per point under the sweep's run, then the table
    and the accuracy figures."""
    import ray

    from rrm_ray.config import ConfigError
    from rrm_ray.driver import connect_ray
    from rrm_ray.judge import sweep
    from rrm_ray.tracking import default_run_name

    base = _eval_overrides(args)
    axes = sweep.parse_axes(args.sweep, fixed_keys=[o.partition("=")[0] for o in base])
    out = sweep.check_table_path(args.out) if args.out else None
    keys = [a.key for a in axes]
    points = sweep.expand(axes)
    cfgs = []
    for point in points:  # every point validated before anything starts
        try:
            cfgs.append(load_config(args.config, [*base, *sweep.overrides(point)]))
        except ConfigError as exc:
            raise ConfigError(f"--sweep point {sweep.label(point)}: {exc}") from None
    # What the points share: only valid with a point's values (a budget may need its max_model_len),
    # so the first point's config stands for it, its swept keys logged as the grid instead.
    cfg = cfgs[0]
    items, data_line, data_metrics, run = _load_benchmark(args, cfg)
    print(data_line)
    groups = sweep.session_groups([to_flat_dict(c) for c in cfgs])
    restart = sweep.engine_keys(keys)
    sessions = (
        "one judge session (only sampling-time keys vary)"
        if len(groups) == 1
        else f"{len(groups)} judge sessions ({', '.join(restart)} fix the engine)"
    )
    print(f"sweep: {len(points)} points over {', '.join(keys)}, {len(items)} items each; {sessions}")
    run_name = cfg.tracking.run_name or default_run_name("eval-sweep", cfg.judge.model_path)
    parent = _tracker(cfg, "eval-sweep", run_name)
    if parent.run_id:
        print(f"MLflow run {parent.run_id} at {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
    parent.log_params(
        {
            **{k: v for k, v in _eval_params(args, cfg).items() if k not in keys},
            **{f"sweep.{a.key}": ",".join(a.values) for a in axes},
            "sweep.points": len(points),
            "sweep.sessions": len(groups),
        }
    )
    parent.set_tags({"rrm_ray.job": "eval-sweep", "rrm_ray.benchmark": args.benchmark})
    parent.log_metrics(data_metrics, step=0)
    parent.log_dataset(args.data, "eval")
    rows: list[sweep.SweepRow | None] = [None] * len(points)
    status = "FAILED"
    ray_started = not ray.is_initialized()
    try:
        connect_ray(cfg, "eval-sweep")  # one Ray for every session
        for g, group in enumerate(groups):
            print(f"judge session {g + 1}/{len(groups)}: points {', '.join(str(i + 1) for i in group)}")
            with judge_session(cfgs[group[0]], "eval") as pool:
                for i in group:
                    rows[i] = _sweep_point(args, cfgs[i], items, pool, run, i, points, parent, run_name)
        done = [r for r in rows if r is not None]
        print("\n" + sweep.format_table(keys, done))
        records = sweep.table_records(keys, done)
        parent.log_table(records, "sweep")
        from rrm_ray.figures import sweep_accuracy

        x_key, line_keys = sweep.figure_axes(keys)
        with tempfile.TemporaryDirectory() as tmp:
            if png := sweep_accuracy(records, x_key, line_keys, Path(tmp, "sweep_accuracy.png")):
                parent.log_artifact(str(png), "figures")
        if out is not None:
            print(f"table -> {sweep.write_table(keys, done, out)}")
        status = "FINISHED"
    finally:
        parent.close(status)
        if ray_started:
            ray.shutdown()
    return 0


def _sweep_point(
    args: argparse.Namespace,
    cfg: JobConfig,
    items: list[Any],
    pool: Any,
    run: Any,
    i: int,
    points: list[dict[str, str]],
    parent: Any,
    run_name: str,
) -> Any:
    """Point i on a running pool (set to its sampling-time settings), as a child run of `parent`."""
    from rrm_ray.judge import sweep

    point, tag = points[i], f"point {i + 1}/{len(points)}"
    child = _tracker(cfg, "eval", f"{run_name} [{sweep.label(point)}]", parent_run_id=parent.run_id)
    status = "FAILED"
    try:
        child.log_params({**_eval_params(args, cfg), "sweep.point": i})
        child.set_tags(
            {"rrm_ray.job": "eval", "rrm_ray.benchmark": args.benchmark, "rrm_ray.sweep_point": str(i)}
        )
        pool.configure(dataclasses.asdict(cfg.judge))  # the point's decoding, votes; a fresh cache
        scored, stats, seconds = _judged(args, cfg, items, pool, run, f"{tag} judging", show=False)
        _log_scored(child, args, scored)
        row = sweep.SweepRow.from_scores(i, point, scored.successes, scored.n, stats, seconds, child.run_id)
        print(
            f"{tag} {sweep.label(point)}: accuracy {row.accuracy:.3f} (95% CI {row.ci_low:.3f}-"
            f"{row.ci_high:.3f}, n={row.n}), {row.generated_tokens} judge tokens, {row.judge_calls} judge "
            f"calls, {row.seconds:.1f}s"
        )
        status = "FINISHED"
    finally:
        child.close(status)
    return row


# ---------------------------------------------------------------------------------------------- best-of-n
def _generate_responses(cfg: JobConfig, rows: list[Any], n: int) -> list[list[str]]:
    """n policy samples per prompt, on a rollout engine that is shut down before the judge starts, so
    the two never need resources at the same time (one GPU, or a small CPU machine, holds either)."""
    from transformers import AutoTokenizer

    from actors.rollout import RolloutWorker, engine_env
    from rrm_ray.actor_group import ActorGroup, RoleSpec
    from rrm_ray.config import resolved_dtype
    from rrm_ray.data.prompts import render_prompt
    from rrm_ray.models import resolve_model_path

    c, r, m = cfg.cluster, cfg.rollout, cfg.model
    policy = resolve_model_path(m.path)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompts = [render_prompt(tokenizer, row.prompt, m.system_prompt, m.use_chat_template) for row in rows]
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
            "generate", prompts, n, r.temperature, r.top_p, r.max_new_tokens, cfg.trainer.seed
        )
    finally:
        rollout.shutdown()
    responses: list[list[str]] = [[] for _ in rows]
    for comp in completions:
        responses[comp.prompt_index].append(comp.text)
    return responses


def _score_responses(cfg: JobConfig, rule: str, rows: list[Any], responses: list[list[str]]) -> list[Any]:
    """Per prompt, whether each response is correct by `rule` (value > 0), or None without an answer.

    The rule runs as the reward actor runs it (`RewardRunner`: worker processes, `reward.timeout_s`
    per item), here in the driver: rules are pure, no Ray needed. A response the rule times out or
    fails on counts as incorrect, and the console says how many."""
    from rrm_ray.rewards.runner import RewardRunner

    index = [(i, k) for i, row in enumerate(rows) if row.answer is not None for k in range(len(responses[i]))]
    correct: list[list[bool] | None] = [[] if row.answer is not None else None for row in rows]
    if not index:
        return correct
    r = cfg.reward
    with RewardRunner(rule, r.timeout_s, fallback_reward=0.0, num_workers=r.num_workers) as runner:
        batch = runner.score([responses[i][k] for i, k in index], [rows[i].answer for i, _ in index])
    for (i, _), value in zip(index, batch.rewards, strict=True):
        correct[i].append(value > 0)  # type: ignore[union-attr]
    if batch.timeouts or batch.errors:
        print(
            f"rule {rule!r}: {batch.timeouts} responses timed out and {batch.errors} failed; counted as "
            f"incorrect. {'; '.join(batch.error_messages)}"
        )
    return correct


def _pick_rows(
    rows: list[Any],
    queries: list[str],
    responses: list[list[str]],
    correct: list[Any],
    results: list[Any],
    votes: int,
) -> list[dict[str, Any]]:
    out = []
    for row, query, resp, flags, res in zip(rows, queries, responses, correct, results, strict=True):
        out.append(
            {
                "row": row.row,
                "query": query,
                "responses": resp,
                "pick": res.winner,
                "best": resp[res.winner],
                "method": res.method,
                "votes": votes,
                "answer": row.answer,
                "correct": flags,  # per response, by the verifier's rule; null without an answer
                "pick_correct": None if flags is None else flags[res.winner],
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
    return out


def _best_of_n(args: argparse.Namespace) -> int:
    """Sample once; judge per (method, votes) setting over the same responses; score picks against
    the verifier where prompts carry answers (rrm_ray.judge.best_of_n)."""
    import ray

    from rrm_ray.data.preference import render_conversation
    from rrm_ray.data.prompts import load_prompts
    from rrm_ray.driver import connect_ray
    from rrm_ray.judge import best_of_n as bon
    from rrm_ray.rewards.rules import resolve_rule

    overrides = [*with_verbose(args)]
    single_method = args.method is not None and "," not in args.method
    single_votes = args.votes is not None and "," not in args.votes
    overrides += [f"judge.method={args.method.strip()}"] if single_method else []
    overrides += [f"judge.votes={args.votes.strip()}"] if single_votes else []
    cfg = load_config(args.config, overrides)
    if args.n < 1:
        print(f"--n must be at least 1, got {args.n}", file=sys.stderr)
        return 2
    grid = bon.settings(
        bon.parse_methods(args.method, cfg.judge.method), bon.parse_votes(args.votes, cfg.judge.votes)
    )
    rule = bon.correctness_rule(cfg.reward)
    resolve_rule(rule)  # a mistyped rule fails now, not after generation
    rows = load_prompts(args.data, cfg.data.prompt_field, answer_field=cfg.data.answer_field)
    queries = [row.prompt if isinstance(row.prompt, str) else render_conversation(row.prompt) for row in rows]
    tracker = _tracker(cfg, "best-of-n")
    if tracker.run_id:
        print(f"MLflow run {tracker.run_id} at {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
    tracker.log_params(
        {
            **to_flat_dict(cfg),
            "best_of_n.data": args.data,
            "best_of_n.n": args.n,
            "best_of_n.methods": ",".join(dict.fromkeys(m for m, _ in grid)),  # as listed
            "best_of_n.votes": ",".join(dict.fromkeys(str(k) for _, k in grid)),
            "best_of_n.correctness_rule": rule,
        }
    )
    tracker.set_tags({"rrm_ray.job": "best-of-n"})
    started = time.perf_counter()
    status = "FAILED"
    ray_started = not ray.is_initialized()
    table: list[bon.SettingRow] = []
    out: list[dict[str, Any]] = []
    try:
        connect_ray(cfg, "best-of-n")
        responses = _generate_responses(cfg, rows, args.n)
        correct = _score_responses(cfg, rule, rows, responses)
        with judge_session(cfg) as pool:
            for method, votes in grid:
                pool.clear_cache()  # each setting pays for its own comparisons
                judge_started = time.perf_counter()
                results = map_in_chunks(
                    f"judging ({method}, {votes} votes)",
                    list(zip(queries, responses, strict=True)),
                    lambda part, m=method, k=votes: pool.rank(part, method=m, votes=k),
                    CHUNK_PER_ENGINE,
                )
                seconds = time.perf_counter() - judge_started
                stats = pool.stats(reset=True)
                print(f"{method}, {votes} votes: ", end="")
                _print_stats(stats, seconds)
                scores = bon.pick_scores(correct, [res.winner for res in results])
                table.append(
                    bon.SettingRow(method, votes, args.n, scores, int(stats["judge_calls"]), seconds)
                )
                out += _pick_rows(rows, queries, responses, correct, results, votes)
        _write_jsonl(out, args.out)
        print(f"{len(rows)} prompts x {args.n} responses x {len(grid)} settings -> {args.out}")
        print(f"total {time.perf_counter() - started:.1f}s (generation, engine starts and judging)")
        print("\n" + bon.format_table(table, len(rows)))
        tracker.log_metrics(bon.metrics(table), step=0)
        tracker.log_table(bon.table_records(table), "best_of_n")
        tracker.log_dataset(args.data, "eval")
        status = "FINISHED"
    finally:
        tracker.close(status)
        if ray_started:
            ray.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _friendly(func: Any) -> Any:
    """Bad data files end the command with the reader's message (file, row, field), not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from rrm_ray.data.prompts import PromptDataError
        from rrm_ray.judge.best_of_n import BestOfNError
        from rrm_ray.judge.service import JudgeInputError
        from rrm_ray.judge.sweep import SweepError
        from rrm_ray.rewards.rules import RuleError

        bad_input = (DataFormatError, PromptDataError, JudgeInputError, FileNotFoundError)
        try:
            return func(args)
        except (*bad_input, SweepError, BestOfNError, RuleError) as exc:
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
    p.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2,...",
        help="evaluate every point of a grid (repeatable: the cartesian product), e.g. "
        "judge.max_new_tokens=256,1024 or votes=1,3 (short for judge.votes); judge.* keys and trainer.seed",
    )
    p.add_argument("--out", help="with --sweep: also write its table here (.json or .csv)")
    common(p)
    p.set_defaults(func=_friendly(_eval))

    p = sub.add_parser("best-of-n", help="sample n responses per prompt with the policy; the judge picks one")
    p.add_argument("--data", required=True, help="prompts file (data.prompt_field)")
    p.add_argument("--n", type=int, default=8, help="responses per prompt")
    p.add_argument(
        "--method",
        help="judge.method, or a list to compare on the same responses: knockout,elo,swiss",
    )
    p.add_argument("--votes", help="judge.votes, or a list to compare on the same responses: 1,3")
    p.add_argument(
        "--out",
        required=True,
        help="output JSONL, a line per prompt and setting: responses, correctness, pick, ranking, traces",
    )
    common(p)
    p.set_defaults(func=_friendly(_best_of_n))
