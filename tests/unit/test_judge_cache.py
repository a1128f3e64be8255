"""Comparison cache: hits and misses, reversed lookups, settings isolation, LRU eviction."""

from __future__ import annotations

import pytest

from rrm_ray.judge.cache import CachedComparison, ComparisonCache, comparison_key

S = "rrm-7b@step0|t=0.6|k=3|adaptive"
A_WINS = CachedComparison("a", 2, 1, ["trace one", "trace two", "trace three"])


def test_hit_and_miss_counting():
    cache = ComparisonCache()
    assert cache.get("q", "x", "y", S) is None
    cache.put("q", "x", "y", S, A_WINS)
    assert cache.get("q", "x", "y", S) == A_WINS
    assert cache.get("q", "x", "z", S) is None
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 1)


@pytest.mark.parametrize(
    "stored, seen_reversed",
    [
        (CachedComparison("a", 2, 1, ["t"]), CachedComparison("b", 1, 2, ["t"])),
        (CachedComparison("b", 0, 3), CachedComparison("a", 3, 0)),
        (CachedComparison(None, 1, 1), CachedComparison(None, 1, 1)),
    ],
)
def test_reversed_lookup_inverts(stored, seen_reversed):
    cache = ComparisonCache()
    cache.put("q", "x", "y", S, stored)
    assert cache.get("q", "y", "x", S) == seen_reversed
    assert cache.get("q", "x", "y", S) == stored
    assert cache.hits == 2 and len(cache) == 1


def test_put_reversed_replaces_older_entry():
    cache = ComparisonCache()
    cache.put("q", "x", "y", S, A_WINS)
    cache.put("q", "y", "x", S, CachedComparison("a", 3, 0))
    assert len(cache) == 1
    assert cache.get("q", "x", "y", S) == CachedComparison("b", 0, 3)


@pytest.mark.parametrize(
    "query, a, b, settings",
    [
        ("q", "x", "y", S + "|other"),  # different judge settings
        ("q2", "x", "y", S),  # different query
        ("q", "x", "y2", S),  # different response
    ],
)
def test_different_parts_miss(query, a, b, settings):
    cache = ComparisonCache()
    cache.put("q", "x", "y", S, A_WINS)
    assert cache.get(query, a, b, settings) is None


def test_key_is_unambiguous():
    assert comparison_key("ab", "c", "d", S) != comparison_key("a", "bc", "d", S)
    assert comparison_key("q", "x", "y", S) == comparison_key("q", "x", "y", S)
    assert len(comparison_key("q", "x", "y", S)) == 64


def test_lru_eviction():
    cache = ComparisonCache(max_entries=2)
    cache.put("q", "1", "2", S, A_WINS)
    cache.put("q", "3", "4", S, A_WINS)
    assert cache.get("q", "2", "1", S) is not None  # touch (1, 2), via the reversed lookup
    cache.put("q", "5", "6", S, A_WINS)  # evicts (3, 4), the least recently used
    assert len(cache) == 2
    assert cache.get("q", "3", "4", S) is None
    assert cache.get("q", "1", "2", S) is not None and cache.get("q", "5", "6", S) is not None


def test_bad_max_entries_and_clear():
    with pytest.raises(ValueError, match="max_entries"):
        ComparisonCache(max_entries=0)
    cache = ComparisonCache()
    cache.put("q", "x", "y", S, A_WINS)
    cache.clear()
    assert len(cache) == 0 and cache.get("q", "x", "y", S) is None
