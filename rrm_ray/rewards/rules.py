r"""Verifiable rule rewards: plain functions ``(response, answer) -> float``.

A rule looks at one generated response and the row's reference answer and returns a reward. Rules are
pure and cheap to call, so they can run in the worker processes of `rrm_ray.rewards.runner`, which adds
the per-item timeout (a rule itself never sets an alarm or a thread timer).

Conventions shared by every rule here:

- The final answer of a response is the content of its LAST complete ``\boxed{...}`` (braces balanced;
  a box still open at the end of a truncated response is skipped). Earlier boxes are drafts.
- A rule that needs a reference raises `MissingAnswerError` when the answer is None: a prompt without
  a reference is a data problem, and the runner counts and reports it instead of scoring it 0.
- Rules are looked up by name in `RULES`, or given as an import path ``"package.module:function"``
  so users can plug in their own (see `get_rule`); ``{"name": weight, ...}`` builds a weighted sum.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from math_verify import parse, verify

from rrm_ray.judge.verdict import VERDICT_RULES
from rrm_ray.rewards.judge_reward import judge_reward

RewardFn = Callable[[str, str | None], float]

_BOX_OPEN_RE = re.compile(r"\\boxed\s*\{")
_WS_RE = re.compile(r"\s+")
# An integer, optionally with a trailing ".0..." or a bare "." (a sentence period typed inside the box).
_INT_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+")


class RuleError(ValueError):
    """A rule was asked for that does not exist or cannot be imported."""


class MissingAnswerError(ValueError):
    """A rule that compares with a reference answer was called with ``answer=None``."""


# ---------------------------------------------------------------------------------------------------
# Box extraction


def _closing_brace(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_pos``, or None when it never closes."""
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxes(text: str) -> tuple[list[str], int]:
    r"""Contents of the complete top-level boxes in order, and how many ``\boxed{`` openings there are.

    A box nested inside another is part of the outer box's content, not a box of its own here.
    """
    contents: list[str] = []
    pos = 0
    while (m := _BOX_OPEN_RE.search(text, pos)) is not None:
        end = _closing_brace(text, m.end() - 1)
        if end is None:  # truncated box: try a later opening
            pos = m.end()
            continue
        contents.append(text[m.end() : end])
        pos = end + 1
    return contents, len(_BOX_OPEN_RE.findall(text))


def extract_boxed(text: str) -> str | None:
    r"""Content of the LAST complete ``\boxed{...}`` in ``text``, or None when there is none.

    Braces inside are balanced, so LaTeX such as ``\frac{1}{2}`` survives; ``\boxed {x}`` (a space
    before the brace) counts as LaTeX reads it the same. For nested boxes the outermost one is taken.

    >>> extract_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_boxed("no box here") is None
    True
    """
    contents, _ = _boxes(text)
    return contents[-1] if contents else None


def _require_answer(answer: str | None, rule: str) -> str:
    if answer is None:
        raise MissingAnswerError(f"rule '{rule}' needs a reference answer, but the row has none")
    return answer


# ---------------------------------------------------------------------------------------------------
# Rules


def _normalize_text(text: str) -> str:
    return _WS_RE.sub(" ", text.strip()).lower()


def exact_match_reward(response: str, answer: str | None) -> float:
    r"""1.0 when the final answer equals the reference after normalisation, else 0.0.

    The final answer is the last box's content, or the whole response when it has no box. Both sides
    are stripped, lower-cased and have whitespace runs collapsed to one space; nothing else is changed
    (use `math_verify_reward` for mathematical equivalence).

    >>> exact_match_reward(r"It is \boxed{  Paris }", "paris")
    1.0
    >>> exact_match_reward("Paris, France", "Paris")
    0.0
    """
    ref = _require_answer(answer, "exact_match")
    boxed = extract_boxed(response)
    pred = boxed if boxed is not None else response
    return 1.0 if _normalize_text(pred) == _normalize_text(ref) else 0.0


def boxed_format_reward(response: str, answer: str | None = None) -> float:
    r"""1.0 when the response has EXACTLY one ``\boxed{...}``, complete and non-empty; else 0.0.

    Exactly one, not "at least one": a policy rewarded for any box learns to box several candidates
    (hedging) or to leave a dangling ``\boxed{`` behind; both make the final answer ambiguous. A nested
    box counts as a second box. The reference answer is ignored.

    >>> boxed_format_reward(r"so the answer is \boxed{42}.", None)
    1.0
    >>> boxed_format_reward(r"\boxed{41} or maybe \boxed{42}", None)
    0.0
    """
    contents, openings = _boxes(response)
    return 1.0 if openings == 1 and len(contents) == 1 and contents[0].strip() else 0.0


