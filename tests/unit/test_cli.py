"""Command-line parsing: overrides anywhere among the options or after `--`, and every sub-command."""

from __future__ import annotations

import pytest

from rrm_ray.cli import build_parser
from rrm_ray.commands.options import split_overrides


def parse(*argv: str):
    return split_overrides(build_parser(), list(argv))


def test_overrides_after_options_and_after_double_dash_are_kept_in_order():
    args = parse(
        "submit",
        "configs/quickstart.yaml",
        "a.b=1",
        "--address",
        "http://x:8265",
        "--",
        "trainer.total_steps=5",
    )
    assert args.overrides == ["a.b=1", "trainer.total_steps=5"] and args.address == "http://x:8265"
    args = parse("submit", "configs/quickstart.yaml", "--address", "http://x:8265", "trainer.total_steps=5")
    assert args.overrides == ["trainer.total_steps=5"]


def test_option_values_that_look_like_overrides_stay_option_values():
    args = parse("submit", "c.yaml", "--env", "KEY=VALUE", "x.y=2")
    assert args.env == ["KEY=VALUE"] and args.overrides == ["x.y=2"]


def test_eval_overrides_between_options():
    args = parse(
        "eval",
        "--benchmark",
        "rewardbench",
        "--data",
        "d.jsonl",
        "--method",
        "direct",
        "judge.verdict=choice",
        "--votes",
        "2",
        "tracking.uri=sqlite:///other.db",
    )
    assert args.overrides == ["judge.verdict=choice", "tracking.uri=sqlite:///other.db"]
    assert args.votes == 2 and args.method == "direct"


@pytest.mark.parametrize("argv", [["train", "c.yaml", "--bogus"], ["train", "c.yaml", "not-an-override"]])
def test_anything_else_is_an_unrecognised_argument(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_commands_without_overrides_refuse_them(capsys):
    with pytest.raises(SystemExit):
        parse("list", "a=1")
    assert "unrecognized arguments: a=1" in capsys.readouterr().err


def test_verbose_becomes_its_config_key():
    from rrm_ray.commands.options import with_verbose

    assert with_verbose(parse("train", "c.yaml", "x=1", "--verbose"))[-1] == "cluster.stream_worker_logs=true"
    assert with_verbose(parse("dpo", "c.yaml")) == []


def test_a_replaced_key_says_what_replaced_it():
    from rrm_ray.config import ConfigError
    from rrm_ray.validation import load_config

    with pytest.raises(
        ConfigError, match=r"judge.colocate_with_rollout.*cluster.colocate=\[\[rollout,judge\]\]"
    ):
        load_config("configs/quickstart.yaml", ["judge.colocate_with_rollout=true"])
