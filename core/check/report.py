"""A violation, and how it reads: the rule, a message, the trail of events."""

from __future__ import annotations

from typing import Any

import attrs
from mmugather.core.check.rules import RULES
from mmugather.core.events import ClearRow, clear_event

#: How many events a report shows before the one that broke a rule.
TRAIL = 12

#: What the checker remembers of an event: its dict, or, for the per-page
#: events it took in bulk, a ``ClearRow`` (``pte_clear``) or a page
#: (``rmap_remove``), turned into the same dict only for a report.
Seen = dict[str, Any] | ClearRow | int


def as_event(item: Seen) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    if isinstance(item, tuple):
        return clear_event(item)
    return {"page": item, "event": "rmap_remove"}


@attrs.define(slots=True)
class Violation:
    rule: str
    message: str
    seq: int
    trail: list[dict[str, Any]]

    def render(self) -> str:
        lines = [f"[{self.rule}] {self.message}", f"  rule: {RULES.get(self.rule, '')}",
                 f"  after event #{self.seq}; the events that led to it:"]
        trail = self.trail
        k = 0
        while k < len(trail):
            ev = trail[k]
            run = k
            # Collapse a run of the same event (a table's worth of pte_clear).
            while run + 1 < len(trail) and trail[run + 1]["event"] == ev["event"] \
                    and trail[run + 1].get("#", 0) == trail[run].get("#", 0) + 1:
                run += 1
            lines.append(_line(ev))
            if run - k >= 2:
                lines.append(f"    {'':<8} ... {run - k - 1} more {ev['event']} ...")
            if run > k:
                lines.append(_line(trail[run]))
            k = run + 1
        return "\n".join(lines)


def _line(ev: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_short(v)}" for k, v in ev.items() if k not in ("event", "#"))
    return f"    #{ev.get('#', '?'):<7} {ev['event']:<24} {fields}"


def _short(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v > 4096:
        return hex(v)
    if isinstance(v, list) and len(v) > 6:
        return "[" + ", ".join(_short(x) for x in v[:6]) + f", ... {len(v)} in all]"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)
