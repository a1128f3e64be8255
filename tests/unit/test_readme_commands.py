"""Every command the READMEs show exists, parses as written, and is run by a test through the
installed console script (a command no test runs fails here)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rrm_ray.cli import build_parser
from rrm_ray.commands.options import split_overrides
from tests.readme import (
    READMES,
    REPO,
    readme_command_lines,
    readme_error_examples,
    readme_subcommands,
    subcommands_with_tests,
)

SUBCOMMANDS = sorted(set().union(*(readme_subcommands(p) for p in READMES)))
LINES = [(str(p.relative_to(REPO)), line) for p in READMES for line in readme_command_lines(p)]
JOB_LINES = [
    (readme, line)
    for readme, line in LINES
    if shlex.split(line)[0] in ("train", "dpo", "submit") and (REPO / shlex.split(line)[1]).is_file()
]
ERRORS = {line: shown for p in READMES for line, shown in readme_error_examples(p).items()}


def test_the_readmes_show_commands():
    assert {"train", "dpo", "export", "submit", "eval"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_readme_subcommand_has_help_in_the_installed_script(name):
    script = Path(sys.executable).with_name("rrm-ray")
    result = subprocess.run([str(script), name, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`rrm-ray {name} --help` failed:\n{result.stderr}"
    assert f"usage: rrm-ray {name}" in result.stdout


@pytest.mark.parametrize(("readme", "line"), LINES)
def test_each_readme_command_line_parses_as_written(readme, line):
    try:
        split_overrides(build_parser(), shlex.split(line))
    except SystemExit as exc:
        pytest.fail(f"{readme}: `rrm-ray {line}` does not parse (exit {exc.code})")


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_readme_subcommand_is_run_by_a_test(name):
    tested = subcommands_with_tests()
    assert name in tested, (
        f"the README shows `rrm-ray {name}`, but no test runs it through the console script "
        f"(mark one with @runs_command({name!r}))"
    )


@pytest.mark.parametrize(("readme", "line"), JOB_LINES)
def test_each_readme_job_validates_as_written(readme, line):
    """The job a README line starts is checked by `rrm-ray plan` (the same validation `train` runs first,
    through the console script), against its declared cluster; an error example fails as shown."""
    words = shlex.split(line)
    args = split_overrides(build_parser(), words)
    script = Path(sys.executable).with_name("rrm-ray")
    result = subprocess.run(
        [str(script), "plan", args.config, *args.overrides],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if line in ERRORS:
        shown = ERRORS[line].split("...")[0]  # the README elides the rest
        assert result.returncode == 2 and result.stderr.startswith(shown), result.stderr
    else:
        assert result.returncode == 0, f"{readme}: `rrm-ray {line}`:\n{result.stdout[-1500:]}{result.stderr}"
