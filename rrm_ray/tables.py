"""Plain-text tables for the console: every table rrm-ray prints goes through `aligned_table`."""

from __future__ import annotations

from collections.abc import Sequence


def aligned_table(
    head: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    align: str = "right",
    rule: bool = True,
    label_first: bool = False,
) -> list[str]:
    """The table's lines, each column as wide as its widest cell: numbers right-aligned under a rule
    (the default), or text left-aligned without one (`align="left", rule=False`: plan's layout
    tables); `label_first`: the first column, the rows' names, left-aligned whatever `align` says."""
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    pads = [str.rjust if align == "right" else str.ljust] * len(widths)
    if label_first:
        pads[0] = str.ljust
    lines = [
        "  ".join(pad(c, w) for pad, c, w in zip(pads, line, widths, strict=True)).rstrip()
        for line in [head, *body]
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
