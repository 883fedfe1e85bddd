"""Run statistics, counted from the event stream.

The same observer serves ``mmugather run`` (live) and ``mmugather analyze``
(over a JSON Lines log), so the two always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmugather.core.aspace import TABLE_ID_BASE
from mmugather.core.clearrun import ClearRun
from mmugather.core.events import ClearRow

#: (key, label) in the order the run table prints them.
ROWS: list[tuple[str, str]] = [
    ("ptes_zapped", "PTEs zapped"),
    ("pmds_zapped", "huge PMDs zapped"),
    ("huge_zapped", "hugetlb entries zapped"),
    ("swap_freed", "swap entries freed"),
    ("gathers", "gathers"),
    ("tlb_flush_range", "TLB flushes: range"),
    ("tlb_flush_mm", "TLB flushes: whole mm"),
    ("tlb_flush_bytes", "bytes covered by range flushes"),
    ("mmu_notifier", "MMU notifier invalidates"),
    ("forced_flushes", "forced flushes in zap_pte_range"),
    ("forced_full", "forced flushes: queue full"),
    ("batch_pages", "batch pages allocated"),
    ("batch_alloc_failed", "batch allocations failed"),
    ("rmap_now", "rmaps removed at once"),
    ("rmap_batched", "rmaps removed by tlb_flush_rmaps"),
    ("rmap_calls", "rmap removal calls"),
    ("mapcount_atomics", "mapcount atomic updates"),
    ("rmap_walked", "queue entries walked by tlb_flush_rmaps"),
    ("rmap_flushes", "tlb_flush_rmaps calls that walked"),
    ("pages_freed", "pages freed"),
    ("free_calls", "page frees (calls)"),
    ("folio_puts", "folio reference drops (calls)"),
    ("folios_freed", "folios freed"),
    ("deferred_split", "folios queued for deferred split"),
    ("deferred_split_spurious", "deferred splits, spurious"),
    ("tables_page_batch", "page tables freed: as pages"),
    ("tables_rcu", "page tables freed: after RCU"),
    ("tables_ipi", "page tables freed: IPI, then at once"),
    ("tables_direct", "page tables freed: at once"),
    ("violations", "invariant violations"),
]


#: Rows counted from the address-space callers' events alone (``CALLER_EVENTS``):
#: a replay's log has none of them, so for it these rows would be 0 whatever
#: happened.  "violations" needs the checker, which a log does not record.
CALLER_ROWS = frozenset({
    "ptes_zapped", "pmds_zapped", "huge_zapped", "swap_freed", "forced_flushes",
    "forced_full", "rmap_now", "folios_freed", "deferred_split", "deferred_split_spurious",
    "violations",
})

#: pte_clear level -> row; "pud" comes only from ``replay --check``, whose log
#: shows no caller rows.
_LEVEL_KEY = {"pte": "ptes_zapped", "pmd": "pmds_zapped", "huge": "huge_zapped"}


class RunStats:
    """Counts what ``ROWS`` lists; an event observer (structlog processor)."""

    def __init__(self) -> None:
        self.c: dict[str, int] = dict.fromkeys((k for k, _ in ROWS), 0)
        self._rcu_tables: set[int] = set()
        self._after_ipi = False
        #: level of the last pte_clear: its rmap_remove_now follows it
        self._clear_level = "pte"
        #: folios this gather put on the deferred split queue, not yet seen
        #: fully unmapped
        self._split_queue: set[int] = set()
        self._dispatch = {
            "pte_clear": self._pte_clear,
            "swap_free": self._swap_free,
            "gather_begin": self._gather,
            "tlb_flush": self._tlb_flush,
            "mmu_notifier_invalidate": self._notifier,
            "batch_alloc": self._batch_alloc,
            "rmap_remove": self._rmap_remove,
            "rmap_remove_now": self._rmap_now,
            "rmap_walk": self._rmap_walk,
            "rmap_remove_range": self._rmap_range,
            "rmap_remove_ptes": self._rmap_ptes,
            "large_folio_rmap": self._large_rmap,
            "force_flush": self._force_flush,
            "free_pages": self._free_pages,
            "free_ranges": self._free_ranges,
            "free_page": self._free_page,
            "folio_free": self._folio_free,
            "deferred_split": self._deferred,
            "rcu_queue": self._rcu_queue,
            "ipi_sync": self._ipi,
            "table_free": self._table_free,
            "violation": self._violation,
        }

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        handler = self._dispatch.get(event_dict["event"])
        if handler is not None:
            handler(event_dict)
        return event_dict

    def feed(self, event_dict: dict[str, Any]) -> None:
        self(None, "info", event_dict)

    def as_dict(self) -> dict[str, int]:
        return dict(self.c)

    def _pte_clear(self, ev: dict[str, Any]) -> None:
        level = ev["level"]
        key = _LEVEL_KEY.get(level)
        if key is not None:
            self.c[key] += 1
        self._clear_level = level

    def pte_clear_rows(self, rows: list[ClearRow]) -> None:
        """``pte_clear`` events at level ``pte``, in bulk (``events.RowBus``)."""
        if rows:
            self.c["ptes_zapped"] += len(rows)
            self._clear_level = "pte"

    def pte_clear_run(self, run: ClearRun) -> None:
        """A :class:`~mmugather.core.clearrun.ClearRun`'s rows, in bulk."""
        if len(run):
            self.c["ptes_zapped"] += len(run)
            self._clear_level = "pte"

    def _swap_free(self, ev: dict[str, Any]) -> None:
        self.c["swap_freed"] += 1

    def _gather(self, ev: dict[str, Any]) -> None:
        self.c["gathers"] += 1
        # A deferred split is spurious when the same teardown (gather) goes
        # on to unmap the rest of the folio.
        self._split_queue.clear()

    def _tlb_flush(self, ev: dict[str, Any]) -> None:
        if ev["scope"] == "range":
            self.c["tlb_flush_range"] += 1
            self.c["tlb_flush_bytes"] += max(0, int(ev["end"]) - int(ev["start"]))
        else:
            self.c["tlb_flush_mm"] += 1

    def _notifier(self, ev: dict[str, Any]) -> None:
        self.c["mmu_notifier"] += 1

    def _batch_alloc(self, ev: dict[str, Any]) -> None:
        if ev["what"] == "page_batch":
            if ev["ok"]:
                self.c["batch_pages"] += 1
            else:
                self.c["batch_alloc_failed"] += 1
        elif not ev["ok"]:
            self.c["batch_alloc_failed"] += 1

    def _rmap_remove(self, ev: dict[str, Any]) -> None:
        self.rmap_remove_pages((ev["page"],), -1)

    def rmap_remove_pages(self, pages: Sequence[int], vma_start: int) -> None:
        """``rmap_remove`` events, one per page, in bulk (``events.RowBus``):
        one page_remove_rmap() call and one ``_mapcount`` update each."""
        self._rmaps("rmap_batched", len(pages), len(pages))

    def _rmaps(self, how: str, pages: int, calls: int, mapcounts: bool = True) -> None:
        """``pages`` rmaps removed (``how``: at once or batched) in ``calls``
        calls, each page's ``_mapcount`` updated once (``mapcounts``)."""
        c = self.c
        c[how] += pages
        c["rmap_calls"] += calls
        if mapcounts:
            c["mapcount_atomics"] += pages

    def _rmap_now(self, ev: dict[str, Any]) -> None:
        # A PMD or hugetlb mapping has only folio-wide counters
        # (large_folio_rmap), no page _mapcount.
        self._rmaps("rmap_now", 1, 1, mapcounts=self._clear_level == "pte")

    def _rmap_range(self, ev: dict[str, Any]) -> None:
        self._rmaps("rmap_batched", ev["nr"], 1)  # folio_remove_rmap_range()

    def _rmap_ptes(self, ev: dict[str, Any]) -> None:
        self._rmaps("rmap_now", ev["nr"], 1)  # folio_remove_rmap_ptes()

    def _large_rmap(self, ev: dict[str, Any]) -> None:
        self.c["mapcount_atomics"] += ev["folio_atomics"]
        if not ev["mapped"] and ev["folio"] in self._split_queue:
            self._split_queue.discard(ev["folio"])
            self.c["deferred_split_spurious"] += 1

    def _force_flush(self, ev: dict[str, Any]) -> None:
        self.c["forced_flushes"] += 1
        if ev["full"]:
            self.c["forced_full"] += 1

    def _rmap_walk(self, ev: dict[str, Any]) -> None:
        self.c["rmap_walked"] += ev["walked"]
        if ev["walked"]:
            self.c["rmap_flushes"] += 1

    def _free_pages(self, ev: dict[str, Any]) -> None:
        pages = ev["pages"]
        # Page-table pages queued as pages (generic arches) have the high ids.
        tables = 0
        if max(pages, default=0) >= TABLE_ID_BASE:
            tables = sum(1 for p in pages if p >= TABLE_ID_BASE)
        self.c["pages_freed"] += len(pages) - tables
        self.c["folio_puts"] += len(pages) - tables
        self.c["tables_page_batch"] += tables
        self.c["free_calls"] += 1

    def _free_ranges(self, ev: dict[str, Any]) -> None:
        ranges = ev["ranges"]
        tables = sum(1 for start, _nr in ranges if start >= TABLE_ID_BASE)
        self.c["pages_freed"] += sum(nr for start, nr in ranges if start < TABLE_ID_BASE)
        self.c["folio_puts"] += len(ranges) - tables
        self.c["tables_page_batch"] += tables
        self.c["free_calls"] += 1

    def _free_page(self, ev: dict[str, Any]) -> None:
        self.c["pages_freed"] += 1
        self.c["folio_puts"] += 1
        self.c["free_calls"] += 1

    def _folio_free(self, ev: dict[str, Any]) -> None:
        self.c["folios_freed"] += len(ev["folios"])

    def _deferred(self, ev: dict[str, Any]) -> None:
        self.c["deferred_split"] += 1
        self._split_queue.add(ev["folio"])

    def _rcu_queue(self, ev: dict[str, Any]) -> None:
        self._rcu_tables.update(ev["tables"])

    def _ipi(self, ev: dict[str, Any]) -> None:
        self._after_ipi = True

    def _table_free(self, ev: dict[str, Any]) -> None:
        for table in ev["tables"]:
            if table in self._rcu_tables:
                self._rcu_tables.discard(table)
                self.c["tables_rcu"] += 1
            elif self._after_ipi:
                self.c["tables_ipi"] += 1
            else:
                self.c["tables_direct"] += 1
        self._after_ipi = False

    def _violation(self, ev: dict[str, Any]) -> None:
        self.c["violations"] += 1
