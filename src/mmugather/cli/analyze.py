"""``mmugather analyze``: summaries of a JSON Lines event log, and a trace.

Reads what ``mmugather run --events`` or ``mmugather replay --events`` wrote.
The run counters come from the same observer ``run`` uses
(:class:`~mmugather.core.stats.RunStats`), so the numbers agree.  On top:
flushes per VMA, the queue length at each flush, the lengths of the
``tlb_flush_rmaps()`` walks, page tables freed by path; and ``--trace`` writes
a Chrome / Perfetto trace-event JSON timeline.

Every line is checked before it is counted (:data:`FIELDS`): a log that is
not mmugather's, or was cut or edited, is one ``FILE:LINE: reason``.  A
replay's log has none of the callers' events (no ``vma_unmap``), so the rows
counted from them (``stats.CALLER_ROWS``) are left out rather than shown as 0.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mmugather.cli import table
from mmugather.cli.common import STATUS_HELP, CliError, echo, outputs
from mmugather.cli.progress import Progress

if TYPE_CHECKING:
    from mmugather.core.stats import RunStats

try:
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads


class LogError(Exception):
    """``FILE:LINE: reason``."""


# Field types, as docs/events.md gives them.
INT, NAT, BOOL, STR, INTS, RANGES = "int", "nat", "bool", "str", "ints", "ranges"
_TYPE_NAMES = {INT: "an integer", NAT: "an integer >= 0", BOOL: "true or false",
               STR: "a string", INTS: "a list of integers", RANGES: "a list of [start, nr] pairs"}

#: event -> {field: type or the allowed strings}: every field this module and
#: RunStats read.  Other events and fields pass unchecked: they are not read.
FIELDS: dict[str, dict[str, Any]] = {
    "pte_clear": {"level": ("pte", "pmd", "pud", "huge")},
    "tlb_flush": {"scope": ("mm", "range")},
    "batch_alloc": {"what": STR, "ok": BOOL},
    "rmap_remove": {"page": INT},
    "rmap_remove_range": {"nr": NAT},
    "rmap_remove_ptes": {"nr": NAT},
    "large_folio_rmap": {"folio_atomics": NAT, "mapped": NAT, "folio": INT},
    "force_flush": {"full": BOOL},
    "rmap_walk": {"walked": NAT},
    "free_pages": {"pages": INTS},
    "free_ranges": {"ranges": RANGES},
    "folio_free": {"folios": INTS},
    "deferred_split": {"folio": INT},
    "rcu_queue": {"tables": INTS},
    "table_free": {"tables": INTS},
    "vma_unmap": {"kind": STR, "vma_start": INT},
    "flush_cache_range": {"start": INT, "end": INT},
    "ptl_lock": {"table": INT},
    "violation": {"rule": STR},
}
#: A range flush says where.
_RANGE_FIELDS = {"start": INT, "end": INT}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fits(kind: Any, v: Any) -> bool:
    if isinstance(kind, tuple):
        return isinstance(v, str) and v in kind
    if kind == INT:
        return _is_int(v)
    if kind == NAT:
        return _is_int(v) and v >= 0
    if kind == BOOL:
        return isinstance(v, bool)
    if kind == STR:
        return isinstance(v, str)
    if kind == INTS:
        return isinstance(v, list) and all(_is_int(x) for x in v)
    return isinstance(v, list) and all(
        isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and _is_int(p[1]) for p in v)


def _expected(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join(f'"{k}"' for k in kind)
    return _TYPE_NAMES[kind]


def check_event(ev: Any) -> str | None:
    """Why ``ev`` cannot be counted, or None."""
    if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
        return "not an event (an object with an 'event' name)"
    name = ev["event"]
    fields = FIELDS.get(name)
    if fields is None:
        return None
    if name == "tlb_flush" and ev.get("scope") == "range":
        fields = {**fields, **_RANGE_FIELDS}
    for field, kind in fields.items():
        if field not in ev:
            return f"{_cut(name)}: field {field!r} is missing"
        if not _fits(kind, ev[field]):
            return (f"{_cut(name)}: field {field!r} must be {_expected(kind)}, "
                    f"not {_cut(json.dumps(ev[field]), 40)}")
    return None


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def read_events(path: str) -> Iterator[dict[str, Any]]:
    """The event dicts of a JSON Lines log, validated line by line."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise LogError(f"{path}: cannot read: {exc.strerror}") from None
    with f:
        try:
            for lineno, raw in enumerate(f, 1):
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    ev = _loads(raw)
                except (ValueError, RecursionError) as exc:
                    raise LogError(f"{path}:{lineno}: not JSON: {_cut(str(exc), 120)}") from None
                why = check_event(ev)
                if why is not None:
                    raise LogError(f"{path}:{lineno}: {why}")
                yield ev
        except OSError as exc:
            raise LogError(f"{path}: cannot read: {exc.strerror}") from None


