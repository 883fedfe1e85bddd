"""mm/rmap.c of v6.5: removing a page's or a folio's mappings, the mapcounts.

:class:`Rmap` follows v6.5 (``page_remove_rmap()``) and also carries the
two later PTE-range functions the strategies need: the series'
``folio_remove_rmap_range()`` (Ryan Roberts, "Optimize mmap_exit for large
folios" v2, patch 1) and v6.9's ``folio_remove_rmap_ptes()``.
:class:`SeriesRmap` is ``mm/rmap.c`` with that series applied, where
``page_remove_rmap()`` of a PTE mapping becomes a one-page
``folio_remove_rmap_range()``.

It also answers ``page_folio()`` (include/linux/mm.h) and
``folio_mapped()``.  Mapcounts live in the address space's
:class:`~mmugather.core.aspace.PageStore`: ``mapcount`` per page (the
kernel's ``_mapcount + 1``), and per folio at its head
``entire_mapcount`` (PMD or hugetlb mappings) and ``nr_mapped``
(``_nr_pages_mapped``: pages mapped by a PTE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from mmugather.core.aspace import F_ANON, F_HUGETLB, PFN_BASE
from mmugather.core.callers.context import ZapContext

if TYPE_CHECKING:
    from mmugather.core.callers.huge_memory import HugeMemory


@attrs.define(slots=True, eq=False)
class Rmap:
    """v6.5 ``mm/rmap.c`` (plus the PTE-range removals of later kernels)."""

    ctx: ZapContext
    #: deferred_split_folio() is in mm/huge_memory.c
    huge_memory: HugeMemory = attrs.field(init=False)

    def page_remove_rmap(self, pfn: int, compound: bool) -> None:
        """page_remove_rmap(): drop one mapping of a page, or of the whole folio."""
        ctx = self.ctx
        store = ctx.aspace.pages
        idx = pfn - PFN_BASE
        head = store.head[idx]
        flags = store.flags[head]
        emit = ctx.emit
        report = ctx.report
        if flags & F_HUGETLB:
            store.entire_mapcount[head] -= 1
            if emit is not None:
                emit("large_folio_rmap", folio=PFN_BASE + head, pages=0, folio_atomics=1,
                     mapped=self.folio_pages_mapped(head))
            return
        nr = 0
        nr_pmdmapped = 0
        if not compound:
            left = store.mapcount[idx] - 1
            store.mapcount[idx] = left
            if left < 0 and report is not None:
                report("mapcount", f"page {pfn:#x}: mapcount fell below zero")
            if not store.order[head]:
                return
            if left != 0:
                if emit is not None:
                    emit("large_folio_rmap", folio=PFN_BASE + head, pages=1, folio_atomics=0,
                         mapped=self.folio_pages_mapped(head))
                return
            # The last PTE of a page of a large folio.
            store.nr_mapped[head] -= 1
            # Pages of a PMD-mapped folio stay accounted as mapped.
            nr = 1 if store.entire_mapcount[head] == 0 else 0
            if emit is not None:
                emit("large_folio_rmap", folio=PFN_BASE + head, pages=1, folio_atomics=1,
                     mapped=self.folio_pages_mapped(head))
        else:
            left = store.entire_mapcount[head] - 1
            store.entire_mapcount[head] = left
            if left < 0 and report is not None:
                report("mapcount", f"folio {pfn:#x}: entire mapcount fell below zero")
            if left == 0:
                nr_pmdmapped = 1 << store.order[head]
                nr = nr_pmdmapped - store.nr_mapped[head]
            if emit is not None:
                # _entire_mapcount, and _nr_pages_mapped when it was the last
                emit("large_folio_rmap", folio=PFN_BASE + head, pages=0,
                     folio_atomics=2 if left == 0 else 1, mapped=self.folio_pages_mapped(head))
        folio_pages = 1 << store.order[head]
        # An anon PMD-sized folio left partly mapped is queued for a deferred
        # split (spuriously so when a zap is about to unmap the rest page by
        # page).
        pmd_sized_anon = flags & F_ANON and folio_pages >= ctx.geo.ptrs_per_pte
        if nr and pmd_sized_anon and (not compound or nr < nr_pmdmapped):
            self.huge_memory.deferred_split_folio(head)

    def folio_remove_rmap_range(self, first: int, nr: int) -> None:
        """folio_remove_rmap_range(folio, page, nr, vma) of the series (v2
        1/5): the PTE mappings of ``nr`` pages of one folio from ``first``.

        A large folio's ``_nr_pages_mapped`` is updated once for the range,
        and the folio goes on the deferred split queue only if some page of
        it is still mapped afterwards (``folio_test_large()``, not only
        PMD-sized folios, as in the series): unmapping a whole folio in one
        range queues nothing.
        """
        self._remove_pte_rmaps(first, nr, per_range=True)

    def folio_remove_rmap_ptes(self, first: int, nr: int) -> None:
        """folio_remove_rmap_ptes(folio, page, nr, vma) of v6.9
        (``__folio_remove_rmap()``, RMAP_LEVEL_PTE): each page's ``_mapcount``
        and, for each page whose last PTE mapping went, one
        ``atomic_dec_return()`` on ``_nr_pages_mapped``; a large anonymous
        folio left partly mapped is queued for a deferred split (any large
        folio, not only PMD-sized ones)."""
        self._remove_pte_rmaps(first, nr, per_range=False)

    def _remove_pte_rmaps(self, first: int, nr: int, per_range: bool) -> None:
        """The PTE rmaps of ``nr`` pages of one folio from ``first``: each
        page's ``_mapcount``; ``_nr_pages_mapped`` once for the run
        (``per_range``, the series) or once per page whose last mapping went
        (v6.9); a large anon folio left partly mapped goes on the deferred
        split queue, whatever its size."""
        ctx = self.ctx
        store = ctx.aspace.pages
        idx = first - PFN_BASE
        head = store.head[idx]
        mapcount = store.mapcount
        report = ctx.report
        if not store.order[head]:
            left = mapcount[idx] - 1
            mapcount[idx] = left
            if left < 0 and report is not None:
                report("mapcount", f"page {first:#x}: mapcount fell below zero")
            return
        unmapped = 0
        for i in range(idx, idx + nr):
            left = mapcount[i] - 1
            mapcount[i] = left
            if left == 0:
                unmapped += 1
            elif left < 0 and report is not None:
                report("mapcount", f"page {PFN_BASE + i:#x}: mapcount fell below zero")
        store.nr_mapped[head] -= unmapped
        mapped = self.folio_pages_mapped(head)
        if ctx.emit is not None:
            ctx.emit("large_folio_rmap", folio=PFN_BASE + head, pages=nr,
                     folio_atomics=1 if per_range else unmapped, mapped=mapped)
        if store.entire_mapcount[head] > 0:
            return  # still mapped whole by a PMD: no page counted unmapped
        if unmapped and mapped and store.flags[head] & F_ANON:
            self.huge_memory.deferred_split_folio(head)

    def folio_pages_mapped(self, head: int) -> int:
        """Pages of the folio at ``head`` still mapped: all of them while a
        PMD (or hugetlb) entry maps it, else those mapped by a PTE."""
        store = self.ctx.aspace.pages
        if store.entire_mapcount[head] > 0:
            return 1 << store.order[head]
        return int(store.nr_mapped[head])

    def folio_mapped(self, head: int) -> bool:
        """folio_mapped(): is any page of the folio at ``head`` mapped?"""
        store = self.ctx.aspace.pages
        if store.entire_mapcount[head] > 0:
            return True
        n = 1 << store.order[head]
        return any(store.mapcount[head + i] > 0 for i in range(n))

    def page_folio(self, pfn: int) -> int:
        """page_folio(): the head page of ``pfn``'s folio (a page-table page
        is a folio of its own)."""
        store = self.ctx.aspace.pages
        idx = pfn - PFN_BASE
        if 0 <= idx < len(store.head):
            return PFN_BASE + int(store.head[idx])
        return pfn

    def folio_end(self, pfn: int) -> int:
        """The first page after ``pfn``'s folio (page_to_pfn(&folio->page) +
        folio_nr_pages(folio))."""
        store = self.ctx.aspace.pages
        idx = pfn - PFN_BASE
        if 0 <= idx < len(store.head):
            head = store.head[idx]
            return PFN_BASE + head + (1 << store.order[head])
        return pfn + 1


@attrs.define(slots=True, eq=False)
class SeriesRmap(Rmap):
    """``mm/rmap.c`` under Ryan Roberts' series, for the ``ranges`` strategy.

    Its patch 1 (unchanged from "Optimize large folio interaction with
    deferred split" v4 2/3) makes ``page_remove_rmap()`` of a PTE mapping a
    wrapper of ``folio_remove_rmap_range(folio, page, 1, vma)``: so where a
    rmap goes at once (``up``, ``s390``), any large anonymous folio left
    partly mapped is queued for a deferred split, not only PMD-sized ones
    as in v6.5.  PMD and hugetlb mappings keep v6.5's path.
    """

    def page_remove_rmap(self, pfn: int, compound: bool) -> None:
        store = self.ctx.aspace.pages
        if compound or store.flags[store.head[pfn - PFN_BASE]] & F_HUGETLB:
            Rmap.page_remove_rmap(self, pfn, compound)
        else:
            self.folio_remove_rmap_range(pfn, 1)
