"""Tables for people: within 100 columns (wrapped by column, the row labels
repeated), byte counts with units, ratios that keep small values visible."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The widest a table gets; more columns wrap into another block.
WIDTH = 100

#: Counters that are byte counts (shown with units; ``--json`` keeps bytes).
BYTE_KEYS = frozenset({"tlb_flush_bytes"})

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: int) -> str:
    """``98304`` -> ``96 KiB``; three significant digits at most."""
    if n == 0:
        return "0"
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    i = 0
    while value >= 1024 and i + 1 < len(_UNITS):
        value /= 1024
        i += 1
    text = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
    return f"{text} {_UNITS[i]}"


def format_cell(key: str, value: int) -> str:
    return format_bytes(value) if key in BYTE_KEYS else f"{value:,}"


def format_ratio(r: float | None) -> str:
    """A ratio to the baseline: two decimals, or two significant digits below
    0.01 (9/4,096 is ``0.0022``, not ``0.00``); ``-`` when there is none."""
    if r is None:
        return "-"
    if r == 0:
        return "0"
    if r < 0.01:
        # Two significant digits: 8/4,096 is 0.0020.
        return f"{r:.{1 - math.floor(math.log10(r))}f}"
    return f"{r:.2f}"


def render(labels: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]],
           width: int = WIDTH, title: str = "") -> list[str]:
    """Rows of ``labels`` with ``columns`` (header, cells) right-aligned,
    split into blocks of columns that fit ``width``; blocks are separated by
    an empty line and each repeats the labels.  ``title`` heads the label
    column of the first header line."""
    label_w = max(len(x) for x in (*labels, title))
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells in columns]
    blocks: list[list[int]] = []
    used = label_w
    for i, w in enumerate(widths):
        if not blocks or used + 2 + w > width:
            blocks.append([])
            used = label_w
        blocks[-1].append(i)
        used += 2 + w
    out: list[str] = []
    for b in blocks:
        if out:
            out.append("")
        out.append(f"{title:<{label_w}}" + "".join(
            f"  {columns[i][0]:>{widths[i]}}" for i in b))
        for r, label in enumerate(labels):
            out.append(f"{label:<{label_w}}" + "".join(
                f"  {columns[i][1][r]:>{widths[i]}}" for i in b))
    return out