class Analysis:
    """Everything ``analyze`` reports, for one arch's events."""

    def __init__(self) -> None:
        # The engine is imported when a log is read, not with the parser.
        from mmugather.core.stats import RunStats

        self.stats: RunStats = RunStats()
        self.flushes_per_vma: Counter[str] = Counter()
        self.queue_at_flush: list[int] = []
        self.walks: Counter[int] = Counter()
        self.events = 0
        #: VMAs the callers unmapped: a run's log has them, a replay's none
        self.vma_unmaps = 0
        self._vma = "-"
        self._named = False
        self._queued = 0

    def feed(self, ev: dict[str, Any]) -> None:
        self.events += 1
        self.stats.feed(ev)
        name = ev["event"]

        if name == "vma_unmap":
            self.vma_unmaps += 1
            self._vma = f"{ev['kind']}@{ev['vma_start']:#x}"
            self._named = True
        elif name == "flush_cache_range":
            # A replay names its VMAs only through tlb_start_vma().
            if not self._named:
                self._vma = f"{ev['start']:#x}-{ev['end']:#x}"
        elif name == "gather_begin":
            self._vma = "fullmm" if ev.get("fullmm") else "-"
            self._named = False
            self._queued = 0
        elif name == "pte_clear":
            if ev.get("page") is not None:
                self._queued += 1
        elif name == "page_queued":
            self._queued += 1
        elif name == "return" and ev.get("op") == "__tlb_remove_page_size":
            # A replay without detail events: count the queueing calls.
            self._queued += 1
        elif name == "tlb_flush":
            self.flushes_per_vma[self._vma] += 1
            self.queue_at_flush.append(self._queued)
        elif name == "free_pages":
            self._queued = max(0, self._queued - len(ev["pages"]))
        elif name == "free_page":
            self._queued = max(0, self._queued - 1)
        elif name == "rmap_walk":
            self.walks[int(ev["walked"])] += 1

    @property
    def replay(self) -> bool:
        """A replay's log: no VMA was unmapped by the callers, so the rows
        counted from their events are not in it (``replay --check --detail``
        adds some of their events, not all)."""
        return self.vma_unmaps == 0

    def counted(self, key: str) -> bool:
        """Whether this log can count row ``key`` (a replay's log counts
        violations only when it has some: its checker may not have run)."""
        from mmugather.core.stats import CALLER_ROWS

        if not self.replay or key not in CALLER_ROWS:
            return True
        return key == "violations" and self.stats.c["violations"] > 0

    def as_json(self) -> dict[str, Any]:
        q = sorted(self.queue_at_flush)
        return {
            "log": "replay" if self.replay else "run",
            "events": self.events,
            "stats": {k: (v if self.counted(k) else None)
                      for k, v in self.stats.as_dict().items()},
            "flushes_per_vma": dict(self.flushes_per_vma),
            "queue_at_flush": {
                "flushes": len(q),
                "min": q[0] if q else 0,
                "median": q[len(q) // 2] if q else 0,
                "max": q[-1] if q else 0,
                "values": self.queue_at_flush,
            },
            "rmap_walk_lengths": {str(k): v for k, v in sorted(self.walks.items())},
            "tables_freed": {
                "as pages": self.stats.c["tables_page_batch"],
                "after RCU": self.stats.c["tables_rcu"],
                "IPI, then at once": self.stats.c["tables_ipi"],
                "at once": self.stats.c["tables_direct"],
            },
        }


def analyze(path: str) -> dict[str, Analysis]:
    """One Analysis per arch in the log (``arch`` field; "-" when absent)."""
    out: dict[str, Analysis] = {}
    for ev in read_events(path):
        arch = str(ev.get("arch", "-"))
        if arch not in out:
            out[arch] = Analysis()
        out[arch].feed(ev)
    return out


def _histogram(counts: Counter[int]) -> list[str]:
    if not counts:
        return ["    (no tlb_flush_rmaps walk)"]
    buckets: Counter[str] = Counter()
    for length, n in counts.items():
        if length == 0:
            key = "0"
        else:
            lo = 1 << (length.bit_length() - 1)
            key = f"{lo}-{2 * lo - 1}" if lo > 1 else "1"
        buckets[key] += n
    order = sorted(buckets, key=lambda k: int(k.split("-")[0]))
    top = max(buckets.values())
    return [f"    {k:>11}  {buckets[k]:>7,}  {'#' * max(1, 40 * buckets[k] // top)}"
            for k in order]


def render(results: dict[str, Analysis]) -> str:
    lines = []
    archs = list(results)
    if not archs:
        return "no events"
    from mmugather.core.stats import ROWS

    rows = [(k, label) for k, label in ROWS if any(r.counted(k) for r in results.values())]
    columns = [(a, [table.format_cell(k, results[a].stats.c[k]) if results[a].counted(k)
                    else "-" for k, _ in rows]) for a in archs]
    replays = [a for a in archs if results[a].replay]
    for a in replays:
        who = "the log" if a == "-" else a
        lines.append(f"{who}: a replay's (no vma_unmap events): the rows counted from the "
                     "callers' events (PTEs zapped, forced flushes, folios, violations) are left "
                     "out")
    lines.extend(table.render([label for _, label in rows], columns))
    lines.append("rows: docs/scenarios.md, \"The table\"; the rest: docs/analysis.md")
    for arch, res in results.items():
        data = res.as_json()
        lines.append(f"\n== {arch}: {res.events:,} events")
        lines.append("  TLB flushes per VMA:")
        for vma, n in res.flushes_per_vma.most_common(12):
            lines.append(f"    {vma:<32} {n:>6,}")
        if len(res.flushes_per_vma) > 12:
            lines.append(f"    … {len(res.flushes_per_vma) - 12} more VMAs (--json for all)")
        q = data["queue_at_flush"]
        lines.append(f"  queue length at each flush: {q['flushes']:,} flushes, min {q['min']:,}, "
                     f"median {q['median']:,}, max {q['max']:,}")
        lines.append("  tlb_flush_rmaps walk lengths:")
        lines.extend(_histogram(res.walks))
        lines.append("  page tables freed: " + ", ".join(
            f"{k} {v:,}" for k, v in data["tables_freed"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Trace export
# --------------------------------------------------------------------------

TRACKS = {"gather": 1, "ptl": 2, "tlb": 3, "rmap": 4, "free": 5, "tables": 6, "rcu": 7}


def to_trace(path: str) -> dict[str, Any]:
    """Chrome trace-event JSON: one process per arch, one thread (track) per
    actor; each event's position in the log is its timestamp (µs)."""
    out: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    open_slices: dict[tuple[int, int], list[str]] = {}

    def slice_(pid: int, tid: int, ts: int, name: str, args: dict[str, Any]) -> None:
        out.append({"name": name, "ph": "X", "ts": ts, "dur": 1, "pid": pid, "tid": tid,
                    "args": args})

    def begin(pid: int, tid: int, ts: int, name: str, args: dict[str, Any]) -> None:
        out.append({"name": name, "ph": "B", "ts": ts, "pid": pid, "tid": tid, "args": args})
        open_slices.setdefault((pid, tid), []).append(name)

    def end(pid: int, tid: int, ts: int) -> None:
        stack = open_slices.get((pid, tid))
        if stack:
            name = stack.pop()
            out.append({"name": name, "ph": "E", "ts": ts, "pid": pid, "tid": tid})

    ts = 0
    for ev in read_events(path):
        ts += 1
        arch = str(ev.get("arch", "mmugather"))
        pid = pids.get(arch)
        if pid is None:
            pid = pids[arch] = len(pids) + 1
            out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                        "args": {"name": arch}})
            for track, tid in TRACKS.items():
                out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                            "args": {"name": track}})
        name = ev["event"]
        args = {k: v for k, v in ev.items() if k not in ("event", "arch")}
        if name == "gather_begin":
            begin(pid, TRACKS["gather"], ts, "fullmm gather" if ev.get("fullmm") else "gather",
                  args)
        elif name == "gather_end":
            end(pid, TRACKS["gather"], ts)
        elif name == "ptl_lock":
            begin(pid, TRACKS["ptl"], ts, f"PTL {ev['table']:#x}", args)
        elif name == "ptl_unlock":
            end(pid, TRACKS["ptl"], ts)
        elif name in ("tlb_flush", "mmu_notifier_invalidate"):
            label = f"tlb_flush {ev['scope']}" if name == "tlb_flush" else name
            slice_(pid, TRACKS["tlb"], ts, label, args)
        elif name in ("rmap_walk",):
            slice_(pid, TRACKS["rmap"], ts, f"tlb_flush_rmaps ({ev['walked']})", args)
        elif name in ("free_pages", "free_page", "folio_free"):
            n = len(ev["pages"]) if name == "free_pages" else 1
            slice_(pid, TRACKS["free"], ts, f"{name} ({n})" if name != "folio_free" else name,
                   {"n": n} if name == "free_pages" else args)
        elif name in ("table_free", "table_unhook", "ipi_sync"):
            slice_(pid, TRACKS["tables"], ts, name, args)
        elif name in ("rcu_queue", "rcu_grace_period"):
            out.append({"name": name, "ph": "i", "s": "t", "ts": ts, "pid": pid,
                        "tid": TRACKS["rcu"], "args": args})
        elif name == "violation":
            out.append({"name": f"violation: {ev['rule']}", "ph": "i", "s": "p", "ts": ts,
                        "pid": pid, "tid": TRACKS["gather"], "args": args})
    for (pid, tid), stack in open_slices.items():
        while stack:
            out.append({"name": stack.pop(), "ph": "E", "ts": ts, "pid": pid, "tid": tid})
    return {"traceEvents": out, "displayTimeUnit": "ns",
            "otherData": {"source": path, "clock": "event sequence number"}}


