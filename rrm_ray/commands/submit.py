"""Submissions: a training job sent to an existing Ray cluster through Ray's Job Submission API, and
its status, logs and stop. (In rrm-ray "job" means a training run, `rrm_ray.jobs`; what Ray calls a
job is called a submission here, by the id Ray calls `submission_id`.)

`submit` validates the config locally first (a bad key fails here, not after an upload), then sends
`python -m rrm_ray.cli train CONFIG overrides... cluster.address=auto` with the working directory as
the runtime env (minus `.venv`, `runs/`, checkpoints and other bulky local state, and files that hold
secrets: `.env*`, `*.pem`, `*.key`, `.netrc`, `.aws/`, `.ssh/`, `.git/`), says how many files and
bytes it uploads before it does, and follows the logs.

Secrets stay out of the entrypoint (which `ray job list`, the dashboard and the head node's process
list show): an override whose value is a secret (`cluster.env.*`, a key naming a token, key or
password) travels in the job's environment, the entrypoint reading it as `${oc.env:RRM_RAY_SECRET_N}`.
Token authentication: Ray's SDK adds the token from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or the
default token file; `--token-file` sets the path for this command (`--token` works too, but sits in
the process list while the command runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rrm_ray.config import is_secret
from rrm_ray.validation import load_config

DEFAULT_ADDRESS = os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265")
EXCLUDES = [
    ".venv",
    "runs",
    "checkpoints",
    ".git",
    "**/__pycache__",
    "*.safetensors",
    "mlflow.db",
    ".pytest_cache",
]
# Files that hold credentials never travel with a job (Ray stores the upload in the cluster's GCS).
SECRET_EXCLUDES = [".env*", "*.pem", "*.key", ".netrc", ".aws/", ".ssh/", ".git/"]
SECRET_ENV_PREFIX = "RRM_RAY_SECRET_"
# The driver's grace after SIGTERM (trainer.stop_grace_s) plus this for the checkpoint and MLflow:
# how long `ray job stop` waits before SIGKILL (Ray's default is 3 s).
STOP_CHECKPOINT_S = 120
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# What the job's `python` on the cluster must import (rrm_ray itself travels in the working dir).
# The import names of pyproject.toml's dependencies (DeepSpeed is added when the job uses it).
REQUIRED_MODULES = (
    "ray", "torch", "transformers", "vllm", "omegaconf", "mlflow", "math_verify", "pyarrow", "pandas",
    "rich", "matplotlib", "psutil", "safetensors", "accelerate", "gguf",
)  # fmt: skip
PROBE = (
    "import importlib.util, json, sys; "
    "missing = [m for m in {modules!r} if importlib.util.find_spec(m) is None]; "
    "print('RRM_RAY_PROBE ' + json.dumps({{'python': sys.executable, 'missing': missing}})); "
    "sys.exit(1 if missing else 0)"
)


DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def _client(args: argparse.Namespace):
    if getattr(args, "token", None):
        print(
            "warning: --token is visible to every user of this machine in the process list while this "
            "command runs (with --follow, as long as the job); prefer --token-file or RAY_AUTH_TOKEN",
            file=sys.stderr,
        )
        os.environ["RAY_AUTH_TOKEN"] = args.token
    if getattr(args, "token_file", None):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(args.token_file).expanduser())
    # A client process is in "disabled" auth mode unless told otherwise, and then sends no token:
    # with a token at hand, switch to token mode (before Ray reads its config).
    has_token = any(os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
    if "RAY_AUTH_MODE" not in os.environ and (has_token or DEFAULT_TOKEN_FILE.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(args.address)
    except ConnectionError as exc:
        raise SystemExit(f"no Ray dashboard answers at --address {args.address}: {exc}") from None


def build_entrypoint(config: str, overrides: list[str]) -> str:
    """The command the cluster runs; `python -m` so the uploaded working dir is on sys.path."""
    has_address = any(o.startswith("cluster.address=") for o in overrides)
    extra = [] if has_address else ["cluster.address=auto"]
    return shlex.join(["python", "-m", "rrm_ray.cli", "train", config, *overrides, *extra])


def hide_secrets(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Overrides whose values are secrets, rewritten to read them from the job's environment
    (`key=${oc.env:RRM_RAY_SECRET_N}`), and those variables: the entrypoint carries no secret."""
    out, env = [], {}
    for override in overrides:
        key, _, value = override.partition("=")
        if is_secret(key) and value and not value.startswith("${"):
            name = f"{SECRET_ENV_PREFIX}{len(env)}"
            env[name] = value
            override = f"{key}=${{oc.env:{name}}}"
        out.append(override)
    return out, env


