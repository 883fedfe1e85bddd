"""The checker's rmap rules: each rmap removed once, while pending, under
the lock that guarded its PTE, given the VMA that mapped it, and a dirty
file page's not before the flush that covers its stale entries.

A mixin of :class:`~mmugather.core.check.checker.Checker`, which holds the
state (``docs/checker.md`` lists the rules); kept apart so that the rmap
side of the seed patch reads in one place.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mmugather.core.aspace import TABLE_ID_BASE
from mmugather.core.check.report import TRAIL, Seen

if TYPE_CHECKING:
    from mmugather.core.check.fast import FastChecks
    from mmugather.core.check.reach import HardwareRules

#: a (lock, VMA) key no pending page has
_NO_KEY: tuple[int | None, int] = (None, -2)


class RmapRules:
    """``rmap_remove`` and its kin, page by page or in bulk."""

    # The checker's state these rules read and change (set in its __init__).
    seq: int
    ptl: int | None
    replay: bool
    saw_callers: bool
    gathering: bool
    batch_rmap: bool
    hw: HardwareRules | None
    fast: FastChecks
    inflight: dict[int, list[Any]]
    pending_rmap: dict[int, tuple[int | None, int]]
    pending_extra: dict[int, int]
    now_ptl: dict[int, int | None]
    removed_vma: dict[int, int]
    dirty_uncovered: set[int]
    uncovered: dict[int, int | None]
    tables: dict[int, str]

    if TYPE_CHECKING:
        def __call__(self, logger: Any, method: str, event_dict: Any) -> Any: ...

        def violate(self, rule: str, message: str, page: int | None = None) -> None: ...

        def _remember(self, items: Sequence[Seen], last_seq: int) -> None: ...

    def _remove_rmap(self, page: int) -> None:
        rec = self.inflight.get(page)
        if rec is None or rec[1] <= 0:
            self.violate("rmap-once", f"page {page:#x}: rmap removed more often than it was mapped",
                         page)
            return
        rec[1] -= 1
        if not rec[0] and not rec[1]:
            del self.inflight[page]
        hw = self.hw
        if hw is not None:
            if hw.tlb.dirty_pages and page in hw.tlb.dirty_pages:
                hw.dirty_rmap_removed(page)
            return
        if self.dirty_uncovered and page in self.dirty_uncovered and self.batch_rmap:
            self.violate(
                "dirty-rmap-before-flush",
                f"dirty file page {page:#x} loses its rmap before the TLB flush: writeback "
                "could clean it while another CPU still writes through a stale entry",
                page,
            )
            self.dirty_uncovered.discard(page)

    def _page_queued(self, ev: dict[str, Any]) -> None:
        if not self.replay:
            return
        page = ev["page"]
        if page in self.tables:
            return  # a page-table page queued as a page (generic arches)
        pending = 1 if self.gathering and self.uncovered else 0
        rec = self.inflight.get(page)
        if rec is None:
            self.inflight[page] = [1, 0, pending, self.seq, ev]
        else:
            rec[0] += 1
            rec[2] = rec[2] or pending
            rec[3], rec[4] = self.seq, ev

    def _rmap_remove(self, ev: dict[str, Any]) -> None:
        page = ev["page"]
        if not self.saw_callers:
            return
        if self.replay:
            rec = self.inflight.get(page)
            if page in self.tables:
                # Queued by pte_free_tlb() & co. on an arch without table
                # batching: a page no PTE mapped.
                self.violate("rmap-not-pending", "tlb_flush_rmaps() removes the rmap of "
                             f"page-table page {page:#x}, queued since the last discard", page)
            elif rec is None or rec[1] >= rec[0]:
                self.violate("rmap-once", f"page {page:#x}: rmap removed more often than it "
                             "was queued", page)
            else:
                rec[1] += 1
            return
        extra = self.pending_extra.get(page)
        if extra:
            self.pending_extra[page] = extra - 1
            pending = self.pending_rmap.get(page)
        else:
            pending = self.pending_rmap.pop(page, None)
        if pending is None:
            what = "a page-table page" if page >= TABLE_ID_BASE else "a page"
            self.violate(
                "rmap-not-pending",
                f"tlb_flush_rmaps() removes the rmap of {what} {page:#x} that no PTE cleared "
                "since the last discard mapped with a pending removal",
                page,
            )
            return
        ptl, vma_start = pending
        if ptl is not None and self.ptl != ptl:
            self.violate(
                "rmap-outside-ptl",
                f"page {page:#x}: rmap removed without holding the lock of table {ptl:#x} "
                "that guarded its PTE",
                page,
            )
        if vma_start != -1:
            self.removed_vma[page] = vma_start
        self._remove_rmap(page)

    def rmap_remove_pages(self, pages: Sequence[int], vma_start: int) -> None:
        """``rmap_remove`` events, one per page, in bulk (``events.RowBus``),
        for tlb_flush_rmaps() given the VMA at ``vma_start``.

        The usual removal (pending, under its lock, owed, not a dirty page
        before its flush) is done here; any other goes through the event
        handler, so that a report is the one the events would give.  Only a
        page mapped by another VMA is left for :meth:`rmap_vma` to report,
        after the walk, where the events alone would have it reported.
        """
        if self.fast.runs and self.fast.rmap_remove_pages(pages, vma_start):
            return
        seq = self.seq
        if not self.saw_callers or self.replay:
            for page in pages:
                self(None, "info", {"page": page, "event": "rmap_remove"})
            return
        pending_rmap = self.pending_rmap
        extra = self.pending_extra
        inflight = self.inflight
        removed_vma = self.removed_vma
        dirty: Container[int] | None
        if self.hw is not None:
            dirty = self.hw.tlb.dirty_pages or None
        else:
            dirty = self.dirty_uncovered if self.batch_rmap else None
        ptl_now = self.ptl
        # The pages of one table share one (lock, VMA) key: check it once.
        good_key: tuple[int | None, int] = _NO_KEY
        other_vma = False
        done = 0  # pages[:done] are on the trail
        for i, page in enumerate(pages):
            pending = pending_rmap.get(page)
            rec = inflight.get(page)
            if pending is not good_key and pending is not None and (
                    pending[0] is None or pending[0] == ptl_now):
                good_key = pending
                other_vma = pending[1] != vma_start and pending[1] != -1
            if (pending is not good_key or rec is None or rec[1] <= 0
                    or (extra and extra.get(page)) or (dirty and page in dirty)):
                self.seq = seq
                self._remember(pages[done:i], seq)
                done = i + 1
                self(None, "info", {"page": page, "event": "rmap_remove"})
                seq = self.seq
                continue
            seq += 1
            del pending_rmap[page]
            if other_vma:
                removed_vma[page] = pending[1]
            rec[1] -= 1
            if not rec[0] and not rec[1]:
                del inflight[page]
        self.seq = seq
        self._remember(pages[max(done, len(pages) - TRAIL):], seq)

    def _rmap_remove_range(self, ev: dict[str, Any]) -> None:
        """The ``ranges`` strategy: one removal for a run of pages of a folio,
        checked as that many ``rmap_remove`` events."""
        first = ev["first"]
        for page in range(first, first + ev["nr"]):
            self._rmap_remove({"page": page})

    def rmap_vma(self, pages: Iterable[int], vma_start: int) -> None:
        """The model tells which VMA tlb_flush_rmaps() was given for ``pages``."""
        removed = self.removed_vma
        if not removed:
            return
        for page in pages:
            mapped_by = removed.pop(page, -1)
            if mapped_by not in (-1, vma_start):
                self.violate(
                    "rmap-wrong-vma",
                    f"page {page:#x} was mapped by the VMA at {mapped_by:#x}, but "
                    f"tlb_flush_rmaps() was given the VMA at {vma_start:#x}",
                )

    def _rmap_remove_now(self, ev: dict[str, Any]) -> None:
        page = ev["page"]
        self._now_under_ptl(page)
        self._remove_rmap(page)

    def _rmap_remove_ptes(self, ev: dict[str, Any]) -> None:
        """The ``folio-batch`` caller removed a run's rmaps at once."""
        first = ev["first"]
        for page in range(first, first + ev["nr"]):
            self._now_under_ptl(page)
            self._remove_rmap(page)

    def _now_under_ptl(self, page: int) -> None:
        """A rmap removed at once (hugetlb, a THP, ``up``, ``s390``) goes
        under the lock that was held when its entry was cleared: with the
        lock dropped, a racing rmap walk (folio_mkclean(), try_to_unmap())
        finds the page mapped by an entry that is gone."""
        ptl = self.now_ptl.pop(page, None)
        if ptl is not None and self.ptl != ptl:
            self.violate(
                "rmap-outside-ptl",
                f"page {page:#x}: rmap removed at once after the lock of table {ptl:#x} "
                "that was held when its entry was cleared was dropped",
                page,
            )
