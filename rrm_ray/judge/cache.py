"""A cache of finished pairwise comparisons, so the same pair is never judged twice: not within a
knockout / ELO tournament, not across epochs that resample the same responses.

Keys are sha256 digests of (query, response_a, response_b, judge_settings_key), so the cache holds
no raw text as keys and lookups cost one hash. The settings key must change whenever a verdict
could (judge model or checkpoint, sampling parameters, votes, method); e.g.
``"rrm-7b@step300|t=0.6|p=1.0|max=8192|k=5|adaptive"``. Verdicts after a weight update are stale,
so the caller puts the checkpoint step into the key (or calls ``clear``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class CachedComparison:
    """The outcome of judging (a, b): winner, vote counts, and the judge's reasoning texts."""

    winner: Literal["a", "b"] | None
    wins_a: int
    wins_b: int
    traces: list[str] = field(default_factory=list)

    def inverted(self) -> CachedComparison:
        """The same comparison seen as (b, a)."""
        flip: dict[str | None, Literal["a", "b"] | None] = {"a": "b", "b": "a", None: None}
        return CachedComparison(flip[self.winner], self.wins_b, self.wins_a, list(self.traces))


def comparison_key(query: str, response_a: str, response_b: str, settings: str) -> str:
    """sha256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") cannot collide."""
    h = hashlib.sha256()
    for part in (query, response_a, response_b, settings):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class ComparisonCache:
    """In-memory comparison cache with optional LRU eviction (``max_entries``).

    ``get`` also answers the reversed pair (b, a) by inverting the stored outcome: the judge's
    verdict is about two responses, not about the order the caller happened to list them in
    (voting already covers both presentation orders).
    """

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and (not isinstance(max_entries, int) or max_entries < 1):
            raise ValueError(f"judge cache max_entries must be a positive int or None, got {max_entries!r}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedComparison] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: str, response_a: str, response_b: str, settings: str) -> CachedComparison | None:
        key = comparison_key(query, response_a, response_b, settings)
        found = self._entries.get(key)
        if found is None:
            key = comparison_key(query, response_b, response_a, settings)
            found = self._entries.get(key)
            found = found.inverted() if found is not None else None
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(
        self, query: str, response_a: str, response_b: str, settings: str, comparison: CachedComparison
    ) -> None:
        """Store the outcome of (a, b). A stored (b, a) entry is dropped: the newer result wins."""
        reverse = comparison_key(query, response_b, response_a, settings)
        key = comparison_key(query, response_a, response_b, settings)
        if reverse != key:
            self._entries.pop(reverse, None)
        self._entries[key] = comparison
        self._entries.move_to_end(key)
        if self.max_entries is not None:
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop all entries (e.g. after the judge's weights changed); counters are kept."""
        self._entries.clear()
