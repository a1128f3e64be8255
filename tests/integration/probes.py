"""Stand-in actors for placement tests: they replace vLLM engines and torch ranks (which need a GPU)
and only report where they run. Workers import this module by name, so it stays small: nothing of
pytest or the test modules (an actor that imports them starts seconds slower)."""

from __future__ import annotations

from rrm_ray.actor_group import Worker


class Probe(Worker):
    """A placement probe: starts in a blink and only answers `node_info`, `free_port` and `ping`."""
