"""A verifiable preference set the repository generates itself (no download).

Each pair is a small math problem with two worked solutions written from the same template: the
chosen one is right; the rejected one makes ONE subtle slip (a dropped carry, an off-by-one or
off-by-ten partial result, a sign flip) and then carries on consistently, so it looks just as
careful, has nearly the same length and ends in the same ``Final answer: N`` line. A judge can
only tell them apart by checking the work, which is what RRM training wants to reward.

Problem kinds (assigned round-robin, so every kind is equally represented):
``column_addition``, ``shopping`` (a word problem with change), ``signed_change`` (temperature,
bank balance or depth going below zero), ``distributive_product`` and ``linear_equation``.

Item ``i`` is generated from its own RNG seeded by ``(seed, difficulty, i)``: the output is fully
deterministic and ``make_synthetic_pairs(n)`` is a prefix of ``make_synthetic_pairs(n + k)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rrm_ray.data.preference import PreferencePair

Difficulty = Literal["trivial", "easy", "medium", "hard"]
_DIFFICULTIES = ("trivial", "easy", "medium", "hard")


@dataclass(frozen=True)
class _Problem:
    question: str
    right: list[str]  # the worked steps of the correct solution
    wrong: list[str]  # the same steps with one slip
    answer: int
    wrong_answer: int


def _solution(steps: list[str], answer: int) -> str:
    return "\n".join(steps) + f"\nFinal answer: {answer}"


# ----------------------------------------------------------------------------- column addition

_PLACES = ("Ones", "Tens", "Hundreds", "Thousands", "Ten-thousands", "Hundred-thousands", "Millions")


def _add_columns(a: int, b: int, drop_carry_at: int | None) -> tuple[list[str], int]:
    """Column-by-column addition; ``drop_carry_at`` forgets the carry into that column."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, digits, carry = [], [], 0
    for k in range(max(len(da), len(db))):
        x = int(da[k]) if k < len(da) else 0
        y = int(db[k]) if k < len(db) else 0
        if k == drop_carry_at:
            carry = 0
        s = x + y + carry
        expr = f"{x} + {y} + {carry} = {s}" if carry else f"{x} + {y} = {s}"
        carry, digit = divmod(s, 10)
        steps.append(f"{_PLACES[k]}: {expr}, write {digit}" + (", carry 1." if carry else "."))
        digits.append(str(digit))
    if carry:
        steps.append("Bring down the last carry: 1.")
        digits.append("1")
    total = int("".join(reversed(digits)))
    steps.append(f"So {a} + {b} = {total}.")
    return steps, total


