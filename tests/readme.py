"""The README's commands, read as a user reads them, and the tests that run each sub-command.

A test that runs `rrm-ray X` through the installed console script says so with `@runs_command("X")`;
tests/unit/test_readme_commands.py fails when the README shows a sub-command that no such test runs.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = (REPO / "README.md", REPO / "cluster" / "README.md")
SHELL_FENCES = ("bash", "sh", "shell", "console", "")
PROGRAM = re.compile(r"^(?:\$\s+)?(?:\.venv/bin/)?rrm-ray\s+(.*)$")


def runs_command(*names: str) -> pytest.MarkDecorator:
    """Marks a test that runs these sub-commands through the installed `rrm-ray` script."""
    return pytest.mark.runs_command(*names)


def readme_command_lines(path: Path) -> list[str]:
    """Every `rrm-ray ...` command line in the shell blocks of a README, continuations joined,
    comments dropped, and `a | b | c` alternatives (`rrm-ray list | status JOB`) split apart."""
    lines: list[str] = []
    text = path.read_text()
    for lang, block in re.findall(r"```([^\n]*)\n(.*?)```", text, flags=re.S):
        if lang.strip() not in SHELL_FENCES:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            match = PROGRAM.match(line.strip())
            if not match:
                continue
            words = shlex.split(match.group(1), comments=True)
            lines += [" ".join(part) for part in _alternatives(words)]
    return lines


def _alternatives(words: list[str]) -> list[list[str]]:
    """`list | status JOB` names two sub-commands; `train cfg | tee log` pipes into another program."""
    parts: list[list[str]] = [[]]
    for i, word in enumerate(words):
        if word != "|":
            parts[-1].append(word)
        elif i + 1 < len(words) and words[i + 1] in subcommand_names():
            parts.append([])
        else:
            break
    return [p for p in parts if p]


def subcommand_names() -> set[str]:
    from rrm_ray.cli import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def readme_error_examples(path: Path) -> dict[str, str]:
    """`$ rrm-ray ...` lines of console blocks whose next line shows the error the user gets."""
    examples: dict[str, str] = {}
    for _, block in re.findall(r"```([^\n]*)\n(.*?)```", path.read_text(), flags=re.S):
        lines = block.splitlines()
        for line, shown in itertools.pairwise(lines):
            match = PROGRAM.match(line.strip())
            if match and line.strip().startswith("$") and shown.strip().startswith("config error:"):
                examples[" ".join(shlex.split(match.group(1), comments=True))] = shown.strip()
    return examples


def readme_subcommands(path: Path) -> set[str]:
    """Sub-commands named in shell blocks and in inline spans (`rrm-ray status|logs|stop JOB`)."""
    names = {shlex.split(line)[0] for line in readme_command_lines(path)}
    prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        match = re.match(r"\s*(?:\.venv/bin/)?rrm-ray\s+([a-z][a-z|-]*)", span)
        if match:
            names.update(match.group(1).split("|"))
    return names


def subcommands_with_tests(tests_dir: Path = REPO / "tests") -> dict[str, list[str]]:
    """Sub-command -> the test files whose tests are marked `@runs_command(...)` with it."""
    found: dict[str, list[str]] = {}
    for path in sorted(tests_dir.rglob("test_*.py")):
        for args in re.findall(r"@runs_command\(([^)]*)\)", path.read_text()):
            for name in re.findall(r"[\"']([a-z-]+)[\"']", args):
                found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found