def cmd_analyze(args: argparse.Namespace) -> int:
    # Opened first: a path that cannot be written is refused before the reading.
    out = outputs().open(args.trace, text=True) if args.trace else None
    try:
        with Progress(f"analyze {args.events}"):
            results = analyze(args.events)
            trace = to_trace(args.events) if out is not None else None
    except LogError as exc:
        raise CliError(str(exc)) from None
    if not results:
        raise CliError(f"{args.events}: no events in the log")
    if out is not None and trace is not None:
        json.dump(trace, out)
        outputs().close_files()
    if args.json:
        echo(json.dumps({arch: res.as_json() for arch, res in results.items()}, indent=2))
    else:
        echo(render(results))
        if trace is not None:
            echo(f"\ntrace: {args.trace} ({len(trace['traceEvents']):,} trace events; open it "
                 "in ui.perfetto.dev or chrome://tracing)")
    return 0


def add_analyze_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="summarise a JSON Lines event log; export a Perfetto/Chrome trace",
        description="Summarise an event log written by 'mmugather run --events' or "
        "'mmugather replay --events': the run table's counters (per arch when the log has "
        "an 'arch' field), TLB flushes per VMA, the queue length at each flush, a histogram "
        "of tlb_flush_rmaps() walk lengths, page tables freed by path (docs/analysis.md). "
        "A replay's log has no caller events: the rows counted from them are left out. "
        "Exit status: 0; " + STATUS_HELP + " A line that is not an event mmugather wrote is "
        "rejected as FILE:LINE: reason.",
    )
    p.add_argument("events", metavar="EVENTS", help="the JSON Lines event log")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--trace", metavar="PATH",
                   help="also write a Chrome/Perfetto trace-event JSON timeline here "
                   "(complete or not at all)")
    p.set_defaults(func=cmd_analyze)