def _parse_int(text: str) -> int | None:
    r"""An integer written in a box: tolerates spaces, ``$..$``, ``+``, ``42.``/``42.0`` and ``1,000``."""
    s = text.strip().strip("$").strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if not _INT_RE.fullmatch(s):
        return None
    return int(s.split(".")[0])


def arithmetic_reward(response: str, answer: str | None) -> float:
    r"""The toy task's reward: 1.0 when the last box holds the integer answer, else 0.0.

    A response without a box scores 0: writing the answer in the asked format is part of the task.
    The box may hold ``42``, `` 42 ``, ``$42$``, ``+42``, ``42.`` or ``42.0``; anything else (``x = 42``,
    ``42/1``) scores 0. Pure string and int work, so it costs microseconds.

    >>> arithmetic_reward(r"23 + 58 = \boxed{81}", "81")
    1.0
    >>> arithmetic_reward("23 + 58 = 81", "81")
    0.0
    """
    ref = _require_answer(answer, "arithmetic")
    try:
        target = int(ref.strip())
    except ValueError:
        raise ValueError(f"rule 'arithmetic' needs an integer reference answer, got {ref!r}") from None
    boxed = extract_boxed(response)
    if boxed is None:
        return 0.0
    return 1.0 if _parse_int(boxed) == target else 0.0


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its own timeout is off; that is our design, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_math_verify_ready = False


def _math_verify() -> tuple[Callable[..., list], Callable[..., bool]]:
    """Import math-verify on first use: it pulls in sympy (about a second) that other rules never need."""
    global _math_verify_ready

    if not _math_verify_ready:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        _math_verify_ready = True
    return parse, verify


def math_verify_reward(response: str, answer: str | None) -> float:
    r"""1.0 when math-verify judges the response's final answer equal to the reference, else 0.0.

    The prediction is the last box's content when there is a box; otherwise the whole response is
    handed to math-verify, which looks for an answer anchor ("the final answer is ...") or the last
    expression. The reference is read as LaTeX (wrapped in a box unless it already has ``\boxed`` or
    ``$``), so ``0.5``, ``\frac{1}{2}`` and ``1/2`` are all the same answer.

    math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread; they
    are switched off (``parsing_timeout=None``, ``timeout_seconds=None``) because
    `rrm_ray.rewards.runner.RewardRunner` bounds each call by running it in a process it can kill.
    A reference that math-verify cannot parse raises ValueError (a data error, counted by the runner).

    >>> math_verify_reward(r"so x = \boxed{\frac{1}{2}}", "0.5")
    1.0
    >>> math_verify_reward(r"\boxed{\frac{1}{3}}", "0.5")
    0.0
    """
    ref = _require_answer(answer, "math_verify")
    parse, verify = _math_verify()
    gold_text = ref if ("\\boxed" in ref or "$" in ref) else f"\\boxed{{{ref}}}"
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        raise ValueError(f"rule 'math_verify' could not parse the reference answer {ref!r}")
    boxed = extract_boxed(response)
    pred = parse(f"\\boxed{{{boxed}}}" if boxed is not None else response, parsing_timeout=None)
    if not pred:
        return 0.0
    return 1.0 if verify(gold, pred, timeout_seconds=None) else 0.0


# ---------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class JudgeVerdictRule:
    """Reward for training a judge: the answer is the label ("1" or "2", where the chosen response
    was shown); +correct for a well-formed right verdict, `wrong` / `format_fail` otherwise (the RRM
    paper uses +1 / -1 / -1). `verdict_rule` is the job's `judge.verdict_rule` (the reward client
    binds it, `with_verdict_rule`), so training reads verdicts as evaluation does."""

    mode: str = "rrm"
    correct: float = 1.0
    wrong: float = -1.0
    format_fail: float = -1.0
    verdict_rule: str = "release"

    def __call__(self, response: str, answer: str | None) -> float:

        label = _require_answer(answer, f"judge_{self.mode}")
        if label not in ("1", "2"):
            raise ValueError(f"judge label must be '1' or '2', got {label!r}")
        result = judge_reward(
            response,
            int(label),  # type: ignore[arg-type]
            prompt_opened_think=self.mode == "rrm",
            mode=self.mode,  # type: ignore[arg-type]
            correct_reward=self.correct,
            wrong_reward=self.wrong,
            format_fail_reward=self.format_fail,
            rule=self.verdict_rule,  # type: ignore[arg-type]
        )
        return result.reward


RULES: dict[str, RewardFn] = {
    "arithmetic": arithmetic_reward,
    "boxed_format": boxed_format_reward,
    "exact_match": exact_match_reward,
    "math_verify": math_verify_reward,
    "judge_rrm": JudgeVerdictRule("rrm"),
    "judge_direct": JudgeVerdictRule("direct"),
}
_PARAMETRISED = re.compile(r"^(judge_rrm|judge_direct)\((.*)\)$")


