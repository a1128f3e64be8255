"""`rrm-ray train | dpo | export`: a GRPO or DPO job on a local Ray or a cluster, and a checkpoint
exported as an HF model directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rrm_ray.commands.options import add_run_options, with_verbose
from rrm_ray.config import secret_values
from rrm_ray.data.downstream import read_tasks
from rrm_ray.data.tasks import check_data_paths
from rrm_ray.logs import redact_console
from rrm_ray.models import resolve_model_path
from rrm_ray.stopping import GracefulStop
from rrm_ray.tracking import run_line
from rrm_ray.validation import load_config, validate_dpo


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, with_verbose(args))  # validated before Ray is touched
    redact_console(secret_values(cfg))  # an HF_TOKEN in cluster.env never reaches the console or a log
    check_data_paths(cfg)  # a mistyped data path fails now, not after the model is loaded
    if cfg.trainer.downstream_eval.enabled:
        read_tasks(cfg.trainer.downstream_eval)  # every row of its files checked now, too
    # The job's stack (torch, Ray, the clients) loads once the config and the data checked out.
    from rrm_ray.jobs.dpo import DPOJob
    from rrm_ray.jobs.grpo import GRPOJob

    if args.command == "dpo":
        validate_dpo(cfg)
        job_cls: type[GRPOJob | DPOJob] = DPOJob
    else:
        job_cls = GRPOJob

    # SIGTERM / SIGINT stop the job at its next step boundary, within trainer.stop_grace_s (rrm_ray.stopping)
    with GracefulStop(cfg.trainer.stop_grace_s) as stop:
        job = job_cls(cfg)
        job.stop = stop
        print(f"run {job.run_id}: checkpoints and the final policy go to {job.run_dir}")
        if line := run_line(job.tracker, cfg.tracking):
            print(line)
        status = "FAILED"
        try:
            job.start()
            summary = job.run()
            status = "KILLED" if summary.get("stopped") else "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            print("interrupted: shutting down the actors", file=sys.stderr)
            return stop.exit_code
        finally:
            job.close(status)
    _print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "history"}, f, indent=2, default=str)
    if summary.get("stopped"):
        where = summary.get("checkpoint")
        resume = f"; `resume=auto` continues from {where}" if where else ""
        print(f"stopped by {summary['stopped']} after step {summary['steps']}{resume}", file=sys.stderr)
        return stop.exit_code
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
    """Checkpoint -> HF directory (or a LoRA run's PEFT adapter directory), without Ray or a process
    group. The checkpoint is verified against its manifest first; a non-empty --out is refused unless
    --overwrite."""
    from actors.export import export_checkpoint  # torch: the export's own stack
    from rrm_ray.checkpoint import is_complete, verify

    checkpoint, out = Path(args.checkpoint), Path(args.out)
    if not is_complete(checkpoint):
        print(f"{checkpoint} is not a complete checkpoint (no COMPLETE marker)", file=sys.stderr)
        return 2
    problems = verify(checkpoint)
    if problems:
        print(f"{checkpoint} does not match its manifest: {'; '.join(problems[:5])}", file=sys.stderr)
        return 2
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        print(
            f"--out {out} exists and is not empty; pass --overwrite to replace it, or choose another --out",
            file=sys.stderr,
        )
        return 2
    cfg = load_config(checkpoint / "config.yaml")
    written = export_checkpoint(
        str(checkpoint / "learner"), resolve_model_path(cfg.model.path), out, args.dtype, args.merge
    )
    print(f"wrote {written}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    for name, helptext in (
        ("train", "run a GRPO job (starts a local Ray unless cluster.address is set)"),
        ("dpo", "run a DPO job whose preference labels come from the RRM judge"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config")
        add_run_options(p)
        p.add_argument("--summary-json", help="also write the run summary here")
        p.set_defaults(func=_train)

    p = sub.add_parser(
        "export",
        help="a complete checkpoint -> an HF model directory, or a LoRA run's PEFT adapter (no Ray needed)",
    )
    p.add_argument("checkpoint", help="a step_N directory written by checkpoint.every")
    p.add_argument("--out", required=True, help="the HF directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="weights' dtype in the export (default: the model's dtype; checkpoints hold fp32 masters)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="LoRA checkpoints: the base with the adapter merged in, as an HF model directory (default: the "
        "adapter alone, in PEFT format)",
    )
    p.set_defaults(func=_export)
