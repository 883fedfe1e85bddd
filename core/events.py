"""Structured events: the model's public output.

The engine holds ``emit(event, **fields)``, or ``None`` when nothing
listens; every emitting site tests for ``None`` first, so a run with events
off pays one attribute test per site and builds no dict.

Observers (the invariant checker, test collectors) are structlog processors
that see every event dict in order and pass it on unchanged.  The default
output, JSON Lines, is written directly: the observers, then
``orjson.dumps`` and a buffered write per event (:func:`make_emit`).  The
console format and any other processor go through a structlog chain, which
writes JSON Lines byte for byte the same (:func:`make_structlog_emit`).
Event names and fields are documented in ``docs/events.md`` and versioned
by :data:`EVENTS_VERSION`.

structlog is imported only when a structlog chain is built or an observer
may drop events: a plain replay does without it (a tenth of a second of
start-up).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import orjson

if TYPE_CHECKING:
    from mmugather.core.clearrun import ClearRun

#: Bumped on any change to an event's name or fields.
EVENTS_VERSION = 4

#: The events the replay contract (replay-v1) fixes.
CONTRACT_EVENTS = frozenset(
    {
        "return",
        "batch_alloc",
        "flush_cache_range",
        "tlb_flush",
        "mmu_notifier_invalidate",
        "rmap_remove",
        "free_pages",
        "free_page",
        "ipi_sync",
        "rcu_queue",
        "table_free",
        "warning",
        "bug",
    }
)

#: Events the model adds whenever events are on: one per gather, grace
#: period or rmap walk, so they cost nothing that matters; and the
#: per-range events of the ``ranges`` strategy (core/strategies.py).
MODEL_EVENTS = frozenset(
    {
        "gather_begin",
        "gather_end",
        "rcu_grace_period",
        "rmap_walk",
        "rmap_remove_range",
        "free_ranges",
    }
)

#: Events for readers of the queue; emitted only with ``detail`` on (they
#: cost a dict per page).
DETAIL_EVENTS = frozenset({"page_queued", "batch_next", "rmap_pend", "batch_list_free"})

#: Events the address-space callers add (``mmugather run``).
CALLER_EVENTS = frozenset(
    {
        "vma_unmap",
        "ptl_lock",
        "ptl_unlock",
        "pte_clear",
        "rmap_remove_now",
        "swap_free",
        "table_unhook",
        "folio_free",
        "deferred_split",
        "large_folio_rmap",
        "rmap_remove_ptes",
        "force_flush",
        "flush_tlb_batched_pending",
        "pmd_unshare",
        "i_mmap_lock",
        "i_mmap_unlock",
        "violation",
    }
)

#: Events for the hardware model (``core/hw``): what the CPUs run and what
#: each invalidation primitive removes.  Emitted by ``mmugather run`` (never
#: by a replay, whose output the contract fixes), once per run, gather,
#: flush or VMA: never per page.
HARDWARE_EVENTS = frozenset({"hw_config", "tlb_invalidate", "pte_clear_flush", "mm_exit",
                             "vma_end"})

#: Events of the explorer (``mmugather explore``, ``core/explore``): the
#: steps of its own actors (user threads, gup_fast, writeback, reclaim, the
#: allocator, a driver, a process sharing a PMD table), a zapping thread
#: entering and leaving its system call, and
#: the property a counterexample breaks.  Never in a run or a replay.
EXPLORER_EVENTS = frozenset({
    "syscall_enter", "syscall_return", "user_access", "user_fault", "gup_irq", "gup_walk",
    "gup_grab", "gup_recheck", "gup_put", "writeback_mkclean", "writeback_lock",
    "writeback_clean", "writeback_clear_dirty", "writeback_io", "writeback_evict",
    "reclaim_lock", "reclaim_unmap", "reclaim_flush", "page_reuse", "driver_unmap",
    "driver_free", "sharer_unmap", "sharer_reuse", "property_violation",
})

ALL_EVENTS = (CONTRACT_EVENTS | MODEL_EVENTS | DETAIL_EVENTS | CALLER_EVENTS | HARDWARE_EVENTS
              | EXPLORER_EVENTS)

EventDict = MutableMapping[str, Any]
Processor = Callable[[Any, str, EventDict], Any]
Emit = Callable[..., Any]


def _fan_out(observers: list[Processor]) -> Emit:
    """Observers only, no output: hand them the event dict directly.

    They are structlog processors and see the same dicts a structlog chain
    would give them; skipping the chain keeps a checked run fast.
    """
    if len(observers) == 1:
        (only,) = observers

        def emit_one(event: str, **fields: Any) -> None:
            fields["event"] = event
            only(None, "info", fields)

        return emit_one

    if len(observers) == 2:
        first, second = observers

        def emit_two(event: str, **fields: Any) -> None:
            fields["event"] = event
            first(None, "info", fields)
            second(None, "info", fields)

        return emit_two

    def emit(event: str, **fields: Any) -> None:
        fields["event"] = event
        for observer in observers:
            observer(None, "info", fields)

    return emit


def json_default(obj: Any) -> Any:
    """What orjson writes for an object it cannot serialize: the fallback
    of structlog's JSON renderer (``__structlog__()``, else ``repr()``)."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


