r"""The demo's toy verifiable task: small arithmetic with the answer in ``\boxed{}``.

SmolLM2-135M-Instruct is weak: it gets 1-2 digit sums right only some of the time and rarely uses the
asked ``\boxed{}`` format, so the reward (`rrm_ray.rewards.rules.arithmetic_reward`) starts well
below its ceiling and climbs within a few GRPO steps, mostly by learning the format, then by fewer
slips on carries. Larger operands (or ``kind="mixed"``) make it harder.

A problem is an operator and two operands. Commutative problems are identified up to order
(``3 + 5`` and ``5 + 3`` are the same problem), so a held-out set never contains a training problem
written the other way round. Subtraction keeps results non-negative; multiplication uses operands up
to ``min(max_operand, 12)`` (times tables), because larger products are out of reach for the model.
"""

from __future__ import annotations

import random
from typing import Literal

INSTRUCTION = r"Give the final answer as \boxed{number}."
MAX_MULT_OPERAND = 12

Kind = Literal["add", "mixed"]
_OPS: dict[Kind, tuple[str, ...]] = {"add": ("+",), "mixed": ("+", "-", "*")}
_SYMBOL = {"+": "+", "-": "-", "*": "×"}


def _pool_size(op: str, max_operand: int) -> int:
    """Distinct problems of one operator with operands in 1..max_operand (unordered where commutative)."""
    m = min(max_operand, MAX_MULT_OPERAND) if op == "*" else max_operand
    return m * (m + 1) // 2  # unordered pairs for + and *, pairs a >= b for -


def _draw(rng: random.Random, op: str, max_operand: int) -> tuple[str, int, int]:
    """One problem in canonical form: larger operand first (sum/product order does not matter)."""
    hi = min(max_operand, MAX_MULT_OPERAND) if op == "*" else max_operand
    a, b = rng.randint(1, hi), rng.randint(1, hi)
    return op, max(a, b), min(a, b)


def question(expression: str) -> str:
    r"""The prompt for one expression: ``What is 23 + 58? Give the final answer as \boxed{number}.``"""
    return f"What is {expression}? {INSTRUCTION}"


def _row(op: str, a: int, b: int, rng: random.Random) -> dict:
    # Show commutative problems in a random order, so "the larger number first" is not a pattern.
    if op in "+*" and rng.random() < 0.5:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    expression = f"{a} {_SYMBOL[op]} {b}"
    return {
        "prompt": question(expression),
        "answer": str(value),
        "expression": expression,
    }


def make_arithmetic_rows(n: int, seed: int, kind: Kind = "add", max_operand: int = 50) -> list[dict]:
    """``n`` distinct problems, deterministic in ``seed``: rows ``{"prompt", "answer", "expression"}``.

    Operands are drawn uniformly from 1..``max_operand``; the operator uniformly from the ``kind``'s
    (``"add"``: +, ``"mixed"``: +, -, ×). Raises ValueError when fewer than ``n`` distinct problems exist.
    """
    if kind not in _OPS:
        raise ValueError(f"kind must be one of {sorted(_OPS)}, got {kind!r}")
    if n < 0 or max_operand < 1:
        raise ValueError(f"need n >= 0 and max_operand >= 1, got n={n}, max_operand={max_operand}")
    ops = _OPS[kind]
    available = sum(_pool_size(op, max_operand) for op in ops)
    if n > available:
        raise ValueError(
            f"asked for {n} distinct '{kind}' problems but only {available} exist with "
            f"max_operand={max_operand}; raise max_operand or ask for fewer"
        )
    rng = random.Random(seed)
    seen: set[tuple[str, int, int]] = set()
    rows: list[dict] = []
    while len(rows) < n:  # rejection sampling; fine because n <= available is checked above
        problem = _draw(rng, rng.choice(ops), max_operand)
        if problem not in seen:
            seen.add(problem)
            rows.append(_row(*problem, rng))
    return rows


def make_split(
    n_train: int, n_eval: int, seed: int, kind: Kind = "add", max_operand: int = 50
) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows with no problem in common (order of operands ignored)."""
    rows = make_arithmetic_rows(n_train + n_eval, seed, kind=kind, max_operand=max_operand)
    return rows[:n_train], rows[n_train:]
