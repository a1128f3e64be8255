"""`rrm-ray` command line: train locally or on a cluster, and manage submitted jobs.

rrm-ray train configs/quickstart.yaml trainer.total_steps=5
rrm-ray dpo configs/dpo_rrm_cpu.yaml
rrm-ray export runs/quickstart/step_000010 --out hf_model/ --dtype bfloat16
rrm-ray submit configs/quickstart.yaml --address http://head:8265 -- trainer.total_steps=5
rrm-ray status JOB | logs JOB [--follow] | list | stop JOB
rrm-ray plan configs/grpo_gpu_1x8.yaml  # what the job occupies, without starting it
rrm-ray downstream-eval --model DIR --tasks mmlu_pro=FILE,gpqa=FILE  # lm-eval accuracy, offline

`key=value` config overrides may stand anywhere among the options, or after `--`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rrm_ray.config import ConfigError, load_config, validate_dpo


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, with_verbose(args))  # validated before Ray is touched
    from rrm_ray.data.tasks import check_data_paths

    check_data_paths(cfg)  # a mistyped data path fails now, not after the model is loaded
    if cfg.trainer.downstream_eval.enabled:
        from rrm_ray.downstream import read_tasks

        read_tasks(cfg.trainer.downstream_eval)  # every row of its files checked now, too
    if args.command == "dpo":
        validate_dpo(cfg)
        from rrm_ray.dpo import DPOJob as Job
    else:
        from rrm_ray.driver import GRPOJob as Job

    job = Job(cfg)
    print(f"MLflow run {job.tracker.run_id} at {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
    status = "FAILED"
    try:
        job.start()
        summary = job.run()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: shutting down the actors", file=sys.stderr)
        return 130
    finally:
        job.close(status)
    _print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "history"}, f, indent=2, default=str)
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    before, after = summary["before"], summary["after"]
    print(f"\nsteps {summary['steps']} in {summary['wall_s']:.0f}s; MLflow run {summary['run_id']}")
    if before and after:
        for key in before:
            if key.endswith(("_ci_low", "_ci_high", "_n")) or key not in after:
                continue  # printed beside their accuracy
            line = f"held-out {key.split('/')[-1]:>16}: before {before[key]:.3f}  after {after[key]:.3f}"
            if f"{key}_ci_low" in after:
                line += f"  (after: 95% CI {after[key + '_ci_low']:.3f}-{after[key + '_ci_high']:.3f}"
                line += f", n={after[key + '_n']:.0f})"
            print(line)
    down = summary.get("downstream") or {}  # a resumed run has only the final policy's
    for task in sorted(
        {k.split("/")[1] for k in down if k.startswith(("downstream_before/", "downstream_after/"))}
    ):
        parts = [
            f"{when} {down[f'downstream_{when}/{task}/acc']:.3f}"
            for when in ("before", "after")
            if f"downstream_{when}/{task}/acc" in down
        ]
        print(f"downstream {task}: {'  '.join(parts)}")
    agreement = summary.get("judge_agreement")
    if agreement and agreement["pairs_total"]:
        rate = agreement["pairs_agree"] / agreement["pairs_total"]
        print(
            f"RRM vs verifier: agreed on {agreement['pairs_agree']}/{agreement['pairs_total']} comparisons "
            f"({rate:.0%}) whose two responses the verifier scored apart; its pick was one the verifier "
            f"scored best for {agreement['picks_correct']}/{agreement['picks_total']} prompts"
        )
    if summary.get("final_policy"):
        print(f"final policy (HF format): {summary['final_policy']}")


def _export(args: argparse.Namespace) -> int:
    """Checkpoint -> HF directory, without Ray or a process group."""
    from pathlib import Path

    from rrm_ray.checkpoint import is_complete

    checkpoint = Path(args.checkpoint)
    if not is_complete(checkpoint):
        print(f"{checkpoint} is not a complete checkpoint (no COMPLETE marker)", file=sys.stderr)
        return 2
    cfg = load_config(checkpoint / "config.yaml")
    from actors.backends import export_checkpoint_to_hf
    from rrm_ray.models import resolve_model_path

    out = export_checkpoint_to_hf(
        str(checkpoint / "learner"), resolve_model_path(cfg.model.path), args.out, dtype=args.dtype
    )
    print(f"wrote {out}")
    return 0


def with_verbose(args: argparse.Namespace) -> list[str]:
    """The command's overrides, plus `--verbose` as its config key."""
    return [*args.overrides, *(["cluster.stream_worker_logs=true"] if args.verbose else [])]


def add_run_options(p: argparse.ArgumentParser) -> None:
    """What every command that starts actors takes: overrides, and where actor output goes."""
    p.add_argument("overrides", nargs="*", help="key=value config overrides (anywhere, or after --)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="stream actor and engine logs to the console (default: a log file under checkpoint.dir)",
    )


def split_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides stand anywhere among the options and after `--`.

    argparse hands a positional `nargs="*"` only the values right after the config; the rest come
    back as extras, which must all be overrides (anything else is an unrecognised argument)."""
    args, extras = parser.parse_known_args(argv)
    extras = [e for e in extras if e != "--"]
    bad = [e for e in [*getattr(args, "overrides", []), *extras] if not _is_override(e)]
    if bad or (extras and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extras)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    return args


def _is_override(token: str) -> bool:
    key, sep, _ = token.partition("=")
    return bool(sep) and not key.startswith("-") and all(part.isidentifier() for part in key.split("."))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrm-ray", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    for name, helptext in (
        ("train", "run a GRPO job (starts a local Ray unless cluster.address is set)"),
        ("dpo", "run a DPO job whose preference labels come from the RRM judge"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config")
        add_run_options(p)
        p.add_argument("--summary-json", help="also write the run summary here")
        p.set_defaults(func=_train)

    p = sub.add_parser("export", help="a complete checkpoint -> an HF model directory (no Ray needed)")
    p.add_argument("checkpoint", help="a step_N directory written by checkpoint.every")
    p.add_argument("--out", required=True, help="the HF directory to write")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="weights' dtype in the export (default: the model's dtype; checkpoints hold fp32 masters)",
    )
    p.set_defaults(func=_export)

    from rrm_ray import downstream, jobs, judge_cli, plan

    downstream.add_commands(sub)
    jobs.add_commands(sub)
    judge_cli.add_commands(sub)
    plan.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = split_overrides(parser, argv)
    if not getattr(args, "verbose", False):
        from rrm_ray.logs import quiet_driver_loggers

        quiet_driver_loggers()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
