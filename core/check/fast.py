"""The checker's common case a table at a time: the pages of a
:class:`~mmugather.core.clearrun.ClearRun` kept as arrays.

The per-event handlers of :class:`~mmugather.core.check.checker.Checker`
keep a record per page in flight (``inflight``, ``pending_rmap``) and the
hardware model an entry per stale PTE.  A teardown's usual table needs none
of that to be judged: its pages are cleared together, lose their rmaps
together under the table's lock, and are freed together after the flush.
:class:`FastChecks` keeps such a step as one :class:`Run` (its pages, their
page-store indexes and the number of its first event) and its stale TLB
entries as one run of the hardware model
(:class:`~mmugather.core.hw.tlb_runs.LeafRuns`), and applies the rmap
removals and frees that take whole runs, in order, at once.

Anything else first turns the runs into the records the per-event handlers
would have made (:meth:`FastChecks.settle`), in the same order, so that
every rule and every report (messages, trails, the counts of what is left)
comes out of the per-event code exactly as without runs: an event with a
handler that may read those records, a rmap removal or free that does not
take whole runs in order, a page met twice, a dirty page, a lock or VMA
other than the one the page was cleared under.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from mmugather.core.aspace import PFN_BASE
from mmugather.core.check.report import TRAIL
from mmugather.core.clearrun import ClearRun

if TYPE_CHECKING:
    from mmugather.core.check.checker import Checker

#: Events whose handlers read no per-page record of the checker (and
#: whose hardware-model work keeps to what the runs allow): the runs may
#: stay as they are.  Every other handled event settles them first.
SAFE = frozenset({
    "tlb_flush", "ptl_lock", "table_unhook", "rcu_queue", "rcu_grace_period", "ipi_sync",
    "table_free", "page_queued", "gather_begin", "tlb_invalidate", "pte_clear_flush",
    "mm_exit", "vma_end",
})


class Run:
    """The pages of one step: cleared under the lock ``key`` (lock, VMA
    start), events ``seq + 1`` on; ``owed`` while their rmaps wait for
    tlb_flush_rmaps(); the first ``freed`` of them already freed."""

    __slots__ = ("freed", "idx", "key", "owed", "run", "seq")

    def __init__(self, run: ClearRun, idx: Any, seq: int, key: tuple[int | None, int]) -> None:
        self.run = run
        self.idx = idx
        self.seq = seq
        self.key = key
        self.owed = True
        self.freed = 0


class FastChecks:
    """The runs of one checker, oldest first."""

    __slots__ = ("checker", "runs", "tracked")

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.runs: list[Run] = []
        #: per page-store index: 1 while the page is in a run
        self.tracked = np.zeros(0, dtype=np.int8)

    # --- taking a run -----------------------------------------------------

    def clear_run(self, run: ClearRun) -> bool:
        """``pte_clear`` rows in bulk, kept as a run; False: the per-row
        way must take them."""
        c = self.checker
        hw = c.hw
        if hw is None or c.replay or run.rmap != "batched" or not len(run):
            return False
        idx = run.pages - PFN_BASE
        n = len(idx)
        lo = int(idx[0])
        top = int(idx[-1]) + 1
        if lo < 0 or (n > 1 and np.count_nonzero(idx[1:] > idx[:-1]) != n - 1):
            return False
        tracked = self.tracked
        if top > len(tracked):
            grown = np.zeros(max(top, 2 * len(tracked)), dtype=np.int8)
            grown[:len(tracked)] = tracked
            self.tracked = tracked = grown
        # Ascending, so distinct: a slice when they are consecutive.
        where = slice(lo, top) if top - lo == n else idx
        if np.count_nonzero(tracked[where]):
            return False  # a page met twice: records of its own
        pages = run.page_list
        for records in (c.inflight, c.pending_rmap):
            if records and not records.keys().isdisjoint(pages):
                return False
        seq = c.seq
        hw.tlb.pte_run(run, seq)
        tracked[where] = 1
        self.runs.append(Run(run, idx, seq, (c.ptl, c.ptl_vma)))
        c.saw_callers = True
        c.seq = seq + n
        c._remember(run.rows(max(0, n - TRAIL)), c.seq)
        return True

    # --- back to per-page records -------------------------------------------

    def settle(self) -> None:
        """Every run as the records the per-event handlers would keep."""
        c = self.checker
        inflight = c.inflight
        pending = c.pending_rmap
        tracked = self.tracked
        for r in self.runs:
            owed = 1 if r.owed else 0
            seq = r.seq + 1 + r.freed
            for row, page in zip(r.run.rows(r.freed), r.run.page_list[r.freed:], strict=True):
                inflight[page] = [1, owed, 0, seq, row]
                seq += 1
                if owed:
                    pending[page] = r.key
            tracked[r.idx[r.freed:]] = 0
        self.runs.clear()

    def event(self, ev: dict[str, Any]) -> bool:
        """Before the handler of ``ev``: True when it was done here."""
        name = ev["event"]
        if name == "free_pages":
            return self.free_pages(ev["pages"])
        if name == "ptl_unlock":
            # A run still owing its rmaps under this lock is reported.
            table = ev["table"]
            if any(r.owed and r.key[0] == table for r in self.runs):
                self.settle()
        elif name not in SAFE:
            self.settle()
        return False

    # --- rmap removal and frees, whole runs at a time ------------------------

    def _owed_from(self, pages: Sequence[int], vma_start: int) -> list[Run] | None:
        """The runs, in order, whose rmap removal ``pages`` is, when the
        per-page handler would take each page its usual way."""
        c = self.checker
        runs = self.runs
        j = 0
        while j < len(runs) and not runs[j].owed:
            j += 1
        taken = []
        pos = 0
        n = len(pages)
        ptl = c.ptl
        while pos < n:
            if j == len(runs):
                return None
            r = runs[j]
            lock, vma = r.key
            page_list = r.run.page_list
            m = len(page_list)
            if (not r.owed or r.freed or (lock is not None and lock != ptl)
                    or (vma != vma_start and vma != -1) or pages[pos:pos + m] != page_list):
                return None
            taken.append(r)
            pos += m
            j += 1
        extra = c.pending_extra
        hw = c.hw
        dirty = hw.tlb.dirty_pages if hw is not None else None
        for records in (extra, dirty):
            if records and not records.keys().isdisjoint(pages):
                return None
        return taken

    def rmap_remove_pages(self, pages: Sequence[int], vma_start: int) -> bool:
        """``rmap_remove`` events in bulk; False: settled, the per-page way
        must take them."""
        c = self.checker
        taken = self._owed_from(pages, vma_start) if c.saw_callers and not c.replay else None
        if taken is None:
            self.settle()
            return False
        for r in taken:
            r.owed = False
        c.seq += len(pages)
        c._remember(pages[-TRAIL:], c.seq)
        return True

    def free_pages(self, pages: Sequence[int]) -> bool:
        """A ``free_pages`` event: runs freed whole or in part, oldest
        first, and other pages by the handler; True when done."""
        c = self.checker
        hw = c.hw
        if not c.saw_callers or c.replay or hw is None:
            self.settle()
            return False
        tlb = hw.tlb
        if (tlb._runs or tlb._leaf or tlb.big) and tlb.leaf_users():
            # A page may still be reachable: the handler asks the model.
            self.settle()
            return False
        tracked = self.tracked
        tables = c.tables
        runs = self.runs
        n = len(pages)
        pos = 0
        other = pos  # pages[other:pos] are no run's: the handler's
        while pos < n:
            page = pages[pos]
            r = runs[0] if runs else None
            if r is not None and r.run.page_list[r.freed] == page:
                page_list = r.run.page_list
                m = min(len(page_list) - r.freed, n - pos)
                part = pages[pos:pos + m]
                if (r.owed or part != page_list[r.freed:r.freed + m]
                        or (tables and not tables.keys().isdisjoint(part))):
                    break
                if other < pos:
                    c._free_pages({"pages": pages[other:pos]})
                tracked[r.idx[r.freed:r.freed + m]] = 0
                r.freed += m
                if r.freed == len(page_list):
                    runs.pop(0)
                pos += m
                other = pos
                continue
            i = page - PFN_BASE
            if 0 <= i < len(tracked) and tracked[i]:
                break  # a page of a later run, or of this one out of order
            pos += 1
        if other < pos:
            c._free_pages({"pages": pages[other:pos]})
        if pos < n:
            self.settle()
            c._free_pages({"pages": pages[pos:]})
        return True
