"""The invariant checker: watches the event stream and reports broken ordering.

It is an event observer (a structlog processor), so it sees exactly what a
reader of the event log sees, in order.  The two per-page events may also
come in bulk (``pte_clear_rows``, ``rmap_remove_pages``; see
``events.RowBus``): the usual page is handled there and anything else goes
through the per-event handler, so that reports do not depend on the form.
Rules that need to know which page a PTE mapped use the callers' events
(``pte_clear``, ``ptl_lock``, ``table_unhook``...); on a replay, where
those do not exist, the rules that need no address-space model still run
(``mmugather replay --check``).

Every rule has a name (:data:`RULES`); a violation carries the rule, a
message, and the trail of events that led to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Sequence
from operator import itemgetter
from typing import Any

from mmugather.core.arch import ArchSpec
from mmugather.core.check.fast import FastChecks
from mmugather.core.check.reach import HardwareRules, tlb_model_of
from mmugather.core.check.report import TRAIL, Seen, Violation, as_event
from mmugather.core.check.rmaps import RmapRules
from mmugather.core.check.tables import TableRules
from mmugather.core.clearrun import ClearRun
from mmugather.core.events import ClearRow

_ADDR = itemgetter(0)
_PAGE = itemgetter(1)


class Checker(RmapRules, TableRules):
    """Observer of one machine's events.  ``violations`` collects what broke.
    The rmap rules live in ``rmaps.py``, the page-table rules in
    ``tables.py``; the page and flush rules here."""

    def __init__(
        self,
        arch: ArchSpec,
        page_size: int = 4096,
        *,
        max_reports: int = 50,
        replay: bool = False,
    ) -> None:
        feats = set(arch.resolved_features())
        self.page_size = page_size
        #: pages wait in a queue for the flush (not s390)
        self.gathering = "MMU_GATHER_NO_GATHER" not in feats
        #: rmap removal can be batched (SMP and gathering)
        self.batch_rmap = self.gathering and "SMP" in feats
        #: tables are freed through RCU (or a synchronising IPI)
        self.rcu_tables = "MMU_GATHER_RCU_TABLE_FREE" in feats
        self.violations: list[Violation] = []
        self.counts: dict[str, int] = {}
        self.max_reports = max_reports
        #: set by the owner: emits a ``violation`` event into the stream
        self.emit: Callable[..., Any] | None = None
        self.seq = 0
        self.recent: deque[tuple[int, Seen]] = deque(maxlen=TRAIL)
        # state
        self.in_gather = False
        self.ptl: int | None = None
        self.ptl_vma: int = -1
        #: page -> start of the VMA whose PTE mapped it, between the
        #: rmap_remove event and the model's word on the VMA passed
        self.removed_vma: dict[int, int] = {}
        #: cleared entries no TLB flush covered yet: addr -> page (or None)
        self.uncovered: dict[int, int | None] = {}
        #: sizes of uncovered entries that are not one page (PMD, hugetlb)
        self.uncovered_size: dict[int, int] = {}
        self.dirty_uncovered: set[int] = set()
        #: the pages of ``uncovered``, built when a free needs them
        self._uncovered_pages: set[int | None] | None = None
        #: pages in the gather's hands: page -> [handed, rmaps owed,
        #: queued before a flush (a replay, which has no clears), seq of
        #: its clear, the clear event (Seen)]
        self.inflight: dict[int, list[Any]] = {}
        self.pending_rmap: dict[int, tuple[int | None, int]] = {}  # page -> (ptl, vma_start)
        #: page -> the lock held when its PTE (or huge entry) was cleared with
        #: its rmap to go at once (``rmap="now"``), until it goes
        self.now_ptl: dict[int, int | None] = {}
        self.pending_extra: dict[int, int] = {}
        self.tables: dict[int, str] = {}  # table -> unhooked|flushed|rcu|rcu-done|ipi
        self.table_level: dict[int, str] = {}
        #: an address the table mapped (a run's tables), for reports
        self.table_addr: dict[int, int] = {}
        self.cleared_since_flush = False
        self.queued_need_flush: dict[int, int] = {}  # replay mode: page -> queued count
        self.saw_callers = replay
        #: a replay: pages arrive by ``page_queued`` (detail) events, entries
        #: by page-less ``pte_clear`` events, and the caller's rmap choices
        #: are unknown, so the rmap rules that need them are off
        self.replay = replay
        #: the hardware rules, from the run's ``hw_config`` event on; until
        #: then (a replay, a hand-played stream) the order rules judge
        self.hw: HardwareRules | None = None
        #: pages taken a run at a time (``pte_clear_run``), not yet records
        self.fast = FastChecks(self)
        self._dispatch: dict[str, Callable[[dict[str, Any]], None]] = {
            "pte_clear": self._pte_clear,
            "rmap_remove": self._rmap_remove,
            "rmap_remove_range": self._rmap_remove_range,
            "rmap_remove_now": self._rmap_remove_now,
            "rmap_remove_ptes": self._rmap_remove_ptes,
            "free_pages": self._free_pages,
            "free_ranges": self._free_ranges,
            "free_page": self._free_page,
            "tlb_flush": self._tlb_flush,
            "ptl_lock": self._ptl_lock,
            "ptl_unlock": self._ptl_unlock,
            "table_unhook": self._table_unhook,
            "rcu_queue": self._rcu_queue,
            "rcu_grace_period": self._rcu_grace_period,
            "ipi_sync": self._ipi_sync,
            "table_free": self._table_free,
            "page_queued": self._page_queued,
            "gather_begin": self._gather_begin,
            "gather_end": self._gather_end,
            "hw_config": self._hw_config,
            "tlb_invalidate": self._tlb_invalidate,
            "pte_clear_flush": self._pte_clear_flush,
            "mm_exit": self._mm_exit,
            "vma_end": self._vma_end,
            "pmd_unshare": self._pmd_unshare,
        }

    # structlog processor signature
    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        self.seq = seq = self.seq + 1
        # Keep a reference, not a copy: every emit builds a fresh dict.
        self.recent.append((seq, event_dict))
        handler = self._dispatch.get(event_dict["event"])
        if handler is not None:
            if self.fast.runs and self.fast.event(event_dict):
                return event_dict
            handler(event_dict)
        return event_dict

    # ------------------------------------------------------------------

    def violate(self, rule: str, message: str, page: int | None = None) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        if len(self.violations) < self.max_reports:
            recent = [(n, ev) for n, ev in ((n, as_event(it)) for n, it in self.recent)
                      if ev["event"] != "violation"]
            seen = {n for n, _ev in recent}
            rec = self.inflight.get(page) if page is not None else None
            history = ([(rec[3], as_event(rec[4]))] if rec is not None and rec[3] not in seen
                       else [])
            trail = [{**ev, "#": n} for n, ev in history + recent]
            v = Violation(rule, message, self.seq, trail)
            self.violations.append(v)
        if self.emit is not None:
            self.emit("violation", rule=rule, message=message)

    def report(self, rule: str, message: str) -> None:
        """Model-side findings (mapcount, refcount) from the callers."""
        self.violate(rule, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    # --- handlers -----------------------------------------------------

    def _gather_begin(self, ev: dict[str, Any]) -> None:
        self.in_gather = True

    # --- the hardware model (a run) -------------------------------------

    def _hw_config(self, ev: dict[str, Any]) -> None:
        self.hw = HardwareRules(tlb_model_of(ev), self.violate)

    def _tlb_invalidate(self, ev: dict[str, Any]) -> None:
        if self.hw is not None:
            self.hw.invalidate(ev)

    def _pte_clear_flush(self, ev: dict[str, Any]) -> None:
        if self.hw is not None:
            self.hw.tlb.set_clear_mode(ev["mode"])

    def _mm_exit(self, ev: dict[str, Any]) -> None:
        if self.hw is not None:
            self.hw.tlb.mm_exit()

    def _vma_end(self, ev: dict[str, Any]) -> None:
        if self.hw is not None:
            self.hw.vma_end(ev["start"], ev["end"], ev["pfnmap"])

    def _pmd_unshare(self, ev: dict[str, Any]) -> None:
        """huge_pmd_unshare(): the huge entries this mm reached through the
        shared table are gone from its page tables (still there for the
        other process): stale in this mm's TLBs until a flush."""
        if self.hw is not None:
            size = self.hw.tlb.geometry.pmd_size
            for addr, page in ev["entries"]:
                self.hw.tlb.entry_cleared(addr, size, "pmd", page, False, self.seq)

    def _ptl_lock(self, ev: dict[str, Any]) -> None:
        self.saw_callers = True
        self.ptl = ev["table"]
        self.ptl_vma = ev.get("vma_start", -1)

    def _ptl_unlock(self, ev: dict[str, Any]) -> None:
        table = ev["table"]
        if self.batch_rmap:
            for page, (ptl, _vma) in self.pending_rmap.items():
                if ptl == table:
                    self.violate(
                        "rmap-outside-ptl",
                        f"the lock of table {table:#x} is dropped while page {page:#x}, whose "
                        "PTE it guarded, still waits for tlb_flush_rmaps()",
                    )
                    break
        self.ptl = None

    def _pte_clear(self, ev: dict[str, Any]) -> None:
        level = ev["level"]
        dirty_file = bool(ev.get("dirty_file")) and level == "pte"
        row = (ev["addr"], ev["page"], ev.get("rmap"), dirty_file)
        if level != "pte":
            if self.hw is not None:
                tlb = self.hw.tlb
                size = ev["size"]
                geo = tlb.geometry
                hw_level = ("pud" if size >= geo.pud_size else "pmd" if size >= geo.pmd_size
                            else "pte")
                tlb.entry_cleared(ev["addr"], size, hw_level, ev["page"], dirty_file,
                                  self.seq)
            elif self.gathering:
                self.uncovered_size[ev["addr"]] = ev["size"]
            self._clears((row,), self.seq - 1, ev, entries=False)
            return
        self._clears((row,), self.seq - 1, ev)

    def pte_clear_rows(self, rows: list[ClearRow]) -> None:
        """``pte_clear`` events at level ``pte``, in bulk (``events.RowBus``)."""
        if self.fast.runs:
            self.fast.settle()
        seq = self.seq
        self._clears(rows, seq, None)
        self.seq = seq + len(rows)
        self._remember(rows[-TRAIL:], self.seq)

    def pte_clear_run(self, run: ClearRun) -> None:
        """A :class:`~mmugather.core.clearrun.ClearRun`: its ``pte_clear``
        rows, kept as a run where they can be (``core/check/fast.py``)."""
        if not self.fast.clear_run(run):
            self.pte_clear_rows(run.rows())

    def _remember(self, items: Sequence[Seen], last_seq: int) -> None:
        """Put bulk events, the last of which is number ``last_seq``, on the trail."""
        first = last_seq - len(items) + 1
        self.recent.extend(zip(range(first, last_seq + 1), items, strict=True))

    def _clears(self, rows: Sequence[ClearRow], seq: int, ev: dict[str, Any] | None,
                entries: bool = True) -> None:
        """The cleared entries ``rows``, numbered from ``seq + 1``; ``ev`` is
        the event of a single row, when it came as one.  ``entries``: the
        rows are base-page PTEs, for the TLB bookkeeping."""
        self.saw_callers = True
        hw = self.hw
        gathering = self.gathering and hw is None
        if hw is not None:
            if entries:
                hw.tlb.pte_rows(rows, seq)
        elif gathering:
            # The order rules: s390 invalidates as it clears, so only
            # gathering arches wait.
            self.uncovered.update(zip(map(_ADDR, rows), map(_PAGE, rows), strict=True))
            self._uncovered_pages = None
        inflight = self.inflight
        pending_rmap = self.pending_rmap
        ptl_key = (self.ptl, self.ptl_vma)
        now_ptl = self.now_ptl
        for row in rows:
            seq += 1
            _addr, page, rmap, dirty_file = row
            if page is None:
                continue
            seen: Seen = row if ev is None else ev
            rec = inflight.get(page)
            if rec is None:
                inflight[page] = [1, 1, 0, seq, seen]
            else:
                rec[0] += 1
                rec[1] += 1
                rec[3] = seq
                rec[4] = seen
            if gathering and dirty_file:
                self.dirty_uncovered.add(page)
            if rmap == "batched":
                if page in pending_rmap:
                    # The same page mapped twice in one table (two VMAs of one file).
                    self.pending_extra[page] = self.pending_extra.get(page, 0) + 1
                else:
                    pending_rmap[page] = ptl_key
            elif rmap == "now":
                now_ptl[page] = ptl_key[0]

    def _uncovered_now(self) -> set[int | None]:
        """The pages of the cleared entries no flush has covered yet."""
        pages = self._uncovered_pages
        if pages is None:
            pages = self._uncovered_pages = set(self.uncovered.values())
        return pages

    def _freed(self, page: int) -> None:
        if not self.saw_callers:
            return
        if page in self.tables:
            self._table_freed(page)
            return
        rec = self.inflight.get(page)
        if rec is None or rec[0] <= 0:
            self.violate("free-once", f"page {page:#x} is freed more often than it was queued",
                         page)
            return
        if self.hw is not None:
            self.hw.page_released(page)
        elif rec[2] or (self.uncovered and page in self._uncovered_now()):
            self.violate(
                "free-before-flush",
                f"page {page:#x} is freed while a TLB entry mapping it may still be live "
                "(no flush covered its cleared PTE)",
                page,
            )
        if page in self.pending_rmap:
            del self.pending_rmap[page]
            self.violate(
                "rmap-dropped",
                f"page {page:#x} is freed with its rmap removal still pending: the flush "
                "between tlb_discard_rmaps() and tlb_flush_rmaps() dropped it",
                page,
            )
        rec[0] -= 1
        if self.replay:
            rec[1] = max(0, rec[1] - 1)
        if not rec[0] and not rec[1]:
            del self.inflight[page]

    def _free_pages(self, ev: dict[str, Any]) -> None:
        if not self.saw_callers or self.replay:
            for page in ev["pages"]:
                self._freed(page)
            return
        inflight = self.inflight
        tables = self.tables
        pending_rmap = self.pending_rmap
        unflushed: Container[int | None]
        if self.hw is not None:
            tlb = self.hw.tlb
            # Stale entries nobody may use (a dead mm's, a lazy CPU's on x86)
            # cannot make a free wrong: skip the index then.
            unflushed = tlb.pfn_index() if (tlb.leaf or tlb.big) and tlb.leaf_users() else ()
        else:
            unflushed = self._uncovered_now() if self.uncovered else ()
        for page in ev["pages"]:
            rec = inflight.get(page)
            # The usual free: queued once, rmap gone, flushed.  Anything
            # else goes the long way, which reports.
            if (rec is None or rec[0] != 1 or rec[1] or page in pending_rmap or page in tables
                    or page in unflushed):
                self._freed(page)
            else:
                del inflight[page]

    def _free_ranges(self, ev: dict[str, Any]) -> None:
        for start, nr in ev["ranges"]:
            for page in range(start, start + nr):
                self._freed(page)

    def _free_page(self, ev: dict[str, Any]) -> None:
        if self.replay:
            return  # freed as it is handed over: no queue to check against
        self._freed(ev["page"])

    def _tlb_flush(self, ev: dict[str, Any]) -> None:
        if self.hw is not None:
            return  # the hardware model follows tlb_invalidate instead
        uncovered = self.uncovered
        if ev["scope"] == "range" and uncovered:
            start, end = ev["start"], ev["end"]
            page_size = self.page_size
            sizes = self.uncovered_size
            missed = [a for a in uncovered
                      if not (start <= a and a + sizes.get(a, page_size) <= end)]
            if missed:
                self.violate(
                    "flush-covers",
                    f"the flush of [{start:#x}, {end:#x}) misses cleared entries at "
                    + ", ".join(hex(a) for a in missed[:4]),
                )
        if self.replay:
            for rec in self.inflight.values():
                rec[2] = 0
        uncovered.clear()
        self._uncovered_pages = None
        self.uncovered_size.clear()
        self.dirty_uncovered.clear()
        for table, state in self.tables.items():
            if state == "unhooked":
                self.tables[table] = "flushed"

    def _gather_end(self, ev: dict[str, Any]) -> None:
        self.in_gather = False
        if not self.saw_callers:
            return
        problems = []
        if self.hw is not None:
            self.hw.gather_end()
            self.hw.tlb.set_clear_mode("keeps")
        if self.uncovered:
            problems.append(f"{len(self.uncovered)} cleared entries never flushed")
        if self.pending_rmap:
            problems.append(f"{len(self.pending_rmap)} rmap removals still pending")
        owed = [] if self.replay else [p for p, rec in self.inflight.items() if rec[1] > 0]
        if owed:
            problems.append(f"{len(owed)} pages never lost their rmap (first {owed[0]:#x})")
        unfreed = [p for p, rec in self.inflight.items() if rec[0] > 0]
        if unfreed:
            problems.append(f"{len(unfreed)} queued pages never freed (first {unfreed[0]:#x})")
        if problems:
            self.violate("pending-after-finish", "after tlb_finish_mmu(): " + "; ".join(problems))
        self.uncovered.clear()
        self._uncovered_pages = None
        self.uncovered_size.clear()
        self.pending_rmap.clear()
        self.now_ptl.clear()
        self.inflight.clear()

    def finish(self) -> None:
        """End of a run: every unhooked table must have been freed by now."""
        self.fast.settle()
        if self.tables and self.saw_callers:
            table, state = next(iter(self.tables.items()))
            self.violate(
                "pending-after-finish",
                f"{len(self.tables)} page-table pages never freed (first {table:#x}, {state})",
            )
            self.tables.clear()

    def summary(self) -> str:
        if not self.counts:
            return "no violations"
        return ", ".join(f"{rule}: {n}" for rule, n in sorted(self.counts.items()))
