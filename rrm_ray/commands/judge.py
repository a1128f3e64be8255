"""`rrm-ray judge | eval | best-of-n`: the RRM judge on its own.

rrm-ray judge --data pairs.jsonl --out verdicts.jsonl --config configs/judge_cpu.yaml judge.votes=3
rrm-ray judge --data pairs.jsonl --out prompts.jsonl --render-only   # what the judge would be shown
rrm-ray eval --benchmark rewardbench --data rewardbench.jsonl --method rrm --votes 1 --limit 100
rrm-ray eval --benchmark rewardbench --data rb.jsonl --sweep judge.max_new_tokens=256,1024 --sweep votes=1,3
rrm-ray best-of-n --data prompts.jsonl --n 8 --method knockout,elo --votes 1,3 --out picks.jsonl

Each command validates its config first (every sweep point too), then starts a local Ray (or
connects to cluster.address) and the roles it needs through the training driver's typed clients
(`rrm_ray.clients`: the JudgeClient; best-of-n's RolloutClient and RewardClient too), each on its own
placement group and none with a learner, so a call an engine's death interrupts is retried once Ray
restarted it, and shuts everything down on the way out, errors included. `eval` logs its config,
scores and the first judge traces to MLflow (`tracking`); a sweep is a parent run with a child run
per point (`rrm_ray.judge.sweep`); `best-of-n` scores the picks against the verifier where prompts
carry answers (`rrm_ray.judge.best_of_n`) and logs the table. What the verdicts mean (benchmark
passes, output records) is `rrm_ray.judge.evaluation`'s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrm_ray.commands.options import add_run_options, with_verbose
from rrm_ray.config import ConfigError, JobConfig, to_flat_dict
from rrm_ray.data.io import DataFormatError, read_records, require_str, write_jsonl
from rrm_ray.data.preference import render_conversation
from rrm_ray.data.prompts import PromptDataError, load_prompts
from rrm_ray.judge import best_of_n as bon
from rrm_ray.judge import sweep
from rrm_ray.judge.benchmarks import load_pandalm, load_rewardbench, read_summary
from rrm_ray.judge.best_of_n import BestOfNError
from rrm_ray.judge.evaluation import Scored, judgment_fields, pandalm_pass, rewardbench_pass, stats_line
from rrm_ray.judge.prompts import PromptTooLongError, resolve_prompt_style
from rrm_ray.judge.records import JudgeInputError, JudgePair
from rrm_ray.judge.sweep import SweepError
from rrm_ray.rewards.rules import RuleError, resolve_rule
from rrm_ray.tracking import Tracker, default_run_name, open_tracker, run_line
from rrm_ray.validation import load_config

if TYPE_CHECKING:
    from rrm_ray.clients.judge import JudgeClient


def _mlflow_line(tracker: Any, cfg: JobConfig) -> None:
    if line := run_line(tracker, cfg.tracking):
        print(line)


# ---------------------------------------------------------------------------------------------- judge
def _judge(args: argparse.Namespace) -> int:
    from rrm_ray.jobs.judging import compare_all, judge_session

    cfg = load_config(args.config, with_verbose(args))
    records = list(read_records(args.data))
    pairs = [
        JudgePair(*(require_str(args.data, row, rec, f) for f in ("query", "response_a", "response_b")))
        for row, rec in records
    ]
    if args.render_only:
        return _render_only(args, cfg, records, pairs)
    with judge_session(cfg) as judge:
        started = time.perf_counter()  # judging only, not the engine start
        judgments = compare_all(judge, pairs, cfg)
        seconds = time.perf_counter() - started
        stats = judge.stats()
    write_jsonl(
        [{**rec, **judgment_fields(j)} for (_, rec), j in zip(records, judgments, strict=True)], args.out
    )
    decided = [j.winner for j in judgments if j.decided]
    print(
        f"{len(pairs)} pairs -> {args.out}: a {decided.count('a')}, b {decided.count('b')}, "
        f"undecided {len(pairs) - len(decided)}"
    )
    print(stats_line(stats, seconds))
    return 0


def _render_only(args: argparse.Namespace, cfg: JobConfig, records: list[Any], pairs: list[JudgePair]) -> int:
    """The prompts the judge would be shown, written instead of judged (the tokenizer only)."""
    from rrm_ray.jobs.judging import render_pairs

    rendered = render_pairs(cfg, pairs)
    write_jsonl([{**rec, **r} for (_, rec), r in zip(records, rendered, strict=True)], args.out)
    shown = sum(len(r["presentations"]) for r in rendered)
    over = [r for r in rendered if r["over_length"]]
    cut = sum(any(p["truncated"] for p in r["presentations"]) for r in rendered)
    j = cfg.judge
    style = resolve_prompt_style(j.prompt_style, j.mode)
    print(
        f"{len(pairs)} pairs -> {args.out}: {shown} presentations (judge.prompt_style={style}, "
        f"judge.presentation={j.presentation}, judge.votes={j.votes}); "
        f"{len(over) + cut} pairs over judge.max_prompt_tokens={j.max_prompt_tokens} "
        f"({cut} truncated, {len(over)} {'skipped' if j.over_length == 'skip' else 'that fail the judge'}; "
        f"judge.over_length={j.over_length})"
    )
    return 0


# ---------------------------------------------------------------------------------------------- eval
def _tracker(
    cfg: JobConfig, kind: str = "eval", run_name: str | None = None, parent_run_id: str | None = None
) -> Tracker:
    """The command's MLflow run, named after the judge model (`rrm_ray.tracking.open_tracker`)."""
    return open_tracker(
        cfg.tracking, kind, cfg.judge.model_path, run_name=run_name, parent_run_id=parent_run_id
    )


