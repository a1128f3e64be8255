"""Preference pairs for judge training: readers for the common formats, and judge examples.

Every format becomes ``PreferencePair(query, chosen, rejected, source, row)``, where ``source`` is
the file the pair came from and ``row`` its 1-based row (see ``rrm_ray.data.io``).

Formats (``format=``):

- ``"generic"``: ``{"prompt": str, "chosen": str, "rejected": str}``; field names configurable.
- ``"skywork"`` (Skywork-Reward-Preference): ``chosen`` / ``rejected`` are full conversations
  ``[{"role", "content"}, ...]`` that end with the assistant reply being compared and share every
  message before it.
- ``"tulu"`` (allenai tulu-3 preference mixtures, UltraFeedback-binarized, TRL's conversational
  format): ``chosen`` / ``rejected`` are message lists. If they hold the whole conversation they are
  read like ``"skywork"`` (the ``prompt`` string, which repeats the first user turn, is then not
  needed). If they hold only the final assistant message, the conversation comes from ``prompt``
  (a string or a message list) or, failing that, ``messages``. Plain-string responses with a
  ``prompt`` are accepted too.
- ``"hh_rlhf"`` (Anthropic HH-RLHF): ``chosen`` / ``rejected`` are whole transcripts
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` that share every turn but the last assistant reply.

Query rendering, the same for every format: a single user message is the query as it is; a
longer conversation is rendered turn by turn as ``"User: ...\\n\\nAssistant: ..."`` (``System: `` for
a system message), so the judge sees the whole dialogue the replies answer. Responses are
stripped of surrounding whitespace.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rrm_ray.data.io import DataFormatError, read_records, require_str

PreferenceFormat = Literal["generic", "skywork", "tulu", "hh_rlhf"]
OnError = Literal["raise", "skip"]
_FORMATS = ("generic", "skywork", "tulu", "hh_rlhf")
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


class PreferenceDataError(DataFormatError):
    """A preference row cannot be turned into a (query, chosen, rejected) pair."""


@dataclass(frozen=True)
class PreferencePair:
    query: str
    chosen: str
    rejected: str
    source: str  # the file it was read from, or "synthetic/<kind>" for generated pairs
    row: int  # 1-based row in ``source``


@dataclass(frozen=True)
class JudgeExample:
    """A pair as the judge sees it: ``label`` is the position (1 or 2) of the preferred response."""

    query: str
    response_1: str
    response_2: str
    label: Literal[1, 2]
    pair_row: int
    source: str = ""


# ----------------------------------------------------------------------------- conversations


def render_conversation(messages: Sequence[dict[str, str]]) -> str:
    """The query text for a conversation (already validated): see the module docstring."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"].strip()
    return "\n\n".join(f"{_ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in messages)


def _messages(file: str, row: int, value: Any, field: str) -> list[dict[str, str]]:
    """Validate a chat message list; returns it as plain ``{"role", "content"}`` dicts."""
    if not isinstance(value, list):
        raise PreferenceDataError(
            file, f"expected a list of messages, got {type(value).__name__}", row, field
        )
    if not value:
        raise PreferenceDataError(file, "expected a non-empty list of messages, got []", row, field)
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise PreferenceDataError(file, f"expected a message object, got {type(m).__name__}", row, where)
        role, content = m.get("role"), m.get("content")
        if role not in _ROLE_NAMES:
            raise PreferenceDataError(
                file, f"role must be one of {sorted(_ROLE_NAMES)}, got {role!r}", row, where
            )
        if not isinstance(content, str):
            raise PreferenceDataError(
                file, f"content must be a string, got {type(content).__name__}", row, where
            )
        out.append({"role": role, "content": content})
    return out


def _final_reply(file: str, row: int, msgs: list[dict[str, str]], field: str) -> str:
    last = msgs[-1]
    if last["role"] != "assistant":
        raise PreferenceDataError(
            file, f"the last message must be from the assistant, got role {last['role']!r}", row, field
        )
    return last["content"]


def _check_query(file: str, row: int, prefix: list[dict[str, str]], field: str) -> None:
    if not prefix:
        raise PreferenceDataError(file, "no user message before the compared reply", row, field)
    if not any(m["role"] == "user" for m in prefix):
        raise PreferenceDataError(file, "the conversation has no user message", row, field)


def _split_conversations(
    file: str, row: int, rec: dict, chosen_f: str, rejected_f: str
) -> tuple[str, str, str]:
    for name in (chosen_f, rejected_f):
        if name not in rec:
            raise PreferenceDataError(file, "missing", row, name)
    chosen = _messages(file, row, rec[chosen_f], chosen_f)
    rejected = _messages(file, row, rec[rejected_f], rejected_f)
    c, r = _final_reply(file, row, chosen, chosen_f), _final_reply(file, row, rejected, rejected_f)
    if chosen[:-1] != rejected[:-1]:
        raise PreferenceDataError(
            file,
            f"'{chosen_f}' and '{rejected_f}' must share every message before the final reply",
            row,
            rejected_f,
        )
    _check_query(file, row, chosen[:-1], chosen_f)
    return render_conversation(chosen[:-1]), c, r


# ----------------------------------------------------------------------------- per-format rows


def _row_generic(file: str, row: int, rec: dict, f: dict[str, str]) -> tuple[str, str, str]:
    return (
        require_str(file, row, rec, f["prompt"]),
        require_str(file, row, rec, f["chosen"]),
        require_str(file, row, rec, f["rejected"]),
    )


def _row_skywork(file: str, row: int, rec: dict, f: dict[str, str]) -> tuple[str, str, str]:
    return _split_conversations(file, row, rec, f["chosen"], f["rejected"])


def _row_tulu(file: str, row: int, rec: dict, f: dict[str, str]) -> tuple[str, str, str]:
    cf, rf = f["chosen"], f["rejected"]
    if cf not in rec:
        raise PreferenceDataError(file, "missing", row, cf)
    if isinstance(rec[cf], str):  # plain-string responses: the generic shape
        return _row_generic(file, row, rec, f)
    chosen = _messages(file, row, rec[cf], cf)
    if len(chosen) > 1 or chosen[0]["role"] != "assistant":
        return _split_conversations(file, row, rec, cf, rf)
    # Only the final reply is in chosen/rejected: the conversation is in prompt or messages.
    if rf not in rec:
        raise PreferenceDataError(file, "missing", row, rf)
    rejected = _messages(file, row, rec[rf], rf)
    if len(rejected) != 1:
        raise PreferenceDataError(
            file,
            f"'{cf}' holds only the final reply, so '{rf}' must too; got {len(rejected)} messages",
            row,
            rf,
        )
    r = _final_reply(file, row, rejected, rf)
    pf = f["prompt"] if f["prompt"] in rec else f["messages"]
    if pf not in rec:
        raise PreferenceDataError(
            file,
            f"missing; with a single-message '{cf}' the conversation must be in '{f['prompt']}' or '{pf}'",
            row,
            pf,
        )
    if isinstance(rec[pf], str):
        query = require_str(file, row, rec, pf)
    else:
        prefix = _messages(file, row, rec[pf], pf)
        _check_query(file, row, prefix, pf)
        query = render_conversation(prefix)
    return query, chosen[0]["content"], r


# "\n\nHuman: " / "\n\nAssistant: " start each turn; the first turn may lack the leading newlines.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


def _hh_turns(file: str, row: int, text: str, field: str) -> list[dict[str, str]]:
    marks = list(_HH_TURN.finditer(text))
    if not marks:
        raise PreferenceDataError(file, "no '\\n\\nHuman: ' / '\\n\\nAssistant: ' turns found", row, field)
    if text[: marks[0].start()].strip():
        raise PreferenceDataError(file, "text before the first 'Human:' turn", row, field)
    turns = []
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        role = "user" if m.group(1) == "Human" else "assistant"
        turns.append({"role": role, "content": text[m.end() : end]})
    return turns


def _row_hh(file: str, row: int, rec: dict, f: dict[str, str]) -> tuple[str, str, str]:
    cf, rf = f["chosen"], f["rejected"]
    chosen = _hh_turns(file, row, require_str(file, row, rec, cf), cf)
    rejected = _hh_turns(file, row, require_str(file, row, rec, rf), rf)
    c, r = _final_reply(file, row, chosen, cf), _final_reply(file, row, rejected, rf)
    if chosen[:-1] != rejected[:-1]:
        raise PreferenceDataError(
            file, f"'{cf}' and '{rf}' transcripts must share every turn but the last assistant reply", row, rf
        )
    _check_query(file, row, chosen[:-1], cf)
    return render_conversation(chosen[:-1]), c, r


_READERS = {"generic": _row_generic, "skywork": _row_skywork, "tulu": _row_tulu, "hh_rlhf": _row_hh}


def load_preference_pairs(
    path: str | Path,
    format: PreferenceFormat = "generic",
    on_error: OnError = "raise",
    *,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    messages_field: str = "messages",
) -> tuple[list[PreferencePair], int]:
    """Read preference pairs from a JSON / JSONL(.gz) / Parquet file.

    Returns ``(pairs, skipped)``. A malformed row (missing field, wrong type, empty text,
    chosen == rejected, conversations that do not share a prefix) raises a
    :class:`PreferenceDataError` naming file, row and field with ``on_error="raise"``, and is
    counted in ``skipped`` with ``on_error="skip"``, as is a row that cannot be parsed (invalid JSON or
    UTF-8, nested too deeply). Unreadable files (damaged gzip data, say) always raise.
    ``prompt_field`` is unused by the skywork and hh_rlhf formats; ``messages_field`` is the tulu
    fallback when ``prompt_field`` is absent.
    """
    if format not in _FORMATS:
        raise ValueError(f"load_preference_pairs: format must be one of {_FORMATS}, got {format!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"load_preference_pairs: on_error must be 'raise' or 'skip', got {on_error!r}")
    fields = {
        "prompt": prompt_field,
        "chosen": chosen_field,
        "rejected": rejected_field,
        "messages": messages_field,
    }
    file, reader = str(path), _READERS[format]
    pairs: list[PreferencePair] = []
    unreadable: list[DataFormatError] | None = [] if on_error == "skip" else None
    records = read_records(path, unreadable)  # rows that cannot be parsed: raised, or collected here
    skipped = len(unreadable or [])
    for row, rec in records:
        try:
            query, chosen, rejected = reader(file, row, rec, fields)
            chosen, rejected = chosen.strip(), rejected.strip()
            if not chosen:
                raise PreferenceDataError(file, "the chosen reply is empty", row, chosen_field)
            if not rejected:
                raise PreferenceDataError(file, "the rejected reply is empty", row, rejected_field)
            if chosen == rejected:
                raise PreferenceDataError(
                    file, "chosen and rejected replies are identical", row, rejected_field
                )
            if not query.strip():
                raise PreferenceDataError(file, "the query is empty", row, prompt_field)
        except DataFormatError:  # row-level problems only; read_records has already succeeded
            if on_error == "raise":
                raise
            skipped += 1
            continue
        pairs.append(PreferencePair(query=query, chosen=chosen, rejected=rejected, source=file, row=row))
    return pairs, skipped


def _coin(seed: int, source: str, row: int) -> bool:
    """A fair, reproducible coin per (seed, file name, row), independent of order and filtering.

    The file's base name (not its full path) is hashed so that the same data gives the same
    placements on every machine.
    """
    key = f"{seed}\x00{Path(source).name}\x00{row}".encode()
    return hashlib.blake2b(key, digest_size=8).digest()[0] & 1 == 1


def to_judge_examples(pairs: Sequence[PreferencePair], seed: int) -> list[JudgeExample]:
    """Place each pair's chosen response first or second at random (to train away position bias).

    The placement of a pair depends only on ``seed``, its source file name and its row, so it is
    the same whatever the order, shuffling or subsetting of ``pairs``.
    """
    out = []
    for p in pairs:
        first = _coin(seed, p.source, p.row)
        r1, r2 = (p.chosen, p.rejected) if first else (p.rejected, p.chosen)
        out.append(JudgeExample(p.query, r1, r2, 1 if first else 2, p.row, p.source))
    return out
