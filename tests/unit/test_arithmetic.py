"""The toy arithmetic task: deterministic, correct answers, disjoint splits, readable by load_prompts."""

from __future__ import annotations

import re

import pytest

from rrm_ray.data.arithmetic import INSTRUCTION, make_arithmetic_rows, make_split
from rrm_ray.data.io import write_jsonl
from rrm_ray.data.prompts import load_prompts
from rrm_ray.rewards.rules import arithmetic_reward

_EXPR = re.compile(r"What is (\d+) ([+\-×]) (\d+)\? ")


def _problem(row: dict) -> tuple[str, frozenset | tuple]:
    a, op, b = _EXPR.match(row["prompt"]).groups()
    return (op, frozenset((int(a), int(b))) if op in "+×" else (int(a), int(b)))


@pytest.mark.parametrize("kind", ["add", "mixed"])
def test_answers_are_correct(kind):
    for row in make_arithmetic_rows(300, seed=0, kind=kind, max_operand=30):
        m = _EXPR.match(row["prompt"])
        assert m, row["prompt"]
        a, op, b = int(m[1]), m[2], int(m[3])
        assert row["prompt"].endswith(INSTRUCTION)
        assert row["expression"] == f"{m[1]} {op} {m[3]}"
        assert int(row["answer"]) == {"+": a + b, "-": a - b, "×": a * b}[op]
        assert 1 <= a <= 30 and 1 <= b <= 30
        if op == "-":
            assert a >= b
        if op == "×":
            assert a <= 12 and b <= 12
        assert arithmetic_reward(rf"\boxed{{{row['answer']}}}", row["answer"]) == 1.0


def test_mixed_uses_every_operator():
    ops = {_problem(r)[0] for r in make_arithmetic_rows(100, seed=3, kind="mixed")}
    assert ops == {"+", "-", "×"}


def test_deterministic_in_seed():
    assert make_arithmetic_rows(50, seed=7) == make_arithmetic_rows(50, seed=7)
    assert make_arithmetic_rows(50, seed=7) != make_arithmetic_rows(50, seed=8)


@pytest.mark.parametrize("kind", ["add", "mixed"])
def test_problems_are_distinct_and_splits_disjoint(kind):
    train, held_out = make_split(200, 100, seed=1, kind=kind, max_operand=30)
    assert (len(train), len(held_out)) == (200, 100)
    train_problems = [_problem(r) for r in train]
    held_out_problems = [_problem(r) for r in held_out]
    assert len(set(train_problems)) == 200  # "3 + 5" and "5 + 3" count as one problem
    assert len(set(held_out_problems)) == 100
    assert not set(train_problems) & set(held_out_problems)
    # The training set does not depend on how many held-out rows are asked for.
    assert make_split(200, 10, seed=1, kind=kind, max_operand=30)[0] == train


def test_the_whole_pool_can_be_drawn():
    rows = make_arithmetic_rows(55, seed=0, max_operand=10)  # 10 * 11 / 2 unordered pairs
    assert len({_problem(r) for r in rows}) == 55


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 56, "max_operand": 10}, "only 55 exist"),
        ({"n": 5, "kind": "mul"}, "kind must be one of"),
        ({"n": 5, "max_operand": 0}, "max_operand >= 1"),
        ({"n": -1}, "n >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_arithmetic_rows(seed=0, **kwargs)


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_write_then_load(tmp_path, name):
    rows = make_arithmetic_rows(20, seed=0, kind="mixed")
    path = write_jsonl(rows, tmp_path / "sub" / name)
    loaded = load_prompts(path, require_answer=True)
    assert [(r.prompt, r.answer, r.extra["expression"]) for r in loaded] == [
        (r["prompt"], r["answer"], r["expression"]) for r in rows
    ]
    assert [r.row for r in loaded] == list(range(1, 21))
