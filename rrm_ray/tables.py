"""Plain-text tables for the console: one header, a rule, right-aligned columns."""

from __future__ import annotations

from collections.abc import Sequence


def aligned_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """The table's lines, each column as wide as its widest cell."""
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