def _column_addition(rng: random.Random, difficulty: str) -> _Problem:
    n = {"easy": 2, "medium": 4, "hard": 6}[difficulty]
    while True:
        a, b = rng.randrange(10 ** (n - 1), 10**n), rng.randrange(10 ** (n - 1), 10**n)
        # The slip forgets the carry into a column that receives one. Only columns whose digits
        # do not sum to 9 qualify, so the slip stays one lone mistake instead of cascading.
        lone = [
            k
            for k in range(1, n)
            if (a % 10**k + b % 10**k) >= 10**k and (a // 10**k) % 10 + (b // 10**k) % 10 != 9
        ]
        if lone:
            break
    right, total = _add_columns(a, b, None)
    wrong, wrong_total = _add_columns(a, b, rng.choice(lone))
    question = rng.choice(
        ["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum {a} + {b}, column by column."]
    ).format(a=a, b=b)
    return _Problem(question, right, wrong, total, wrong_total)


# ----------------------------------------------------------------------------- shopping

_NAMES = ("Maya", "Omar", "Lena", "Kofi", "Priya", "Tomas", "Aiko", "Sam")
_ITEMS = ("notebooks", "pens", "apples", "tickets", "candles", "mugs", "posters", "batteries")


def _slip(rng: random.Random, value: int) -> int:
    """An off-by-one or a wrong carry (off by ten). Off by ten only for values of 30 or more, so a
    slip never drops a digit ("14" -> "4") or makes the value non-positive, which would be glaring."""
    return value + rng.choice((-1, 1, -10, 10) if value >= 30 else (-1, 1) if value > 1 else (1,))


def _shopping(rng: random.Random, difficulty: str) -> _Problem:
    lo, hi = {"easy": (2, 9), "medium": (3, 25), "hard": (12, 99)}[difficulty]
    n_items = 3 if difficulty == "hard" else 2
    name = rng.choice(_NAMES)
    items = rng.sample(_ITEMS, n_items)
    qty = [rng.randint(2, 9) for _ in items]
    price = [rng.randint(lo, hi) for _ in items]
    total = sum(q * p for q, p in zip(qty, price, strict=True))
    bill = next(b for b in (20, 50, 100, 200, 500, 1000, 2000, 5000) if b >= total + 11)
    # Steps: one product per item, running sums, then the change. The slip hits one of the
    # computed values; every later step uses the slipped value with correct arithmetic.
    slip_at = rng.randrange(2 * n_items - 1)  # which computed value (products, then sums) slips

    def work(slip: int | None) -> tuple[list[str], int]:
        steps, k = [], 0
        costs = []
        for item, q, p in zip(items, qty, price, strict=True):
            c = q * p
            shown = _slip(rng, c) if k == slip else c
            steps.append(f"The {item} cost {q} * {p} = {shown} dollars.")
            costs.append(shown)
            k += 1
        running = costs[0]
        for c in costs[1:]:
            s = running + c
            shown = _slip(rng, s) if k == slip else s
            steps.append(f"Running total: {running} + {c} = {shown} dollars.")
            running = shown
            k += 1
        change = bill - running
        steps.append(f"The change is {bill} - {running} = {change} dollars.")
        return steps, change

    right, change = work(None)
    wrong, wrong_change = work(slip_at)
    parts = [f"{q} {item} at {p} dollars each" for item, q, p in zip(items, qty, price, strict=True)]
    bought = ", ".join(parts[:-1]) + " and " + parts[-1]
    question = (
        f"{name} buys {bought}, and pays with a {bill}-dollar bill. "
        f"How many dollars of change does {name} get?"
    )
    return _Problem(question, right, wrong, change, wrong_change)


# ----------------------------------------------------------------------------- signed change

_SIGNED_CONTEXTS = (
    (
        "At dawn the temperature was {s} degrees. {moves} What was the temperature at the end?",
        ("it rose {v} degrees", "it fell {v} degrees"),
        ("After rising {v} degrees", "After falling {v} degrees"),
        "degrees",
    ),
    (
        "A bank account's balance is {s} dollars. {moves} What is the balance now?",
        ("a deposit of {v} dollars came in", "a payment of {v} dollars went out"),
        ("After the deposit of {v}", "After the payment of {v}"),
        "dollars",
    ),
    (
        "A diver is at {s} meters relative to sea level. {moves} At what level is she now?",
        ("she rose {v} meters", "she went down {v} meters"),
        ("After rising {v} meters", "After going down {v} meters"),
        "meters",
    ),
)


def _signed_change(rng: random.Random, difficulty: str) -> _Problem:
    r = {"easy": 20, "medium": 200, "hard": 5000}[difficulty]
    template, say, step_say, unit = rng.choice(_SIGNED_CONTEXTS)
    start = -rng.randint(1, r)  # below zero, where sign slips happen
    signs = [1, -1, 1] if difficulty == "hard" else [1, -1]
    moves = [rng.randint(1, 2 * r) for _ in signs]
    # Flip the sign of one intermediate result that is not zero (a flip of 0 changes nothing).
    values, x = [], start
    for sgn, v in zip(signs, moves, strict=True):
        x += sgn * v
        values.append(x)
    flippable = [k for k, v in enumerate(values) if v != 0]

    def work(flip: int | None) -> tuple[list[str], int]:
        steps, x = [], start
        for k, (sgn, v) in enumerate(zip(signs, moves, strict=True)):
            y = x + sgn * v
            if k == flip:
                y = -y
            op = "+" if sgn > 0 else "-"
            steps.append(f"{step_say[sgn < 0].format(v=v)}: {x} {op} {v} = {y} {unit}.")
            x = y
        return steps, x

    right, answer = work(None)
    wrong, wrong_answer = work(rng.choice(flippable))
    said = [say[sgn < 0].format(v=v) for sgn, v in zip(signs, moves, strict=True)]
    moves_text = ", then ".join(said) + "."
    moves_text = moves_text[0].upper() + moves_text[1:]
    return _Problem(template.format(s=start, moves=moves_text), right, wrong, answer, wrong_answer)


# ----------------------------------------------------------------------------- distributive product


def _distributive_product(rng: random.Random, difficulty: str) -> _Problem:
    a_lo, a_hi, b_lo, b_hi = {
        "easy": (12, 49, 12, 29),
        "medium": (23, 99, 23, 99),
        "hard": (123, 999, 23, 99),
    }[difficulty]
    a = rng.randint(a_lo, a_hi)
    b = rng.choice([v for v in range(b_lo, b_hi + 1) if v % 10])
    tens, ones = b - b % 10, b % 10
    # A carry slip in one partial product: off by 100 in a * tens (its last digit is 0), off by
    # 10 in a * ones.
    which = rng.randrange(2)
    delta = rng.choice((-1, 1)) * (100 if which == 0 else 10)
    if (a * tens if which == 0 else a * ones) + delta <= 0:
        delta = -delta

    def work(slip: bool) -> tuple[list[str], int]:
        p1 = a * tens + (delta if slip and which == 0 else 0)
        p2 = a * ones + (delta if slip and which == 1 else 0)
        steps = [
            f"Split {b} into {tens} + {ones}.",
            f"{a} * {tens} = {p1}.",
            f"{a} * {ones} = {p2}.",
            f"Add the parts: {p1} + {p2} = {p1 + p2}.",
        ]
        return steps, p1 + p2

    right, answer = work(False)
    wrong, wrong_answer = work(True)
    question = rng.choice(["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute {a} * {b}."]).format(
        a=a, b=b
    )
    return _Problem(question, right, wrong, answer, wrong_answer)


# ----------------------------------------------------------------------------- linear equation


def _linear_equation(rng: random.Random, difficulty: str) -> _Problem:
    a_hi, x_lo, x_hi, k_hi = {"easy": (5, 1, 12, 5), "medium": (9, -12, 20, 9), "hard": (19, -50, 50, 20)}[
        difficulty
    ]
    a = rng.randint(2, a_hi)
    x = rng.randint(x_lo, x_hi)
    b = a * rng.randint(1, k_hi)  # a multiple of a, so the sign-slipped division still comes out whole
    plus = rng.random() < 0.5  # a*x + b = c  or  a*x - b = c
    c = a * x + b if plus else a * x - b
    lhs = f"{a}x {'+' if plus else '-'} {b}"

    def work(flip: bool) -> tuple[list[str], int]:
        # Moving b across: subtract it (plus form) or add it (minus form); the slip uses the wrong sign.
        add = (not plus) != flip
        rhs = c + b if add else c - b
        move = f"Subtract {b} from both sides" if plus else f"Add {b} to both sides"
        return [
            f"{move}: {a}x = {c} {'+' if add else '-'} {b} = {rhs}.",
            f"Divide both sides by {a}: x = {rhs} / {a} = {rhs // a}.",
        ], rhs // a

    right, answer = work(False)
    wrong, wrong_answer = work(True)
    question = rng.choice(["Solve for x: {e}.", "Find x if {e}.", "What value of x satisfies {e}?"]).format(
        e=f"{lhs} = {c}"
    )
    return _Problem(question, right, wrong, answer, wrong_answer)


_KINDS: dict[str, Callable[[random.Random, str], _Problem]] = {
    "column_addition": _column_addition,
    "shopping": _shopping,
    "signed_change": _signed_change,
    "distributive_product": _distributive_product,
    "linear_equation": _linear_equation,
}
KINDS: tuple[str, ...] = tuple(_KINDS)


def _obvious_sum(rng: random.Random) -> _Problem:
    """The easiest pair family: a one-line sum of two two-digit numbers against the same line with a
    result off by 40 to 90, so the wrong answer is far from anything the operands suggest. Short
    prompts, one token-level difference: what a 135M judge can in principle learn to separate."""
    a, b = rng.randint(10, 49), rng.randint(10, 49)
    total = a + b
    wrong = total + rng.choice((-1, 1)) * rng.randint(40, 90)
    if wrong <= 0:
        wrong = total + rng.randint(40, 90)
    return _Problem(f"What is {a} + {b}?", [f"{a} + {b} = {total}"], [f"{a} + {b} = {wrong}"], total, wrong)


def make_synthetic_pairs(n: int, seed: int = 0, difficulty: Difficulty = "medium") -> list[PreferencePair]:
    """``n`` verifiable preference pairs; ``source`` is ``"synthetic/<kind>"``, ``row`` is 1..n.

    ``difficulty`` scales the numbers (easy: about two digits, medium: up to four, hard: up to
    six) and, for ``hard``, adds a step to the shopping and signed-change problems. ``trivial`` is one
    family only, ``obvious_sum`` (`_obvious_sum`): a sum against one off by a large amount.
    """
    if n < 0:
        raise ValueError(f"make_synthetic_pairs: n must be >= 0, got {n}")
    if difficulty not in _DIFFICULTIES:
        raise ValueError(
            f"make_synthetic_pairs: difficulty must be one of {_DIFFICULTIES}, got {difficulty!r}"
        )
    pairs = []
    for i in range(n):
        kind = "obvious_sum" if difficulty == "trivial" else KINDS[i % len(KINDS)]
        rng = random.Random(f"{seed}:{difficulty}:{i}")
        p = _obvious_sum(rng) if difficulty == "trivial" else _KINDS[kind](rng, difficulty)
        assert p.answer != p.wrong_answer, f"{kind}: the slip did not change the answer"
        pairs.append(
            PreferencePair(
                query=p.question,
                chosen=_solution(p.right, p.answer),
                rejected=_solution(p.wrong, p.wrong_answer),
                source=f"synthetic/{kind}",
                row=i + 1,
            )
        )
    return pairs


def pair_records(pairs: Sequence[PreferencePair]) -> list[dict[str, str]]:
    """Pairs as records of the generic format (``prompt``, ``chosen``, ``rejected``, plus ``source``),
    read back by ``load_preference_pairs(path, "generic")``."""
    return [
        {"prompt": p.query, "chosen": p.chosen, "rejected": p.rejected, "source": p.source} for p in pairs
    ]
