"""mm/memory.c: zapping, from unmap_vmas() down to zap_pte_range().

:class:`Memory` is v6.5 with the seed patch ("mm/mmu_gather: generalize
mmu_gather rmap removal mechanism"), the caller of the ``pointer`` and
``ranges`` strategies.  :class:`LegacyMemory` is v6.5 before the seed
patch, for ``legacy``.  Both run the same ``zap_pte_range()`` loop: where
the two kernels differ, the loop calls a step that
:class:`LegacyMemory` overrides (the table's prologue, which pages have
their rmap removal delayed and how such a page is queued, and the table's
epilogue).  The v6.9 loop (``folio_pte_batch()``) is
:mod:`mmugather.core.callers.memory_v6_9`; freeing page tables
(``free_pgtables()``) is :mod:`mmugather.core.callers.memory_pgtables`.

The per-PTE loop of ``zap_pte_range()`` is the hot path: it binds what it
uses to locals and calls no method per PTE but for a dirty file page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import attrs
from mmugather.core.aspace import (
    F_ANON,
    F_DIRTY,
    MM_ANONPAGES,
    MM_FILEPAGES,
    MM_SWAPENTS,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    SWP_KIND,
    SWP_MARKER,
    SWP_MIGRATION,
    SWP_SWAP,
    MmVma,
)
from mmugather.core.callers.context import UNMAP_DETAILS, ZapContext, ZapDetails, addr_end
from mmugather.core.callers.memory_fast import zap_pte_run
from mmugather.core.gather import MmuGather, tlb_gather_mmu
from mmugather.core.vma import Vma
from mmugather.plugins.rmap_legacy import DELAY_RMAP, tlb_delay_rmap

if TYPE_CHECKING:
    from mmugather.core.callers.huge_memory import HugeMemory
    from mmugather.core.callers.hugetlb import Hugetlb
    from mmugather.core.callers.rmap import Rmap
    from mmugather.core.callers.swap import Swap


@attrs.define(slots=True, eq=False)
class Memory:
    """The zap walk of v6.5 + the seed patch."""

    ctx: ZapContext
    rmap: Rmap
    swap: Swap
    huge_memory: HugeMemory
    hugetlb: Hugetlb

    #: the flags a page whose rmap removal waits is queued with: none in the
    #: seed patch (the rmap pointer says which pages wait)
    DELAY_FLAG: ClassVar[int] = 0

    # ------------------------------------------------------------------
    # zap_pte_range() and its steps
    # ------------------------------------------------------------------

    def zap_pte_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        pmd_i: int,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> int:
        """Clear the PTEs of one table in [addr, end), under its lock; return
        where it stopped (``end``, or earlier when the queue filled)."""
        ctx = self.ctx
        geo = ctx.geo
        page_size = geo.page_size
        tlb.tlb_change_page_size(page_size)
        self.zap_pte_start(tlb)
        table = ctx.aspace.pte_tables.get(pmd_i)
        if table is None:
            return addr
        emit = ctx.emit
        rows = ctx.rows
        clear = rows.pte_clear if rows is not None else None
        if emit is not None:
            emit("ptl_lock", table=table.id, vma_start=vma.start)
        # Reclaim may have cleared PTEs of this table and deferred their
        # flush: settle it before anything here relies on the TLB (3ea277194daa).
        tlb.flush_tlb_batched_pending()
        entries = table.entries
        i = (addr >> geo.page_shift) & (geo.ptrs_per_pte - 1)
        store = ctx.aspace.pages
        head_of = store.head
        folio_flags = store.flags
        remove_page = tlb.remove_page
        page_remove_rmap = self.rmap.page_remove_rmap
        zap_nonpresent = self.zap_nonpresent
        delay_dirty_rmap = self.delay_dirty_rmap
        batch_rmap = self.zap_batch_rmap(tlb)
        rmap_mode = "batched" if batch_rmap else "now"
        delay_flag = self.DELAY_FLAG
        anon_vma = vma.is_anon
        force_flush = queue_full = dirty_flush = False
        # tlb_remove_tlb_entry() per cleared PTE only grows [start, end); the
        # gather reads the range only when a page is queued (end must not be
        # 0) or at a flush, so record the first clear at once and the rest of
        # the run [first, last] once, before the flush below.
        first = -1
        last = 0
        freed = 0
        anon = 0  # of the freed pages, anonymous ones (the rss counters)
        if ctx.fast and type(self) is Memory:
            # The table's leading common entries, a step at a time.
            i, addr, first, last, freed, anon, queue_full = zap_pte_run(
                self, tlb, table, i, addr, end, batch_rmap)
            force_flush = queue_full
        while addr != end and not queue_full:
            ent = entries[i]
            if ent:
                if ent & PTE_PRESENT:
                    entries[i] = 0
                    if first < 0:
                        first = addr
                        tlb.tlb_remove_tlb_entry(addr)
                    last = addr
                    if ent & PTE_SPECIAL:
                        # vm_normal_page() is NULL: no struct page to give back.
                        if clear is not None:
                            clear((addr, None, None, False))
                    else:
                        pfn = ent >> 8
                        head = head_of[pfn - PFN_BASE]
                        flags = folio_flags[head]
                        if flags & F_ANON or not ent & PTE_DIRTY:
                            if clear is not None:
                                clear((addr, pfn, rmap_mode, False))
                            if not batch_rmap:
                                if emit is not None:
                                    emit("rmap_remove_now", page=pfn)
                                page_remove_rmap(pfn, False)
                            queue_flag = 0
                        else:
                            # A dirty file page: dirty the folio; its rmap may
                            # have to wait for a TLB flush.
                            folio_flags[head] = flags | F_DIRTY
                            delay = delay_dirty_rmap(tlb, batch_rmap)
                            if clear is not None:
                                clear((addr, pfn, "batched" if delay else "now", True))
                            if delay:
                                # The TLB flush must come before the rmap
                                # removal: writeback must not find the page
                                # clean while a CPU can still dirty it.
                                force_flush = dirty_flush = True
                                queue_flag = delay_flag
                            else:
                                if emit is not None:
                                    emit("rmap_remove_now", page=pfn)
                                page_remove_rmap(pfn, False)
                                queue_flag = 0
                        freed += 1
                        anon += flags & F_ANON
                        if remove_page(pfn, page_size, queue_flag):
                            force_flush = queue_full = True
                            addr += page_size
                            break
                elif zap_nonpresent(ent, addr, anon_vma, details):
                    # Swap, migration, marker, hwpoison: the entry goes.
                    entries[i] = 0
            i += 1
            addr += page_size
            if addr == end:
                break
        if last > first >= 0:
            tlb.tlb_flush_pte_range(first, last - first + page_size)
        ctx.rss_freed += freed
        rss = ctx.aspace.rss_stat
        rss[MM_ANONPAGES] -= anon
        rss[MM_FILEPAGES] -= freed - anon
        self.zap_pte_end(tlb, vma.gvma, table.id, force_flush, dirty_flush, queue_full)
        if ctx.progress is not None:
            ctx.progress(len(entries))
        return addr

    def zap_pte_start(self, tlb: MmuGather) -> None:
        """Before the table is locked: ``tlb_discard_rmaps()`` (the seed
        patch), so that this table's ``tlb_flush_rmaps()`` walks only the
        pages it queues itself."""
        tlb.tlb_discard_rmaps()

    def zap_batch_rmap(self, tlb: MmuGather) -> bool:
        """Is the rmap removal of every page of the table left to
        ``tlb_flush_rmaps()``?  The seed patch: ``tlb_batch_rmap()``."""
        return tlb.batch_rmap

    def delay_dirty_rmap(self, tlb: MmuGather, batch_rmap: bool) -> bool:
        """A dirty file page: must its rmap wait for a forced TLB flush?
        The seed patch: when the table's rmaps are batched anyway."""
        return batch_rmap

    def zap_pte_end(
        self,
        tlb: MmuGather,
        gvma: Vma,
        table: int,
        force_flush: bool,
        dirty_flush: bool,
        queue_full: bool,
    ) -> None:
        """After the loop: the forced TLB flush and the rmap removal under
        the lock, the unlock, then the forced free."""
        emit = self.ctx.emit
        if force_flush:
            if emit is not None:
                emit("force_flush", dirty=dirty_flush, full=queue_full)
            tlb.tlb_flush_mmu_tlbonly()
        # Rmap removal must happen before the lock is dropped.
        tlb.tlb_flush_rmaps(gvma)
        if emit is not None:
            emit("ptl_unlock", table=table)
        # Free what a forced flush made freeable; the caller comes back for
        # the rest of the table.
        if force_flush:
            tlb.tlb_flush_mmu()

    def zap_nonpresent(
        self, ent: int, addr: int, anon_vma: bool, details: ZapDetails | None
    ) -> bool:
        """zap_pte_range() on a non-present entry; True when it is cleared."""
        kind = ent & SWP_KIND
        if kind == SWP_SWAP:
            # A genuine swap entry: a private anon page, freed here, never
            # gathered.
            if details is not None and not details.even_cows:
                return False
            self.swap.free_swap_and_cache(ent >> 8)
            self.ctx.aspace.rss_stat[MM_SWAPENTS] -= 1
            emit = self.ctx.emit
            if emit is not None:
                emit("swap_free", addr=addr, entry=ent >> 8)
        elif kind == SWP_MARKER:
            # uffd-wp markers: anon ones always go, file ones only when the
            # caller asks (ZAP_FLAG_DROP_MARKER).
            return anon_vma or (details is not None and details.drop_marker)
        if kind == SWP_MIGRATION:
            # The page under migration still counted in the rss.
            store = self.ctx.aspace.pages
            anon = store.flags[store.head[(ent >> 8) - PFN_BASE]] & F_ANON
            self.ctx.aspace.rss_stat[MM_ANONPAGES if anon else MM_FILEPAGES] -= 1
        # Migration and hwpoison entries: the page is not ours any more;
        # only the entry goes.
        return True

    # ------------------------------------------------------------------
    # The walk down to it
    # ------------------------------------------------------------------

    def zap_pmd_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> int:
        ctx = self.ctx
        aspace = ctx.aspace
        geo = ctx.geo
        pmd_size = geo.pmd_size
        pmd_shift = geo.pmd_shift
        pte_tables = aspace.pte_tables
        huge_pmds = aspace.huge_pmds
        huge_memory = self.huge_memory
        while True:
            nxt = addr_end(addr, end, pmd_size)
            pmd_i = addr >> pmd_shift
            if pmd_i in huge_pmds:
                if nxt - addr != pmd_size:
                    huge_memory.split_huge_pmd(vma, pmd_i)
                elif huge_memory.zap_huge_pmd(tlb, vma, pmd_i, addr):
                    addr = nxt
                    if addr == end:
                        break
                    continue
            if pmd_i not in pte_tables:
                addr = nxt
            else:
                addr = self.zap_pmd_resume(
                    self.zap_pte_range(tlb, vma, pmd_i, addr, nxt, details), nxt
                )
            if addr == end:
                break
        return addr

    def zap_pmd_resume(self, addr: int, nxt: int) -> int:
        """Where zap_pmd_range() goes on after zap_pte_range() stopped at
        ``addr`` (``nxt`` ends the PMD): a full queue ended the table early,
        so the same PMD again, from ``addr`` (the kernel's ``pmd--``)."""
        return addr

    def unmap_page_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> None:
        ctx = self.ctx
        aspace = ctx.aspace
        geo = ctx.geo
        tlb.tlb_start_vma(vma.gvma)
        pud_size = geo.pud_size
        while True:
            nxt = addr_end(addr, end, pud_size)
            if (addr >> geo.pud_shift) in aspace.pmd_tables:
                self.zap_pmd_range(tlb, vma, addr, nxt, details)
            addr = nxt
            if addr == end:
                break
        tlb.tlb_end_vma(vma.gvma)

    def unmap_single_vma(
        self,
        tlb: MmuGather,
        vma: MmVma,
        start_addr: int,
        end_addr: int,
        details: ZapDetails | None,
    ) -> None:
        start = max(vma.start, start_addr)
        if start >= vma.end:
            return
        end = min(vma.end, end_addr)
        if end <= vma.start:
            return
        emit = self.ctx.emit
        if emit is not None:
            emit("vma_unmap", start=start, end=end, kind=vma.kind, vma_start=vma.start)
        if start != end:
            if vma.is_hugetlb:
                self.hugetlb.unmap_hugepage_range_final(tlb, vma, start, end)
            else:
                self.unmap_page_range(tlb, vma, start, end, details)

    def unmap_vmas(
        self, tlb: MmuGather, vmas: Sequence[MmVma], start_addr: int, end_addr: int
    ) -> None:
        for vma in vmas:
            self.unmap_single_vma(tlb, vma, start_addr, end_addr, UNMAP_DETAILS)

    def zap_page_range_single(
        self, vma: MmVma, address: int, end: int, details: ZapDetails | None
    ) -> None:
        """zap_page_range_single(): one gather around one VMA's range."""
        tlb = tlb_gather_mmu(self.ctx.machine, self.ctx.mm)
        self.unmap_single_vma(tlb, vma, address, end, details)
        tlb.tlb_finish_mmu()


