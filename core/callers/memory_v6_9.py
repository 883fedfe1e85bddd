"""mm/memory.c of v6.9: ``zap_pte_range()`` with PTE batching of large folios.

:class:`FolioBatchMemory` is the caller of the ``folio-batch`` strategy
(``zap_present_ptes()``, ``zap_present_folio_ptes()``; David Hildenbrand,
"mm/memory: optimize unmap/zap with PTE-mapped THP").  v6.9 restructured
the per-PTE loop around ``folio_pte_batch()``, so the loop is its own copy;
what it kept from v6.5 before the seed patch, the table's prologue and
epilogue, it shares with :class:`~mmugather.core.callers.memory.LegacyMemory`.
"""

from __future__ import annotations

import attrs
from mmugather.core.aspace import (
    F_ANON,
    F_DIRTY,
    MM_ANONPAGES,
    MM_FILEPAGES,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    MmVma,
)
from mmugather.core.callers.context import ZapDetails
from mmugather.core.callers.memory import LegacyMemory
from mmugather.core.gather import MmuGather
from mmugather.plugins.rmap_folio_batch import remove_folio_pages
from mmugather.plugins.rmap_legacy import DELAY_RMAP, tlb_delay_rmap


@attrs.define(slots=True, eq=False)
class FolioBatchMemory(LegacyMemory):
    """The v6.9 zap: v6.5's delayed rmaps of dirty file pages, no discard,
    rmaps flushed only with a forced flush, as before the seed patch; but
    the consecutive PTEs that map consecutive pages of one large folio are
    handled as one run (``folio_pte_batch()``: dirty and young bits may
    differ): one ``folio_remove_rmap_ptes()`` and one
    ``__tlb_remove_folio_pages()`` for the run; the folio is dirtied, and
    the run's rmap removal delayed, if any of its PTEs was dirty."""

    def zap_pte_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        pmd_i: int,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> int:
        """Clear the PTEs of one table in [addr, end), under its lock."""
        ctx = self.ctx
        geo = ctx.geo
        page_size = geo.page_size
        page_shift = geo.page_shift
        tlb.tlb_change_page_size(page_size)
        self.zap_pte_start(tlb)
        table = ctx.aspace.pte_tables.get(pmd_i)
        if table is None:
            return addr
        emit = ctx.emit
        clear = ctx.rows.pte_clear if ctx.rows is not None else None
        if emit is not None:
            emit("ptl_lock", table=table.id, vma_start=vma.start)
        # Reclaim may have cleared PTEs of this table and deferred their
        # flush: settle it before anything here relies on the TLB (3ea277194daa).
        tlb.flush_tlb_batched_pending()
        entries = table.entries
        i = (addr >> page_shift) & (geo.ptrs_per_pte - 1)
        store = ctx.aspace.pages
        head_of = store.head
        order_of = store.order
        folio_flags = store.flags
        remove_folio = remove_folio_pages(tlb)
        folio_remove_rmap_ptes = self.rmap.folio_remove_rmap_ptes
        anon_vma = vma.is_anon
        force_flush = queue_full = dirty_flush = False
        first = -1
        last = 0
        freed = 0
        anon_freed = 0  # of the freed pages, anonymous ones (the rss counters)
        while True:
            ent = entries[i]
            nr = 1
            if ent:
                if ent & PTE_PRESENT:
                    if first < 0:
                        first = addr
                        tlb.tlb_remove_tlb_entry(addr)
                    if ent & PTE_SPECIAL:
                        entries[i] = 0
                        last = addr
                        if clear is not None:
                            clear((addr, None, None, False))
                    else:
                        pfn = ent >> 8
                        head = head_of[pfn - PFN_BASE]
                        flags = folio_flags[head]
                        order = order_of[head]
                        if order and end - addr > page_size:
                            # folio_pte_batch(): the next present PTEs that
                            # map the next pages of this folio.
                            max_nr = min((end - addr) >> page_shift,
                                         PFN_BASE + head + (1 << order) - pfn)
                            while nr < max_nr:
                                e = entries[i + nr]
                                if (not e & PTE_PRESENT or e & PTE_SPECIAL
                                        or e >> 8 != pfn + nr):
                                    break
                                nr += 1
                        anon = flags & F_ANON
                        dirty = [bool(entries[i + k] & PTE_DIRTY) for k in range(nr)]
                        for k in range(nr):
                            entries[i + k] = 0
                        last = addr + (nr - 1) * page_size
                        delay_rmap = 0
                        if not anon and any(dirty):
                            folio_flags[head] = flags | F_DIRTY
                            if tlb_delay_rmap(tlb):
                                delay_rmap = DELAY_RMAP
                                force_flush = dirty_flush = True
                        if clear is not None:
                            rmap = "batched" if delay_rmap else "now"
                            for k in range(nr):
                                clear((addr + k * page_size, pfn + k, rmap,
                                       not anon and dirty[k]))
                        if not delay_rmap:
                            if emit is not None:
                                if nr == 1:
                                    emit("rmap_remove_now", page=pfn)
                                else:
                                    emit("rmap_remove_ptes", folio=PFN_BASE + head, first=pfn,
                                         nr=nr)
                            folio_remove_rmap_ptes(pfn, nr)
                        freed += nr
                        if anon:
                            anon_freed += nr
                        if remove_folio(pfn, nr, delay_rmap):
                            force_flush = queue_full = True
                            addr += nr * page_size
                            break
                elif self.zap_nonpresent(ent, addr, anon_vma, details):
                    # Swap, migration, marker, hwpoison: the entry goes.
                    entries[i] = 0
            i += nr
            addr += nr * page_size
            if addr == end:
                break
        if last > first >= 0:
            tlb.tlb_flush_pte_range(first, last - first + page_size)
        ctx.rss_freed += freed
        rss = ctx.aspace.rss_stat
        rss[MM_ANONPAGES] -= anon_freed
        rss[MM_FILEPAGES] -= freed - anon_freed
        self.zap_pte_end(tlb, vma.gvma, table.id, force_flush, dirty_flush, queue_full)
        if ctx.progress is not None:
            ctx.progress(len(entries))
        return addr