_NEWLINE = orjson.OPT_APPEND_NEWLINE


def render(event_dict: EventDict) -> bytes:
    """One event as its JSON line: what both the direct writer and the
    structlog chain write."""
    return orjson.dumps(event_dict, json_default, _NEWLINE)


def _json_writer(file: IO[bytes], observers: list[Processor]) -> Emit:
    """``emit`` writing JSON Lines directly: the observers in order, as a
    structlog chain would run them (each gets what the one before returned;
    ``structlog.DropEvent`` drops the event), then ``orjson.dumps`` and the
    file's buffered ``write``."""
    write = file.write
    dumps = orjson.dumps
    default = json_default
    newline = _NEWLINE
    if not observers:

        def emit(event: str, **fields: Any) -> None:
            fields["event"] = event
            write(dumps(fields, default, newline))

        # The writer of the lines, for callers that write a line they
        # rendered once themselves (replay's ``return`` events, JsonRows).
        emit.raw_write = write  # type: ignore[attr-defined]
        return emit

    from structlog import DropEvent

    chain = tuple(observers)

    def emit_observed(event: str, **fields: Any) -> None:
        fields["event"] = event
        event_dict: Any = fields
        try:
            for observer in chain:
                event_dict = observer(None, "info", event_dict)
        except DropEvent:
            return
        write(dumps(event_dict, default, newline))

    return emit_observed


def raw_write(emit: Emit | None) -> Callable[[bytes], Any] | None:
    """The ``write`` behind a direct JSON Lines ``emit`` that nothing
    observes, else None: a line written there is exactly an event written
    through ``emit`` when it is the event's :func:`render`."""
    return getattr(emit, "raw_write", None)


#: One PTE cleared by ``zap_pte_range()``, the bulk form of a ``pte_clear``
#: event at level ``pte``: (addr, page or None, rmap, dirty_file), where
#: ``rmap`` is ``"batched"``, ``"now"`` or None (no page).
ClearRow = tuple[int, "int | None", "str | None", bool]


class PageRows(Protocol):
    """The two events emitted once per page, in a form the hot loops can
    feed without building a dict each time.

    ``pte_clear(row)`` is one ``pte_clear`` event (``ClearRow``);
    ``pte_clear_run(run)`` one per row of a :class:`ClearRun`, in order;
    ``rmap_remove(pages, vma_start)`` is one ``rmap_remove`` event per page,
    in order, for tlb_flush_rmaps() given the VMA at ``vma_start`` (the
    events do not carry it; bulk observers get it here, the checker
    otherwise from the address-space model).
    """

    @property
    def pte_clear(self) -> Callable[[ClearRow], Any]: ...

    @property
    def pte_clear_run(self) -> Callable[[ClearRun], Any]: ...

    @property
    def rmap_remove(self) -> Callable[[Sequence[int], int], Any]: ...