def _import_rule(path: str) -> RewardFn:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RuleError(f"rule import path {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RuleError(f"rule {path!r}: cannot import module '{module_name}' ({e})") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise RuleError(f"rule {path!r}: module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise RuleError(f"rule {path!r}: '{attr}' is a {type(fn).__name__}, expected a function")
    return fn


def get_rule(name: str) -> RewardFn:
    """The rule called ``name`` in `RULES`, or imported from ``"package.module:function"``.

    Raises `RuleError` listing the known names when ``name`` is neither.

    >>> get_rule("arithmetic") is arithmetic_reward
    True
    """
    if name in RULES:
        return RULES[name]
    match = _PARAMETRISED.match(name.replace(" ", ""))
    if match:  # e.g. "judge_rrm(correct=1,wrong=-1,format_fail=-0.5)"
        try:
            values: dict[str, Any] = {}
            for key, value in (kv.split("=") for kv in match.group(2).split(",") if kv):
                values[key] = value if key == "verdict_rule" else float(value)
            if values.get("verdict_rule", "release") not in VERDICT_RULES:
                raise ValueError(f"verdict_rule must be one of {', '.join(VERDICT_RULES)}")
            return dataclasses.replace(RULES[match.group(1)], **values)  # type: ignore[type-var]
        except (ValueError, TypeError) as exc:
            raise RuleError(
                f"rule {name!r}: expected {match.group(1)}(correct=X,wrong=Y,format_fail=Z) ({exc})"
            ) from None
    if ":" in name:
        return _import_rule(name)
    known = ", ".join(sorted(RULES))
    raise RuleError(
        f"unknown reward rule {name!r}; known rules: {known} (or an import path 'package.module:function')"
    )


@dataclass(frozen=True)
class WeightedSum:
    """A weighted sum of rules; a frozen dataclass so it pickles and prints readably."""

    parts: tuple[tuple[str, float, RewardFn], ...]

    def __call__(self, response: str, answer: str | None) -> float:
        return sum(w * fn(response, answer) for _, w, fn in self.parts)


def combined(name_weights: Mapping[str, float]) -> WeightedSum:
    r"""A rule that returns ``sum(weight * rule(response, answer))`` over the named rules.

    Names are anything `get_rule` accepts. A typical mix rewards correctness and, a little, the format:

    >>> rule = combined({"arithmetic": 1.0, "boxed_format": 0.1})
    >>> rule(r"\boxed{4}", "4"), rule(r"\boxed{5}", "4")
    (1.1, 0.1)
    """
    if not name_weights:
        raise RuleError("combined() needs at least one rule name with a weight")
    parts = []
    for name, weight in name_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise RuleError(f"weight of rule {name!r} must be a finite number, got {weight!r}")
        parts.append((name, float(weight), get_rule(name)))
    return WeightedSum(tuple(parts))


# Rules whose first call would pay a slow import; workers pay it before they report ready, so the first
# item they score is not charged for it (and does not time out because of it).
_WARM_UPS: dict[RewardFn, Callable[[], object]] = {math_verify_reward: _math_verify}


def warm_up(rule: RewardFn) -> None:
    """Do a rule's one-time set-up now (e.g. import math-verify) rather than on its first call."""
    parts = [fn for _, _, fn in rule.parts] if isinstance(rule, WeightedSum) else [rule]
    for fn in parts:
        if fn in _WARM_UPS:
            _WARM_UPS[fn]()


def with_verdict_rule(spec: str, verdict_rule: str) -> str:
    """A judge-training rule (`judge_rrm`, `judge_direct`, bare or with values) bound to the job's
    `judge.verdict_rule`: `judge_rrm` -> `judge_rrm(verdict_rule=release)`. Other rules are returned
    as they are."""
    match = _PARAMETRISED.match(spec.replace(" ", ""))
    if match:
        kept = [kv for kv in match.group(2).split(",") if kv and not kv.startswith("verdict_rule=")]
        return f"{match.group(1)}({','.join([*kept, f'verdict_rule={verdict_rule}'])})"
    if spec in ("judge_rrm", "judge_direct"):
        return f"{spec}(verdict_rule={verdict_rule})"
    return spec


def resolve_rule(spec: str | Mapping[str, float]) -> RewardFn:
    """A rule from a config value: a name or import path (`get_rule`), or ``{name: weight}`` (`combined`)."""
    if isinstance(spec, str):
        return get_rule(spec)
    if isinstance(spec, Mapping):
        return combined(spec)
    raise RuleError(f"a reward rule must be a name or a {{name: weight}} mapping, got {type(spec).__name__}")
