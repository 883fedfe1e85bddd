"""Structured events: the model's public output, emitted through structlog.

The engine holds ``emit``, a structlog bound method, or ``None`` when nothing
listens; every emitting site tests for ``None`` first, so a run with events
off pays one attribute test per site and builds no dict.

Observers (the invariant checker, test collectors) are structlog processors
placed before the renderer: they see every event dict in order and pass it
on unchanged.  Event names and fields are documented in ``docs/events.md``
and versioned by :data:`EVENTS_VERSION`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import IO, Any, Literal, Protocol

import structlog

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


class JsonLinesLogger:
    """A structlog logger writing rendered lines (the JSON renderer ends each
    with its newline), unflushed.

    structlog's own BytesLogger flushes per line; a replay writes millions of
    lines, so this one leaves buffering to the file object, and its methods
    are the file's ``write`` itself.
    """

    __slots__ = ("info", "msg")

    def __init__(self, file: IO[bytes]) -> None:
        self.info = self.msg = file.write


class TextLogger:
    """A structlog logger writing rendered text lines (the console format)."""

    __slots__ = ("_write",)

    def __init__(self, file: IO[str]) -> None:
        self._write = file.write

    def msg(self, message: str) -> None:
        self._write(message + "\n")

    info = msg


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


def _json_renderer() -> Processor:
    """structlog's JSON renderer, each event rendered as one line with its
    newline (orjson appends it without another copy of the bytes)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency
        import json

        def dumps(obj: Any, **kw: Any) -> bytes:
            return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

        return structlog.processors.JSONRenderer(serializer=dumps)

    dumps_line = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE

    class JsonLineRenderer(structlog.processors.JSONRenderer):
        """``JSONRenderer(serializer=orjson.dumps, option=OPT_APPEND_NEWLINE)``
        that calls orjson directly instead of spreading its keyword
        arguments again for every event."""

        def __init__(self) -> None:
            super().__init__(serializer=dumps_line, option=newline)
            #: structlog's fallback for objects orjson cannot serialize
            self.fallback = self._dumps_kw["default"]

        def __call__(self, logger: Any, name: str, event_dict: EventDict) -> bytes:
            return dumps_line(event_dict, default=self.fallback, option=newline)

    return JsonLineRenderer()


class EventLogger(structlog.BoundLoggerBase):
    """The bound logger of the event stream, the wrapper class of
    :func:`make_emit`.

    ``info(event, **fields)`` does what structlog's filtering bound logger
    does for an enabled level: the event dict is the bound context, then the
    fields, then ``event``; the processors run in order (one may raise
    ``DropEvent``); the last one's result goes to the wrapped logger's
    ``info``.  It leaves out what events never use and what would cost a
    replay most of its time per event: level filtering (every event is
    wanted), ``%``-interpolation of positional arguments, the logger method
    lookup by name, and the dispatch on the result's type (the renderers here
    return ``bytes`` or ``str``).
    """

    def __init__(self, logger: Any, processors: Iterable[Any], context: dict[str, Any]) -> None:
        super().__init__(logger, processors, context)
        #: the processor chain, fixed for this logger
        self._chain: tuple[Processor, ...] = tuple(processors)
        #: the chain's only processor (the renderer of a plain replay), or None
        self._only: Processor | None = self._chain[0] if len(self._chain) == 1 else None

    def info(self, event: str, **fields: Any) -> Any:
        event_dict: Any = fields
        if self._context:
            event_dict = self._context.copy()
            event_dict.update(fields)
        event_dict["event"] = event
        logger = self._logger
        only = self._only
        try:
            if only is not None:
                return logger.info(only(logger, "info", event_dict))
            for processor in self._chain:
                event_dict = processor(logger, "info", event_dict)
        except structlog.DropEvent:
            return None
        return logger.info(event_dict)

    msg = info


#: One PTE cleared by ``zap_pte_range()``, the bulk form of a ``pte_clear``
#: event at level ``pte``: (addr, page or None, rmap, dirty_file), where
#: ``rmap`` is ``"batched"``, ``"now"`` or None (no page).
ClearRow = tuple[int, "int | None", "str | None", bool]


class PageRows(Protocol):
    """The two events emitted once per page, in a form the hot loops can
    feed without building a dict each time.

    ``pte_clear(row)`` is one ``pte_clear`` event (``ClearRow``);
    ``rmap_remove(pages, vma_start)`` is one ``rmap_remove`` event per page,
    in order, for tlb_flush_rmaps() given the VMA at ``vma_start`` (the
    events do not carry it; bulk observers get it here, the checker
    otherwise from the address-space model).
    """

    @property
    def pte_clear(self) -> Callable[[ClearRow], Any]: ...

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

    __slots__ = ("pte_clear", "rmap_remove")

    def __init__(self, emit: Emit) -> None:
        def pte_clear(row: ClearRow) -> None:
            addr, page, rmap, dirty_file = row
            if page is None:
                emit("pte_clear", addr=addr, page=None, level="pte")
            else:
                emit("pte_clear", addr=addr, page=page, level="pte", rmap=rmap,
                     dirty_file=dirty_file)

        def rmap_remove(pages: Sequence[int], vma_start: int) -> None:
            for page in pages:
                emit("rmap_remove", page=page)

        self.pte_clear = pte_clear
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

    __slots__ = ("_observers", "_pending", "pte_clear")

    def __init__(self, observers: Sequence[BulkObserver]) -> None:
        self._observers = tuple(observers)
        self._pending: list[ClearRow] = []
        self.pte_clear = self._pending.append

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
    return emit, (EventRows(emit) if emit is not None else None)


def page_rows(emit: Emit | None, rows: PageRows | None) -> PageRows | None:
    """The :class:`PageRows` of a stream: ``rows`` if it was built with the
    stream, else one that emits each event through ``emit``."""
    if rows is not None:
        return rows
    return EventRows(emit) if emit is not None else None


def make_emit(
    *,
    observers: list[Processor] | None = None,
    file: IO[bytes] | IO[str] | None = None,
    fmt: Literal["json", "console"] = "json",
) -> Emit | None:
    """Build the ``emit`` callable for the engine, or ``None`` if nobody listens.

    ``file`` receives JSON Lines (``fmt="json"``, a binary file) or a readable
    rendering (``fmt="console"``, a text file).  ``observers`` run first, in
    order, on every event.
    """
    observers = list(observers or ())
    if file is None and not observers:
        return None
    if file is None:
        return _fan_out(observers)
    processors: list[Processor] = list(observers)
    logger: Any
    if fmt == "json":
        processors.append(_json_renderer())
        logger = JsonLinesLogger(file)  # type: ignore[arg-type]
    else:
        colors = bool(getattr(file, "isatty", lambda: False)())
        processors.append(
            structlog.dev.ConsoleRenderer(colors=colors, pad_event_to=24, sort_keys=False)
        )
        logger = TextLogger(file)  # type: ignore[arg-type]
    bound = structlog.wrap_logger(
        logger,
        processors=processors,
        wrapper_class=EventLogger,
        cache_logger_on_first_use=True,
    )
    return bound.info  # type: ignore[no-any-return]


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