def clear_event(row: ClearRow) -> dict[str, Any]:
    """The ``pte_clear`` event dict a :data:`ClearRow` stands for (the same
    fields, in the same order, as ``zap_pte_range()`` emits them)."""
    addr, page, rmap, dirty_file = row
    if page is None:
        return {"addr": addr, "page": None, "level": "pte", "event": "pte_clear"}
    return {"addr": addr, "page": page, "level": "pte", "rmap": rmap,
            "dirty_file": dirty_file, "event": "pte_clear"}


class EventRows:
    """:class:`PageRows` for a stream that wants every event: each row is
    emitted as its event at once."""

    __slots__ = ("pte_clear", "pte_clear_run", "rmap_remove")

    def __init__(self, emit: Emit) -> None:
        def pte_clear(row: ClearRow) -> None:
            addr, page, rmap, dirty_file = row
            if page is None:
                emit("pte_clear", addr=addr, page=None, level="pte")
            else:
                emit("pte_clear", addr=addr, page=page, level="pte", rmap=rmap,
                     dirty_file=dirty_file)

        def pte_clear_run(run: ClearRun) -> None:
            rmap = run.rmap
            for addr, page in zip(run.addrs.tolist(), run.page_list, strict=True):
                emit("pte_clear", addr=addr, page=page, level="pte", rmap=rmap,
                     dirty_file=False)

        def rmap_remove(pages: Sequence[int], vma_start: int) -> None:
            for page in pages:
                emit("rmap_remove", page=page)

        self.pte_clear = pte_clear
        self.pte_clear_run = pte_clear_run
        self.rmap_remove = rmap_remove


#: An ``rmap_remove`` event's line for an integer page, as orjson renders it.
_RMAP_LINE = b'{"page":%d,"event":"rmap_remove"}\n'
_U64 = (1 << 64) - 1


class JsonRows:
    """:class:`PageRows` for a direct JSON Lines writer that nothing
    observes: each row is written as its event's line at once, rendered
    without a call through ``emit`` (the same bytes: an integer page is
    formatted as orjson formats it, anything else goes through
    :func:`render`)."""

    __slots__ = ("pte_clear", "pte_clear_run", "rmap_remove")

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        def pte_clear(row: ClearRow) -> None:
            write(render(clear_event(row)))

        def pte_clear_run(run: ClearRun) -> None:
            write(b"".join([render(clear_event(row)) for row in run.rows()]))

        def rmap_remove(pages: Sequence[int], vma_start: int) -> None:
            lines = []
            for page in pages:
                if type(page) is int and 0 <= page <= _U64:
                    lines.append(_RMAP_LINE % page)
                else:
                    lines.append(render({"page": page, "event": "rmap_remove"}))
            write(b"".join(lines))

        self.pte_clear = pte_clear
        self.pte_clear_run = pte_clear_run
        self.rmap_remove = rmap_remove


class BulkObserver(Protocol):
    """An observer that also takes the per-page events in bulk.

    ``pte_clear_rows(rows)`` must do what one ``pte_clear`` event per row
    would, in order; ``rmap_remove_pages(pages, vma_start)`` what one
    ``rmap_remove`` event per page would (``vma_start``: the VMA given to
    tlb_flush_rmaps(), as :class:`PageRows` says).
    """

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> Any: ...

    def pte_clear_rows(self, rows: list[ClearRow]) -> None: ...

    def rmap_remove_pages(self, pages: Sequence[int], vma_start: int) -> None: ...