def _load_benchmark(args: argparse.Namespace, cfg: JobConfig) -> tuple[list[Any], str, dict[str, float], Any]:
    """(items, the console line on what was read, data/* metrics, the benchmark's scoring pass)."""
    load, run = (
        (load_rewardbench, rewardbench_pass)
        if args.benchmark == "rewardbench"
        else (load_pandalm, pandalm_pass)
    )
    data = load(args.data, on_error=cfg.data.on_error)  # a bad file fails here, before Ray starts
    items = data.items[: args.limit]
    data_line, data_metrics = read_summary(data, items)  # what was coerced or skipped, never silent
    return items, data_line, data_metrics, run


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
    from rrm_ray.jobs.judging import benchmark_pass, judge_session

    if args.sweep:
        return _eval_sweep(args)
    if args.out:
        print("error: --out writes the table of a sweep; add --sweep KEY=V1,V2,...", file=sys.stderr)
        return 2
    cfg = load_config(args.config, _eval_overrides(args))
    items, data_line, data_metrics, run = _load_benchmark(args, cfg)
    print(data_line)
    tracker = _tracker(cfg)
    _mlflow_line(tracker, cfg)
    tracker.log_params(_eval_params(args, cfg))
    tracker.set_tags({"rrm_ray.job": "eval", "rrm_ray.benchmark": args.benchmark})
    tracker.log_metrics(data_metrics, step=0)
    status = "FAILED"
    try:
        with judge_session(cfg, "eval") as judge:
            scored, stats, seconds = benchmark_pass(cfg, items, judge, run, args.traces, "judging")
        print("\n".join(scored.report))
        print(stats_line(stats, seconds))
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
    from rrm_ray.clients.cluster import ray_session
    from rrm_ray.jobs.judging import judge_session

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
    _mlflow_line(parent, cfg)
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
    try:
        with ray_session(cfg, "eval-sweep"):  # one Ray for every session
            for g, group in enumerate(groups):
                print(f"judge session {g + 1}/{len(groups)}: points {', '.join(str(i + 1) for i in group)}")
                with judge_session(cfgs[group[0]], "eval") as judge:
                    for i in group:
                        rows[i] = _sweep_point(args, cfgs[i], items, judge, run, i, points, parent, run_name)
        done = [r for r in rows if r is not None]
        print("\n" + sweep.points_table(keys, done))
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
    return 0


def _sweep_point(
    args: argparse.Namespace,
    cfg: JobConfig,
    items: list[Any],
    judge: JudgeClient,
    run: Any,
    i: int,
    points: list[dict[str, str]],
    parent: Any,
    run_name: str,
) -> Any:
    """Point i on running engines (set to its sampling-time settings), as a child run of `parent`."""
    from rrm_ray.jobs.judging import benchmark_pass

    point, tag = points[i], f"point {i + 1}/{len(points)}"
    child = _tracker(cfg, "eval", f"{run_name} [{sweep.label(point)}]", parent_run_id=parent.run_id)
    status = "FAILED"
    try:
        child.log_params({**_eval_params(args, cfg), "sweep.point": i})
        child.set_tags(
            {"rrm_ray.job": "eval", "rrm_ray.benchmark": args.benchmark, "rrm_ray.sweep_point": str(i)}
        )
        judge.configure(cfg.judge)  # the point's decoding, votes; a fresh cache
        scored, stats, seconds = benchmark_pass(cfg, items, judge, run, args.traces, f"{tag} judging")
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


def _best_of_n(args: argparse.Namespace) -> int:
    """Sample once; judge per (method, votes) setting over the same responses; score picks against
    the verifier where prompts carry answers (rrm_ray.judge.best_of_n)."""
    from rrm_ray.clients.cluster import ray_session
    from rrm_ray.jobs.judging import judge_session, rank_settings, sample_policy, score_correct

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
    _mlflow_line(tracker, cfg)
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
    try:
        with ray_session(cfg, "best-of-n"):
            samples = sample_policy(cfg, rows, args.n)
            responses = bon.per_prompt(
                [s.prompt_index for s in samples], [s.text for s in samples], len(rows)
            )
            correct = score_correct(cfg, rule, rows, samples)
            with judge_session(cfg) as judge:
                table, out = rank_settings(judge, grid, rows, queries, responses, correct, args.n)
        write_jsonl(out, args.out)
        print(f"{len(rows)} prompts x {args.n} responses x {len(grid)} settings -> {args.out}")
        print(f"total {time.perf_counter() - started:.1f}s (generation, engine starts and judging)")
        print("\n" + bon.settings_table(table, len(rows)))
        tracker.log_metrics(bon.metrics(table), step=0)
        tracker.log_table(bon.table_records(table), "best_of_n")
        tracker.log_dataset(args.data, "eval")
        status = "FINISHED"
    finally:
        tracker.close(status)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _friendly(func: Any) -> Any:
    """Bad data files end the command with the reader's message (file, row, field), not a traceback."""

    def run(args: argparse.Namespace) -> int:
        bad_input = (DataFormatError, PromptDataError, JudgeInputError, FileNotFoundError, PromptTooLongError)
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
    p.add_argument(
        "--render-only",
        action="store_true",
        help="write the prompts the judge would be shown (per pair: presentations with first, messages, "
        "prompt, prompt_tokens) instead of judging; the tokenizer only, no Ray, no engine",
    )
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
