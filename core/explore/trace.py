"""Counterexamples as a reader sees them: a numbered per-CPU timeline, and
traces saved as JSON Lines that ``mmugather explore --replay`` re-executes.

A trace file is one header line (``"trace": 1``: the scenario document, the
configuration, the choices of actor at each step, what failed), then one
line per event: the event with ``step``, ``actor`` and ``cpu`` added (step 0
is the machine's start), ending with a ``property_violation`` event.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from typing import IO, Any

import attrs
from mmugather.core.events import EVENTS_VERSION
from mmugather.core.explore.engine import Engine
from mmugather.core.explore.real import Config
from mmugather.core.explore.search import Counterexample, Step

TRACE_VERSION = 1
#: width of one actor's column
COLUMN = 34


class TraceError(Exception):
    """A trace file that cannot be replayed: ``file:line: reason``."""


def _hex(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "-"
    if isinstance(v, int):
        return hex(v) if v > 4096 else str(v)
    if isinstance(v, list | tuple):
        items = [_hex(x) for x in v[:4]]
        more = f", +{len(v) - 4}" if len(v) > 4 else ""
        return "[" + ", ".join(items) + more + "]"
    return str(v)


def _range(ev: dict[str, Any]) -> str:
    if ev.get("start") is None:
        return "all"
    return f"[{ev['start']:#x},{ev['end']:#x})"


def describe(ev: dict[str, Any]) -> str:
    """One event in a few words."""
    name = ev["event"]
    if name in ("syscall_enter", "syscall_return"):
        what = "" if ev["start"] is None else f" [{ev['start']:#x},{ev['end']:#x})"
        return f"{ev['op']}(){what} {'enters' if name == 'syscall_enter' else 'returns'}"
    if name == "tlb_invalidate":
        cpus = ",".join(str(c) for c in ev["cpus"])
        return (f"tlb_invalidate {ev['op']} {_range(ev)} cpus {cpus}"
                + (" waits" if ev["waits"] else ""))
    if name == "pte_clear":
        page = "" if ev["page"] is None else f" page {ev['page']:#x}"
        dirty = " dirty" if ev.get("dirty_file") else ""
        return f"pte_clear {ev['addr']:#x}{page}{dirty}"
    if name in ("ptl_lock", "ptl_unlock"):
        return f"{name} {ev['table']:#x}"
    if name == "user_access":
        page = "?" if ev["page"] is None else f"{ev['page']:#x}"
        return f"{ev['op']} {ev['addr']:#x} -> page {page} ({ev['via']})"
    if name == "violation":
        return f"checker: {ev['rule']}"
    fields = " ".join(f"{k}={_hex(v)}" for k, v in ev.items()
                      if k not in ("event", "step", "actor", "cpu"))
    return f"{name} {fields}".rstrip()


def _heading(eng: Engine, index: int) -> str:
    actor = eng.actors[index]
    return f"CPU{actor.cpu} {actor.name}" if actor.cpu is not None else actor.name


def timeline(eng: Engine, ce: Counterexample) -> str:
    """The counterexample as a table: one column per actor, one row per event,
    each step numbered."""
    moved = {step.actor for step in ce.steps}
    used = [a.index for a in eng.actors if a.name in moved]
    col = {eng.actors[index].name: i for i, index in enumerate(used)}
    heads = [_heading(eng, i) for i in used]
    sep = " | "
    lines = ["step" + sep + sep.join(f"{h:<{COLUMN}}" for h in heads).rstrip(),
             "-" * (4 + len(sep) * len(heads) + COLUMN * len(heads))]
    for step in ce.steps:
        first = True
        for ev in step.events:
            chunks = textwrap.wrap(describe(ev), COLUMN) or [""]
            for chunk in chunks:
                cells = [""] * len(heads)
                cells[col[step.actor]] = chunk
                number = f"{step.number:>4}" if first else "    "
                first = False
                lines.append(number + sep + sep.join(f"{c:<{COLUMN}}" for c in cells).rstrip())
        if not step.events:
            cells = [""] * len(heads)
            cells[col[step.actor]] = "(runs on)"
            lines.append(f"{step.number:>4}" + sep + sep.join(
                f"{c:<{COLUMN}}" for c in cells).rstrip())
    lines.append("")
    lines.append(f"after step {len(ce.steps)}: {ce.prop}")
    lines.extend("  " + line for line in textwrap.wrap(ce.message, 96))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Trace files
# ---------------------------------------------------------------------------


def header(cfg: Config, ce: Counterexample, source: str) -> dict[str, Any]:
    return {
        "trace": TRACE_VERSION,
        "events_version": EVENTS_VERSION,
        "source": source,
        "scenario": cfg.scenario.raw,
        "arch": cfg.arch,
        "strategy": cfg.strategy,
        "mutant": cfg.mutant,
        "fixes": list(cfg.fixes),
        "page_size": cfg.page_size,
        "cpus": cfg.cpus,
        "property": ce.prop,
        "message": ce.message,
        "run": ce.run,
        "choices": list(ce.choices),
    }


def write_trace(out: IO[str], cfg: Config, eng: Engine, ce: Counterexample,
                source: str) -> None:
    out.write(json.dumps(header(cfg, ce, source), separators=(",", ":")) + "\n")
    for ev in eng.init_events:
        out.write(json.dumps({"step": 0, "actor": "machine", "cpu": None, **ev},
                             separators=(",", ":")) + "\n")
    last = ce.steps[-1] if ce.steps else Step(0, "machine", None, ())
    for step in ce.steps:
        for ev in step.events:
            out.write(json.dumps({"step": step.number, "actor": step.actor, "cpu": step.cpu,
                                  **ev}, separators=(",", ":")) + "\n")
    out.write(json.dumps({"step": last.number, "actor": last.actor, "cpu": last.cpu,
                          "property": ce.prop, "message": ce.message,
                          "event": "property_violation"}, separators=(",", ":")) + "\n")


@attrs.frozen
class Trace:
    """What a trace file says to replay."""

    path: str
    config: Config
    choices: tuple[str, ...]
    prop: str
    run: int | None
    events: tuple[dict[str, Any], ...]


def read_trace(path: str) -> Trace:
    """Parse a trace file's header and event lines (TraceError if it is not one)."""
    from mmugather.core.explore.spec import parse_explore
    from mmugather.core.scenario import ScenarioError

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}:1: not UTF-8 text") from None
    if not lines:
        raise TraceError(f"{path}: empty: not a trace")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}:1: not JSON: {exc.msg}") from None
    if not isinstance(head, dict) or "trace" not in head:
        raise TraceError(f"{path}:1: not a trace (no \"trace\" header; save one with "
                         "'mmugather explore --events PATH')")
    if head["trace"] != TRACE_VERSION:
        raise TraceError(f"{path}:1: trace version {head['trace']!r}, this mmugather "
                         f"reads {TRACE_VERSION}")
    for key in ("scenario", "arch", "strategy", "mutant", "choices", "property"):
        if key not in head:
            raise TraceError(f"{path}:1: header has no {key!r}")
    choices = head["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise TraceError(f"{path}:1: choices must be a list of actor names")
    try:
        scenario = parse_explore(head["scenario"], head.get("source") or path,
                                 head.get("page_size") or 4096)
    except ScenarioError as exc:
        raise TraceError(f"{path}:1: its scenario: {exc}") from None
    events = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{n}: not JSON: {exc.msg}") from None
    fixes = head.get("fixes") or []
    if not isinstance(fixes, list) or not all(isinstance(f, str) for f in fixes):
        raise TraceError(f"{path}:1: fixes must be a list of commit ids")
    cfg = Config(scenario, head["arch"], strategy=head["strategy"], mutant=head["mutant"],
                 page_size=head.get("page_size"), cpus=head.get("cpus"), fixes=tuple(fixes))
    return Trace(path, cfg, tuple(choices), head["property"], head.get("run"), tuple(events))


def replay(eng: Engine, choices: Sequence[str]) -> Counterexample | None:
    """Re-execute ``choices``; the counterexample they lead to (None: no
    property fails at their end).  ValueError: a choice cannot be made."""
    from mmugather.core.explore.search import _counterexample, replay_choices

    path, st = replay_choices(eng, choices)
    violation = st.violation or st.checker
    if violation is None and not eng.enabled(st):
        violation = eng.terminal_violation(st)
    if violation is None:
        return None
    return _counterexample(eng, path, violation)