class RowBus:
    """The event stream of a run that only observers watch (no log), when
    every observer takes the per-page events in bulk.

    Cleared PTEs wait in a list (``pte_clear`` is the list's ``append``) and
    reach the observers as one call just before the next event of any other
    kind, so every observer still sees every event in order (a PTE table's
    clears are always followed by its ``ptl_unlock``).  A checked teardown
    is dominated by these per-page events; handing them over a table at a
    time spares a dict, a call and a dispatch per page.
    """

    __slots__ = ("_observers", "_pending", "_runs", "pte_clear")

    def __init__(self, observers: Sequence[BulkObserver]) -> None:
        self._observers = tuple(observers)
        self._pending: list[ClearRow] = []
        self.pte_clear = self._pending.append
        # An observer may also take a ClearRun whole (``pte_clear_run``);
        # the others get its rows.
        self._runs: tuple[tuple[BulkObserver, Callable[[ClearRun], Any] | None], ...] = tuple(
            (o, getattr(o, "pte_clear_run", None)) for o in observers)

    def flush(self) -> None:
        """Hand over the cleared PTEs still waiting (the end of a run)."""
        if self._pending:
            self._drain()

    def _drain(self) -> None:
        rows = self._pending.copy()
        # Cleared first: an observer may emit (a violation) while it reads.
        self._pending.clear()
        for observer in self._observers:
            observer.pte_clear_rows(rows)

    def pte_clear_run(self, run: ClearRun) -> None:
        if self._pending:
            self._drain()
        rows: list[ClearRow] | None = None
        for observer, take in self._runs:
            if take is not None:
                take(run)
            else:
                if rows is None:
                    rows = run.rows()
                observer.pte_clear_rows(rows)

    def emit(self, event: str, **fields: Any) -> None:
        if self._pending:
            self._drain()
        fields["event"] = event
        for observer in self._observers:
            observer(None, "info", fields)

    def rmap_remove(self, pages: Sequence[int], vma_start: int) -> None:
        if self._pending:
            self._drain()
        for observer in self._observers:
            observer.rmap_remove_pages(pages, vma_start)


def make_stream(
    *,
    observers: list[Processor] | None = None,
    file: IO[bytes] | IO[str] | None = None,
    fmt: Literal["json", "console"] = "json",
) -> tuple[Emit | None, PageRows | None]:
    """:func:`make_emit` and the :class:`PageRows` that go with it.

    With no log and only observers that take bulk input (the checker and
    the run statistics), the per-page events travel in bulk
    (:class:`RowBus`); otherwise each is an event of its own.
    """
    observers = list(observers or ())
    if file is None and observers and all(
        hasattr(o, "pte_clear_rows") and hasattr(o, "rmap_remove_pages") for o in observers
    ):
        bus = RowBus(observers)  # type: ignore[arg-type]
        return bus.emit, bus
    emit = make_emit(observers=observers, file=file, fmt=fmt)
    return emit, page_rows(emit, None)


def page_rows(emit: Emit | None, rows: PageRows | None) -> PageRows | None:
    """The :class:`PageRows` of a stream: ``rows`` if it was built with the
    stream, else one that writes or emits each event."""
    if rows is not None:
        return rows
    if emit is None:
        return None
    write = raw_write(emit)
    return JsonRows(write) if write is not None else EventRows(emit)


def make_emit(
    *,
    observers: list[Processor] | None = None,
    file: IO[bytes] | IO[str] | None = None,
    fmt: Literal["json", "console"] = "json",
    processors: list[Processor] | None = None,
) -> Emit | None:
    """Build the ``emit`` callable for the engine, or ``None`` if nobody listens.

    ``file`` receives JSON Lines (``fmt="json"``, a binary file) or a readable
    rendering (``fmt="console"``, a text file).  ``observers`` run first, in
    order, on every event.  JSON Lines are written directly
    (:func:`_json_writer`); the console format, and ``processors`` (any
    structlog processors, run after the observers: they may change, add or
    drop events), go through structlog (:mod:`mmugather.core.events_structlog`).
    """
    observers = list(observers or ())
    if processors:
        if file is None:
            raise ValueError("processors need a file to write to")
    elif file is None:
        return _fan_out(observers) if observers else None
    elif fmt == "json":
        return _json_writer(file, observers)  # type: ignore[arg-type]
    from mmugather.core.events_structlog import make_structlog_emit

    emit: Emit = make_structlog_emit(file=file, observers=observers, processors=processors,
                                     fmt=fmt)
    return emit


class Collector:
    """An observer that keeps every event dict, in order (for tests and tools)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> EventDict:
        self.events.append(dict(event_dict))
        return event_dict

    def named(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] in names]

    def contract(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] in CONTRACT_EVENTS]


def stdout_binary() -> IO[bytes]:
    return sys.stdout.buffer
