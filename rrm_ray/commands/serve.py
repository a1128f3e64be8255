"""`rrm-ray serve-judge CONFIG [key=value ...] [--address ADDR] [--name NAME]` and
`rrm-ray serve-judge --stop NAME`: the config's judge (judge.model_path, judge.num_engines, TP, GPUs)
served on a running Ray cluster for many jobs, as vLLM's OpenAI server in detached actors with token
authentication (`rrm_ray.clients.served_judge`). Prints the URLs, where the API key is and the config
lines a job needs (`judge.endpoint.*`)."""

from __future__ import annotations

import argparse
import sys

from rrm_ray.validation import load_config


def run(args: argparse.Namespace) -> int:
    from rrm_ray.clients.served_judge import KEY_ENV, ServeError, serve_judge, stop_judge  # Ray

    if args.stop:
        stopped = stop_judge(args.stop, args.address)
        if not stopped:
            print(f"no judge named {args.stop!r} is served", file=sys.stderr)
            return 1
        print(f"stopped judge {args.stop!r}: {', '.join(stopped)}")
        return 0
    if not args.config:
        print("error: serve-judge needs a CONFIG (or --stop NAME)", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)
    j = cfg.judge
    print(f"serving judge {args.name!r}: {j.num_engines} engine(s) of {j.model_path} (this takes a while)")
    try:
        served = serve_judge(cfg, args.name, args.address)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    urls = ",".join(served.urls)
    print(f"judge {served.name!r} serves {served.model} at:")
    for url in served.urls:
        print(f"  {url}")
    print(f"API key: {served.key_file} (readable by you only). A job reads it from an environment variable:")
    print(f"  export {KEY_ENV}=$(cat {served.key_file})")
    print(
        f"  judge.enabled=true judge.endpoint.url={urls} judge.endpoint.model={served.model} "
        f"judge.endpoint.api_key_env={KEY_ENV}"
    )
    print(f"stop it with: rrm-ray serve-judge --stop {served.name}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-judge",
        help="serve the config's judge on the Ray cluster for many jobs (vLLM's OpenAI server, an API key)",
    )
    p.add_argument("config", nargs="?", help="YAML config whose judge.* section says what to serve")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (anywhere, or after --)")
    p.add_argument("--name", default="judge", help="the served judge's name (default: judge)")
    p.add_argument(
        "--address", help="the running Ray cluster (ray.init address; default: cluster.address or auto)"
    )
    p.add_argument("--stop", metavar="NAME", help="stop the judge served under NAME")
    p.set_defaults(func=run)