def env_vars(pairs: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE`, or `--env KEY` for the value of KEY here (no value in argv)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            if key not in os.environ:
                raise SystemExit(f"--env {key}: no value given and {key} is not set in this environment")
            value = os.environ[key]
        out[key] = value
    return out


def upload_listing(workdir: Path, excludes: list[str]) -> tuple[int, int]:
    """(files, bytes) that Ray will upload from `workdir` with these excludes, counted before anything
    is sent with Ray's own walk of a working dir (its default excludes, and each folder's .gitignore and
    .rayignore, as `ray job submit` applies them)."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    counted = [0, 0]

    def count(path: Path) -> None:
        if path.is_file():
            counted[0] += 1
            counted[1] += path.stat().st_size

    patterns = [*ray_constants.get_runtime_env_default_excludes(), *excludes]
    use_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    _dir_travel(workdir, [_get_excludes(workdir, patterns)], count, include_gitignore=use_gitignore)
    return counted[0], counted[1]


def submit(args: argparse.Namespace) -> int:

    cfg = load_config(args.config, args.overrides)  # fail before anything is uploaded
    workdir = Path(args.working_dir).resolve()
    config = Path(args.config).resolve()
    if not config.is_relative_to(workdir):
        print(
            f"config {config} must be inside the working dir {workdir} to travel with the job",
            file=sys.stderr,
        )
        return 2
    overrides, secrets = hide_secrets(args.overrides)
    job_env = {**env_vars(args.env), **secrets}
    # `ray job stop` sends SIGTERM, then SIGKILL after this: room for the step in flight and a checkpoint
    stop_wait = math.ceil(cfg.trainer.stop_grace_s) + STOP_CHECKPOINT_S
    job_env.setdefault("RAY_JOB_STOP_WAIT_TIME_S", str(stop_wait))
    excludes = EXCLUDES + SECRET_EXCLUDES + args.exclude
    runtime_env: dict[str, Any] = {"working_dir": str(workdir), "excludes": excludes, "env_vars": job_env}
    if secrets:
        print(f"{len(secrets)} secret override value(s) travel in the job's environment, not its entrypoint")
    if args.pip:
        runtime_env["pip"] = args.pip
    client = _client(args)
    if not args.skip_probe:
        modules = [*REQUIRED_MODULES, *(["deepspeed"] if cfg.learner.backend == "deepspeed" else [])]
        problem = probe_interpreter(
            client,
            {k: v for k, v in runtime_env.items() if k not in ("working_dir", "excludes")},
            modules,
            args.agent_wait_s,
            args.probe_timeout_s,
        )
        if problem:
            print(problem, file=sys.stderr)
            return 2
    files, size = upload_listing(workdir, excludes)
    print(
        f"uploading {workdir}: {files} files, {size / 2**20:.1f} MiB (left out: {', '.join(excludes)}, and "
        "what .gitignore / .rayignore list)"
    )
    submit_kwargs = dict(
        entrypoint=build_entrypoint(str(config.relative_to(workdir)), overrides),
        runtime_env=runtime_env,
        submission_id=args.submission_id,
        metadata={"rrm_ray": "train", "config": str(config.relative_to(workdir))},
    )
    submission_id = _submit_when_agent_ready(client, submit_kwargs, args.agent_wait_s)
    print(f"submitted {submission_id} to {args.address}")
    if args.no_follow:
        return 0
    return _follow(client, submission_id)


def _submit_when_agent_ready(client: Any, submit_kwargs: dict[str, Any], wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**submit_kwargs)
        except RuntimeError as exc:  # a freshly started head answers before its job agent is up
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def probe_interpreter(
    client: Any, runtime_env: dict[str, Any], modules: list[str], wait_s: float, timeout_s: float
) -> str | None:
    """Run a tiny job with the job's runtime env (no upload) that checks the cluster's `python` can
    import what rrm-ray needs. Returns what is wrong, as a message for the user, or None."""
    entrypoint = shlex.join(["python", "-c", PROBE.format(modules=list(modules))])
    submission_id = _submit_when_agent_ready(
        client,
        {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": {"rrm_ray": "probe"}},
        wait_s,
    )
    deadline = time.monotonic() + timeout_s
    while str(client.get_job_status(submission_id).value) not in TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            return f"the interpreter probe job {submission_id} did not finish within {timeout_s:g}s"
        time.sleep(0.5)
    info, logs = client.get_job_info(submission_id), client.get_job_logs(submission_id)
    status = str(info.status.value)
    with contextlib.suppress(Exception):  # a probe is not a job the user ran: keep `rrm-ray list` clean
        client.delete_job(submission_id)
    if status == "SUCCEEDED":
        return None
    fix = (
        "The job runs `python -m rrm_ray.cli` with the `python` first on the PATH of the Ray node: start "
        "Ray from the environment where rrm-ray is installed (locally: `.venv/bin/ray start --head ...`, "
        "or put .venv/bin first on PATH before `ray start`), use a cluster image with rrm-ray's "
        "requirements installed (cluster/README.md), or pass --pip REQUIREMENT. --skip-probe submits anyway."
    )
    for line in logs.splitlines():
        if line.startswith("RRM_RAY_PROBE "):
            found = json.loads(line.removeprefix("RRM_RAY_PROBE "))
            missing = ", ".join(found["missing"])
            return f"the cluster's python ({found['python']}) cannot import {missing}.\n{fix}"
    why = "\n".join(filter(None, [info.message, logs[-1500:]]))  # a failed --pip install is in the message
    return f"the cluster could not run `python` for this job (probe {submission_id} {status}):\n{why}\n{fix}"


def _follow(client: Any, submission_id: str, poll_s: float = 1.0) -> int:
    """Print new log output until the job ends; exit code 0 only if it succeeded."""
    shown = 0
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            print(f"\nsubmission {submission_id} {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(poll_s)


def status(args: argparse.Namespace) -> int:
    info = _client(args).get_job_info(args.submission_id)
    print(f"{args.submission_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return 0 if str(info.status.value) != "FAILED" else 1


def logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        return _follow(client, args.submission_id)
    print(client.get_job_logs(args.submission_id), end="")
    return 0


def list_submissions(args: argparse.Namespace) -> int:
    for info in _client(args).list_jobs():
        print(f"{info.submission_id or info.job_id}\t{info.status.value}\t{info.entrypoint}")
    return 0


def stop(args: argparse.Namespace) -> int:
    stopped = _client(args).stop_job(args.submission_id)
    print(f"{args.submission_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--address", default=DEFAULT_ADDRESS, help="Ray dashboard address (default %(default)s)"
        )
        p.add_argument(
            "--token",
            help="Ray auth token; visible in the process list: prefer --token-file, RAY_AUTH_TOKEN or the "
            "default token file",
        )
        p.add_argument("--token-file", help="file holding the Ray auth token")

    p = sub.add_parser("submit", help="submit a training job to a Ray cluster and follow its logs")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (anywhere, or after --)")
    common(p)
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working dir")
    p.add_argument("--exclude", action="append", default=[], help="extra paths to leave out of the upload")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="env var for the job; KEY alone: its value in this environment (kept out of argv)",
    )
    p.add_argument("--pip", action="append", default=[], help="pip requirement installed for the job")
    p.add_argument("--submission-id", help="the submission's id (default: generated by Ray)")
    p.add_argument("--no-follow", action="store_true", help="return after submitting")
    p.add_argument(
        "--skip-probe",
        action="store_true",
        help="do not first check that the cluster's python can import rrm-ray's requirements",
    )
    p.add_argument(
        "--probe-timeout-s",
        type=float,
        default=900.0,
        help="how long the probe job may take (it installs --pip requirements first, as the job will)",
    )
    p.add_argument("--agent-wait-s", type=float, default=120.0, help="wait this long for the job agent")
    p.set_defaults(func=submit)

    for name, func, helptext in (
        ("status", status, "a submission's status"),
        ("stop", stop, "stop a running submission"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("submission_id", help="the id `submit` printed (or `list` shows)")
        common(p)
        p.set_defaults(func=func)
    p = sub.add_parser("logs", help="a submission's logs")
    p.add_argument("submission_id", help="the id `submit` printed (or `list` shows)")
    p.add_argument("--follow", action="store_true")
    common(p)
    p.set_defaults(func=logs)
    p = sub.add_parser("list", help="submissions on the cluster")
    common(p)
    p.set_defaults(func=list_submissions)