@attrs.define(slots=True, eq=False)
class LegacyMemory(Memory):
    """The v6.5 ``zap_pte_range()`` before the seed patch (5df397dec7c4's).

    * no ``tlb_discard_rmaps()``;
    * only a dirty file page has its rmap removal delayed, when
      ``tlb_delay_rmap()`` says so (CONFIG_SMP with gathering); it forces
      the flush; every other page's rmap is removed at once;
    * the page is queued with the delay flag encoded beside it;
    * ``tlb_flush_mmu_tlbonly()`` and ``tlb_flush_rmaps()`` only when the
      flush is forced, then ``tlb_flush_mmu()`` after the unlock.
    """

    DELAY_FLAG: ClassVar[int] = DELAY_RMAP

    def zap_pte_start(self, tlb: MmuGather) -> None:
        pass

    def zap_batch_rmap(self, tlb: MmuGather) -> bool:
        return False

    def delay_dirty_rmap(self, tlb: MmuGather, batch_rmap: bool) -> bool:
        return tlb_delay_rmap(tlb)

    def zap_pte_end(
        self,
        tlb: MmuGather,
        gvma: Vma,
        table: int,
        force_flush: bool,
        dirty_flush: bool,
        queue_full: bool,
    ) -> None:
        emit = self.ctx.emit
        # Do the actual TLB flush, and the delayed rmap removals, before
        # dropping the lock.
        if force_flush:
            if emit is not None:
                emit("force_flush", dirty=dirty_flush, full=queue_full)
            tlb.tlb_flush_mmu_tlbonly()
            tlb.tlb_flush_rmaps(gvma)
        if emit is not None:
            emit("ptl_unlock", table=table)
        # A forced flush (a full queue, or dirty entries to flush before the
        # unlock) frees the batched memory too.
        if force_flush:
            tlb.tlb_flush_mmu()
