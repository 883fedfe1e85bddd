"""The address-space side of the gather: what ``mm/mmu_gather.c`` calls
in ``mm/rmap.c`` and ``mm/swap.c``.

:class:`GatherModel` is the machine's
:class:`~mmugather.core.mm.MmModel`.  When the gather removes the rmaps
it batched (``tlb_flush_rmaps()``), frees queued pages
(``tlb_batch_pages_flush()``) or frees page tables, it tells this object,
which hands the work to :class:`~mmugather.core.callers.rmap.Rmap` and
:class:`~mmugather.core.callers.swap.Swap`.  The strategies' plugins also
find here what they need of folios (``page_folio()`` and
``folio_nr_pages()`` of include/linux/mm.h, as ``folio_head()`` and
``folio_end()``) and their range calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from mmugather.core.aspace import PFN_BASE
from mmugather.core.callers.context import ZapContext
from mmugather.core.callers.memory_fast import remove_rmaps
from mmugather.core.callers.rmap import Rmap
from mmugather.core.callers.swap import Swap
from mmugather.core.vma import Vma


@attrs.define(slots=True, eq=False)
class GatherModel:
    """The gather's calls into the rmap and swap models."""

    ctx: ZapContext
    rmap: Rmap
    swap: Swap

    def gather_remove_rmaps(self, pages: Sequence[int], vma: Vma) -> None:
        """tlb_flush_rmap_batch(): page_remove_rmap() of each page, in order."""
        observer = self.ctx.rmap_observer
        if observer is not None:
            observer(pages, vma.start)
        if self.ctx.fast:
            done = remove_rmaps(self.ctx, pages)
            if done:
                pages = pages[done:]
        remove = self.rmap.page_remove_rmap
        store = self.ctx.aspace.pages
        mapcount = store.mapcount
        order = store.order
        head_of = store.head
        for page in pages:
            idx = page - PFN_BASE
            # Fast path: a page of an order-0 folio that stays mapped or goes
            # unmapped with nothing else to account.
            if 0 <= idx < len(mapcount) and not order[head_of[idx]] and mapcount[idx] > 0:
                mapcount[idx] -= 1
                continue
            remove(page, False)

    def release_pages(self, pages: Sequence[int]) -> None:
        """tlb_batch_pages_flush(): free_pages_and_swap_cache()."""
        self.swap.free_pages_and_swap_cache(pages)

    def free_tables(self, tables: Sequence[int]) -> None:
        """Page-table pages were freed (table batch, RCU or one at once)."""
        owned = self.ctx.aspace.tables
        for table in tables:
            owned.pop(table, None)

    # The strategies' additions (plugins/rmap_ranges.py, rmap_folio_batch.py)

    def folio_head(self, pfn: int) -> int:
        return self.rmap.page_folio(pfn)

    def folio_end(self, pfn: int) -> int:
        return self.rmap.folio_end(pfn)

    def gather_remove_rmap_range(self, first: int, nr: int, vma: Vma) -> None:
        """tlb_flush_rmaps() of the series: one folio_remove_rmap_range()."""
        observer = self.ctx.rmap_observer
        if observer is not None:
            observer(range(first, first + nr), vma.start)
        self.rmap.folio_remove_rmap_range(first, nr)

    def gather_remove_rmap_ptes(self, first: int, nr: int, vma: Vma) -> None:
        """tlb_flush_rmaps() of v6.9: one folio_remove_rmap_ptes() per
        delayed entry of ``nr`` pages."""
        observer = self.ctx.rmap_observer
        if observer is not None:
            observer(range(first, first + nr), vma.start)
        self.rmap.folio_remove_rmap_ptes(first, nr)

    def release_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """free_folios_and_swap_cache() of the series, v6.9's page + nr_pages
        entries."""
        self.swap.free_folios_and_swap_cache(ranges)
