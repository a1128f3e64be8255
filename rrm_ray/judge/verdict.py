"""Parse a judge's output into a pairwise verdict, by one of two rules (``judge.verdict_rule``).

``release`` (the default): the released RRMs' own evaluation parser, as the authors' RewardBench fork
applies it (``scripts/run_generative.py`` with ``rewardbench/generative.py``'s ``process_judgement``
for ``--model_modifier Skywork``; tests/unit/test_verdict.py holds a table of cases worked through
that code). ``"<think>"`` is prepended to the output (the R1-Distill chat template opened the thinking
block), the span is the text between the first and the second ``</think>`` (no ``</think>``: no
verdict), the verdict is the content of the LAST ``\\boxed`` in that span (``rfind``: an unclosed or
malformed last box is no verdict, there is no fallback to an earlier one), and that content must be
exactly ``Assistant 1`` or ``Assistant 2`` (case, spaces and ``\\text{}`` all count). Everything else
is unparseable, which evaluation scores as half credit.

``lenient``: this project's earlier rule. After the first ``</think>`` (to the end of the text), the
last COMPLETE box counts (an unclosed trailing box is skipped), its content unwrapped from
``\\text{}``-like commands, spaces collapsed, case ignored.

One rule serves evaluation, tournaments, best-of-n and the judge-training reward
(``rrm_ray.rewards.judge_reward``), so a judge trained here earns +1 only for outputs the same rule
accepts. DirectJudge outputs (``require_think_close=False``) need no ``</think>``: without one, the
whole text is the span (the release has no direct mode; its box and match rules still apply).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

VerdictRule = Literal["release", "lenient"]
VERDICT_RULES = ("release", "lenient")  # judge.verdict_rule

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_BOX_OPEN = "\\boxed{"

# Formatting wrappers a judge may put around the verdict inside the box; they carry no meaning.
_WRAPPER_RE = re.compile(r"\\(?:textbf|textit|textrm|texttt|text|mathrm|mathbf)\s*\{")
_VERDICTS: dict[str, Literal[1, 2]] = {"assistant 1": 1, "assistant 2": 2}


def _match_brace(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_pos``, or None if it never closes."""
    depth = 0
    for i in range(open_pos, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` in ``text``, in order (nested braces balanced).

    A box that is still open at the end of the text (truncated generation) is skipped.
    """
    found: list[str] = []
    start = text.find(_BOX_OPEN)
    while start != -1:
        brace = start + len(_BOX_OPEN) - 1
        end = _match_brace(text, brace)
        if end is None:
            # Unbalanced: look for a later box that starts after this one's opening brace.
            start = text.find(_BOX_OPEN, brace + 1)
            continue
        found.append(text[brace + 1 : end])
        start = text.find(_BOX_OPEN, end + 1)
    return found


def normalize_box_content(content: str) -> str:
    """Strip formatting from a box's content: unwrap ``\\text{..}``-like commands, LaTeX spaces
    (``~``, ``\\ ``), surrounding and repeated whitespace. Returns the plain text, case kept."""
    out = content
    # Unwrap innermost-first until no wrapper is left; each pass removes at least one wrapper.
    while True:
        m = _WRAPPER_RE.search(out)
        if m is None:
            break
        end = _match_brace(out, m.end() - 1)
        if end is None:
            break
        out = out[: m.start()] + out[m.end() : end] + out[end + 1 :]
    out = out.replace("~", " ").replace("\\ ", " ")
    return " ".join(out.split())


def parse_verdict(
    text: str, rule: VerdictRule = "release", require_think_close: bool = True
) -> Literal[1, 2] | None:
    """Return 1 or 2 for "Assistant 1" / "Assistant 2", or None when the output is unparseable.

    Args:
        text: the generated text (the prompt's own ``<think>\\n`` is not part of it).
        rule: "release" (the released RRMs' evaluation parser) or "lenient" (see the module docstring).
        require_think_close: RRM mode. Without a ``</think>`` the judge never finished thinking,
            so any box is a guess made mid-thought: None. False for DirectJudge outputs.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_verdict: text must be str, got {type(text).__name__}")
    if rule == "release":
        return _parse_release(text, require_think_close)
    if rule != "lenient":
        raise ValueError(f"parse_verdict: rule must be one of {VERDICT_RULES}, got {rule!r}")
    close = text.find(THINK_CLOSE)
    if close == -1:
        if require_think_close:
            return None
        tail = text
    else:
        tail = text[close + len(THINK_CLOSE) :]
    boxes = boxed_contents(tail)
    if not boxes:
        return None
    return _VERDICTS.get(normalize_box_content(boxes[-1]).lower())


_RELEASE_VERDICTS: dict[str, Literal[1, 2]] = {"Assistant 1": 1, "Assistant 2": 2}


def _parse_release(text: str, require_think_close: bool) -> Literal[1, 2] | None:
    """The release's rule. Its code prepends ``<think>`` and takes ``split("</think>")[1]``: the
    prefix only lengthens element 0, so the span is the text between the first and the second
    ``</think>`` of the output itself."""
    parts = text.split(THINK_CLOSE)
    if len(parts) < 2:
        if require_think_close:
            return None
        span = text  # DirectJudge: nothing was thought, the whole text is the answer
    else:
        span = parts[1]
    content = release_last_box(span)
    return None if content is None else _RELEASE_VERDICTS.get(content)


def release_last_box(span: str) -> str | None:
    """The content of the LAST ``\\boxed`` in ``span`` as the release reads it, or None.

    From the last occurrence of ``\\boxed`` (whatever follows it), braces are counted until the
    count returns to zero (a ``}`` that closes nothing takes it below zero, as in the release's
    scan). The box found must start with ``\\boxed{`` exactly (``\\boxed {`` does not) and its
    content is everything inside the outer braces, nested braces included. No closing brace: None.
    """
    start = span.rfind("\\boxed")
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(span)):
        if span[i] == "{":
            depth += 1
        elif span[i] == "}":
            depth -= 1
            if depth == 0:
                box = span[start : i + 1]
                return box[len(_BOX_OPEN) : -1] if box.startswith(_BOX_OPEN) else None
    return None


def has_think_format(text: str, prompt_opened_think: bool) -> bool:
    """True when the output has a complete thinking block: ``<think>`` then ``</think>``.

    When the prompt already ends with ``<think>\\n`` (DeepSeek-R1-Distill chat templates add it, and
    ``render_judge_prompt`` adds it for the others) the opening tag is part of the prompt, not of
    the generated text, so the generation only needs a ``</think>``.
    """
    close = text.find(THINK_CLOSE)
    if close == -1:
        return False
    if prompt_opened_think:
        return True
    open_ = text.find(THINK_OPEN)
    return open_ != -1 and open_ < close


def verdict_score(verdict: Literal[1, 2] | None, label: Literal[1, 2]) -> float:
    """Evaluation credit: 1.0 right, 0.0 wrong, 0.5 unparseable (the paper's half credit, which is
    what a coin flip would earn, so a judge gains nothing by refusing to answer)."""
    if label not in (1, 2):
        raise ValueError(f"verdict_score: label must be 1 or 2, got {label!r}")
    if verdict is None:
        return 0.5
    if verdict not in (1, 2):
        raise ValueError(f"verdict_score: verdict must be 1, 2 or None, got {verdict!r}")
    return 1.0 if verdict == label else 0.0


# -- judge.verdict=choice_prob: the verdict as a probability instead of a sampled text ----------------
# The prompt ends with the fixed verdict prefix ``\boxed{Assistant `` (rrm_ray.judge.prompts), so ONE
# forward gives the log-probs of the next token; those of "1" and "2" are the judge's choice. vLLM
# returns exactly the requested tokens' log-probs (``SamplingParams.logprob_token_ids``), so there is
# no top-k cut-off that could drop one of them.
_CHOICE_PROB_TEXT = "P(Assistant 1)="


def choice_probability(logprobs: Mapping[int, float], choice_ids: Sequence[int]) -> float:
    """P("1") renormalised over {"1", "2"}, from ``logprobs`` (token id -> log-prob at the verdict
    position; other tokens may be present and are ignored). ``choice_ids``: the ids of "1" and "2".

    Renormalising drops the mass the judge put on any other token: a forced choice has only two
    answers. Computed as a logistic of the log-prob difference, so it is exact even when both
    log-probs are very negative (a judge that barely considers either digit).
    """
    if len(choice_ids) != 2 or choice_ids[0] == choice_ids[1]:
        raise ValueError(
            f"choice_probability: expected the two distinct ids of '1' and '2', got {choice_ids!r}"
        )
    missing = [t for t in choice_ids if t not in logprobs]
    if missing:
        raise ValueError(
            f"choice_probability: no log-prob for verdict token(s) {missing} among {sorted(logprobs)[:8]}; "
            "the engine must be asked for exactly these tokens (logprob_token_ids)"
        )
    one, two = (float(logprobs[t]) for t in choice_ids)
    if math.isnan(one) or math.isnan(two) or one == two == -math.inf:
        raise ValueError(f"choice_probability: log-probs of '1' and '2' are {one} and {two}: no choice")
    diff = two - one
    if diff > 0:  # the stable branch of 1 / (1 + exp(diff))
        e = math.exp(-diff)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(diff))


def choice_verdict(p_first: float) -> Literal[1, 2] | None:
    """What one presentation says: 1 if "1" is more likely, 2 if less, None at exactly 0.5."""
    return 1 if p_first > 0.5 else 2 if p_first < 0.5 else None


def describe_choice_probability(p_first: float) -> str:
    """The trace text of a choice-probability judgment; ``repr`` keeps the float exact, so
    ``parse_choice_probability`` (the comparison cache rebuilds traces from texts) gets it back."""
    return f"{_CHOICE_PROB_TEXT}{p_first!r}"


def parse_choice_probability(text: str) -> float | None:
    """The P("1") a ``describe_choice_probability`` text holds; None for any other text."""
    if not text.startswith(_CHOICE_PROB_TEXT):
        return None
    try:
        p = float(text[len(_CHOICE_PROB_TEXT) :])
    except ValueError:
        return None
    return p if 0.0 <= p <= 1.0 else None
