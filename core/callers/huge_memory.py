"""mm/huge_memory.c of v6.5: PMD-mapped transparent huge pages.

:class:`HugeMemory` zaps a huge PMD (``zap_huge_pmd()``, with the PTE table
deposited for it, ``zap_deposited_table()``), splits one that a zap covers
only in part (``__split_huge_pmd()``), and keeps the deferred split queue
(``deferred_split_folio()``), which ``mm/rmap.c`` feeds.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

import attrs
from mmugather.core.aspace import (
    F_ANON,
    F_DEFERRED_SPLIT,
    F_DIRTY,
    F_SWAPCACHE,
    MM_ANONPAGES,
    MM_FILEPAGES,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_YOUNG,
    MmVma,
    PteTable,
)
from mmugather.core.callers.context import MM_PAGE_TABLE_LOCK, ZapContext
from mmugather.core.gather import MmuGather

if TYPE_CHECKING:
    from mmugather.core.callers.rmap import Rmap
    from mmugather.core.callers.swap import Swap


@attrs.define(slots=True, eq=False)
class HugeMemory:
    """THP zap, split and deferred split."""

    ctx: ZapContext
    rmap: Rmap
    swap: Swap

    def zap_huge_pmd(self, tlb: MmuGather, vma: MmVma, pmd_i: int, addr: int) -> bool:
        """zap_huge_pmd(): clear a huge PMD under its lock; True when it is gone."""
        ctx = self.ctx
        aspace = ctx.aspace
        geo = ctx.geo
        tlb.tlb_change_page_size(geo.pmd_size)
        lock = aspace.pmd_tables.get(addr >> geo.pud_shift, MM_PAGE_TABLE_LOCK)
        emit = ctx.emit
        if emit is not None:
            emit("ptl_lock", table=lock, vma_start=vma.start)
        orig = aspace.huge_pmds.pop(pmd_i)
        tlb.tlb_remove_pmd_tlb_entry(addr)
        pfn = orig >> 8
        if vma.kind == "pfnmap" or orig & PTE_SPECIAL:
            # Special or huge-zero PMD: nothing to give back but the
            # deposited table.
            if emit is not None:
                emit("pte_clear", addr=addr, page=None, level="pmd", size=geo.pmd_size)
            self.zap_deposited_table(pmd_i)
            if emit is not None:
                emit("ptl_unlock", table=lock)
            return True
        self.zap_huge_pmd_folio(tlb, pmd_i, addr, pfn, lock)
        return True

    def zap_huge_pmd_folio(
        self, tlb: MmuGather, pmd_i: int, addr: int, pfn: int, lock: int
    ) -> None:
        """The rest of zap_huge_pmd() for a PMD mapping a folio at ``pfn``,
        entered with the PMD lock ``lock`` held: the folio's rmap and the
        deposited table go under the lock; the folio is queued after the
        unlock."""
        ctx = self.ctx
        geo = ctx.geo
        emit = ctx.emit
        if emit is not None:
            emit("pte_clear", addr=addr, page=pfn, level="pmd", size=geo.pmd_size, rmap="now",
                 dirty_file=False)
            emit("rmap_remove_now", page=pfn)
        self.rmap.page_remove_rmap(pfn, True)
        self.zap_deposited_table(pmd_i)
        ctx.rss_freed += geo.ptrs_per_pte
        store = ctx.aspace.pages
        anon = store.flags[store.head[pfn - PFN_BASE]] & F_ANON
        ctx.aspace.rss_stat[MM_ANONPAGES if anon else MM_FILEPAGES] -= geo.ptrs_per_pte
        if emit is not None:
            emit("ptl_unlock", table=lock)
        tlb.tlb_remove_page_size(pfn, geo.pmd_size)

    def zap_deposited_table(self, pmd_i: int) -> None:
        """The PTE table deposited for a THP was never reachable: pte_free() now."""
        ctx = self.ctx
        table = ctx.aspace.deposited.pop(pmd_i, None)
        if table is not None:
            ctx.aspace.tables.pop(table, None)
            ctx.deposited_freed += 1

    def split_huge_pmd(self, vma: MmVma, pmd_i: int) -> None:
        """__split_huge_pmd(): map an anon THP's pages with PTEs from the
        deposited table.  A file THP is not remapped: its PMD is cleared and
        flushed at once (pmdp_huge_clear_flush()), the page cache still has
        the folio and a later fault maps what is needed.

        Either way a dirty PMD's dirty bit is not lost: it goes to the folio
        (set_page_dirty() for a file THP, SetPageDirty() for an anon one)
        and, for an anon THP, to each PTE."""
        aspace = self.ctx.aspace
        geo = self.ctx.geo
        store = aspace.pages
        if not vma.is_anon:
            orig = aspace.huge_pmds.pop(pmd_i)
            pfn = orig >> 8
            if not orig & PTE_SPECIAL:
                head = store.head[pfn - PFN_BASE]
                if orig & PTE_DIRTY:
                    store.flags[head] |= F_DIRTY
                self.rmap.page_remove_rmap(pfn, True)
                self.swap.put_page(head)
                self.swap.flush_folio_frees()
                aspace.rss_stat[MM_FILEPAGES] -= geo.ptrs_per_pte
            return
        orig = aspace.huge_pmds.pop(pmd_i)
        table_id = aspace.deposited.pop(pmd_i, None)
        addr = pmd_i << geo.pmd_shift
        n = geo.ptrs_per_pte
        if table_id is None:
            table_id = aspace.new_table("pte", addr)
        table = PteTable(table_id, array("q", bytes(8 * n)))
        aspace.pte_tables[pmd_i] = table
        pfn = orig >> 8
        head = store.head[pfn - PFN_BASE]
        if orig & PTE_DIRTY:
            store.flags[head] |= F_DIRTY
        bits = orig & (PTE_DIRTY | PTE_YOUNG) | PTE_PRESENT
        for k in range(n):
            table.entries[k] = ((pfn + k) << 8) | bits
            store.mapcount[head + k] += 1
        store.nr_mapped[head] += n
        store.refcount[head] += n - 1
        self.rmap.page_remove_rmap(pfn, True)

    def deferred_split_folio(self, head: int) -> None:
        """deferred_split_folio(): queue a partly unmapped large folio for a
        split, once.

        A folio in the swap cache is left alone: reclaim adds a large folio
        to the swap cache before it unmaps it, so it is handling the folio
        already (and a second user of the queue would race with it).  A
        folio of order 0 or 1 has no room for the deferred list: v6.5
        VM_BUG_ONs one, and its page_remove_rmap() queues PMD-sized folios
        only; the later rmap functions the strategies run
        (``folio_remove_rmap_range()``, ``folio_remove_rmap_ptes()``) pass
        any large folio, which later kernels turn away here.
        """
        store = self.ctx.aspace.pages
        flags = store.flags[head]
        if store.order[head] < 2 or flags & (F_SWAPCACHE | F_DEFERRED_SPLIT):
            return
        store.flags[head] = flags | F_DEFERRED_SPLIT
        emit = self.ctx.emit
        if emit is not None:
            emit("deferred_split", folio=PFN_BASE + head)
