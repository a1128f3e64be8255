"""What every command shares: `key=value` overrides anywhere among the options, and `--verbose`."""

from __future__ import annotations

import argparse


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
