"""The synthetic verifiable preference set: determinism, and answers checked from the question text.

The checks re-solve each problem from its wording alone (independent of the generator), so a
generator bug that writes a wrong "correct" solution is caught.
"""

from __future__ import annotations

import operator
import re

import pytest

from rrm_ray.data.io import write_jsonl
from rrm_ray.data.preference import load_preference_pairs
from rrm_ray.data.synthetic_pairs import KINDS, make_synthetic_pairs, pair_records

DIFFICULTIES = ("trivial", "easy", "medium", "hard")


def _solve(kind: str, q: str) -> int:
    """The answer, computed from the question text only."""
    if kind in ("column_addition", "obvious_sum"):
        a, b = map(int, re.search(r"(\d+) (?:\+|and) (\d+)", q).groups())
        return a + b
    if kind == "distributive_product":
        a, b = map(int, re.search(r"(\d+) (?:\*|by) (\d+)", q).groups())
        return a * b
    if kind == "linear_equation":
        a, op, b, c = re.search(r"(\d+)x ([+-]) (\d+) = (-?\d+)", q).groups()
        rhs = int(c) - int(b) if op == "+" else int(c) + int(b)
        assert rhs % int(a) == 0
        return rhs // int(a)
    if kind == "shopping":
        spent = sum(int(n) * int(p) for n, p in re.findall(r"(\d+) \w+ at (\d+) dollars each", q))
        return int(re.search(r"a (\d+)-dollar bill", q).group(1)) - spent
    if kind == "signed_change":
        x = int(re.search(r"(-\d+) (?:degrees|dollars|meters)", q).group(1))
        for verb, v in re.findall(r"(rose|fell|deposit of|payment of|went down) (\d+)", q):
            x += int(v) if verb in ("rose", "deposit of") else -int(v)
        return x
    raise AssertionError(kind)


def _final(text: str) -> int:
    lines = text.splitlines()
    m = re.fullmatch(r"Final answer: (-?\d+)", lines[-1])
    assert m, lines[-1]
    return int(m.group(1))


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_EQ = re.compile(r"(-?\d+(?: [-+*/] -?\d+)+) = (-?\d+)")


def _equations_hold(text: str) -> bool:
    """Every ``a op b [op c] = d`` written in the text is true (operations left to right)."""
    for lhs, rhs in _EQ.findall(text):
        tokens = lhs.split(" ")
        acc = int(tokens[0])
        for op, v in zip(tokens[1::2], tokens[2::2], strict=True):
            acc = _OPS[op](acc, int(v))
        if acc != int(rhs):
            return False
    return True


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_chosen_right_rejected_wrong(difficulty):
    pairs = make_synthetic_pairs(100, seed=11, difficulty=difficulty)
    for p in pairs:
        kind = p.source.removeprefix("synthetic/")
        truth = _solve(kind, p.query)
        assert _final(p.chosen) == truth, (p.query, p.chosen)
        assert _final(p.rejected) != truth, (p.query, p.rejected)
        assert _equations_hold(p.chosen), p.chosen
        ratio = len(p.rejected) / len(p.chosen)
        assert 0.85 <= ratio <= 1.15, (ratio, p.chosen, p.rejected)  # same template, similar length
        # Same template: the two solutions have the same number of lines.
        assert len(p.chosen.splitlines()) == len(p.rejected.splitlines())


def test_trivial_pairs_are_one_sum_off_by_a_large_amount():
    pairs = make_synthetic_pairs(40, seed=3, difficulty="trivial")
    assert {p.source for p in pairs} == {"synthetic/obvious_sum"}
    for p in pairs:
        assert len(p.query) < 20 and len(p.chosen.splitlines()) == 2
        assert 40 <= abs(_final(p.rejected) - _final(p.chosen)) <= 90
        assert _final(p.rejected) > 0


def test_rejected_slips_in_exactly_one_visible_way():
    # Except for the sign-slip of linear equations (true arithmetic on a wrongly moved term), the
    # rejected solution contains a false equation somewhere: the slip is checkable.
    for p in make_synthetic_pairs(60, seed=5):
        if p.source != "synthetic/linear_equation":
            assert not _equations_hold(p.rejected), p.rejected


def test_deterministic_and_prefix_stable():
    a = make_synthetic_pairs(30, seed=7, difficulty="hard")
    assert a == make_synthetic_pairs(30, seed=7, difficulty="hard")
    assert make_synthetic_pairs(12, seed=7, difficulty="hard") == a[:12]
    assert a != make_synthetic_pairs(30, seed=8, difficulty="hard")
    assert [p.row for p in a] == list(range(1, 31))


def test_kinds_are_varied():
    pairs = make_synthetic_pairs(50, seed=0)
    assert len(KINDS) >= 4
    assert {p.source for p in pairs} == {f"synthetic/{k}" for k in KINDS}
    assert len({p.query for p in pairs}) == 50
    assert all(p.chosen != p.rejected for p in pairs)


@pytest.mark.parametrize("name", ["syn.jsonl", "syn.jsonl.gz"])
def test_write_jsonl_round_trip(tmp_path, name):
    pairs = make_synthetic_pairs(10, seed=2)
    write_jsonl(pair_records(pairs), tmp_path / name)
    back, skipped = load_preference_pairs(tmp_path / name, "generic")
    assert skipped == 0
    assert [(p.query, p.chosen, p.rejected) for p in back] == [(p.query, p.chosen, p.rejected) for p in pairs]


@pytest.mark.parametrize(
    "kwargs, needle", [({"n": -1}, "n must be"), ({"n": 3, "difficulty": "nightmare"}, "difficulty")]
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        make_synthetic_pairs(seed=0, **kwargs)
