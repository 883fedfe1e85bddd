"""mm/hugetlb.c of v6.5: unmapping hugetlb pages.

:class:`Hugetlb` walks a hugetlb VMA one huge entry at a time
(``__unmap_hugepage_range()``), each under ``huge_pte_lock()``, with
``i_mmap_rwsem`` held for write around it
(``__unmap_hugepage_range_final()``); says where a hugetlb VMA may be
split (``hugetlb_vm_op_split()``); and undoes the sharing of a PMD table
with another process (``huge_pmd_unshare()``): this mm's PUD entry is
cleared and its reference on the table dropped, and the table stays the
other process's (freed only by its last user).  Since nothing was cleared
in the gather's range, the whole PUD range is recorded for the flush,
which is forced before ``i_mmap_rwsem`` is dropped (a4a118f2eead).
"""

from __future__ import annotations

import attrs
from mmugather.core.aspace import F_DIRTY, PFN_BASE, PTE_DIRTY, PTE_PRESENT, MmVma
from mmugather.core.callers.context import MM_PAGE_TABLE_LOCK, ZapContext
from mmugather.core.callers.rmap import Rmap
from mmugather.core.gather import MmuGather


@attrs.define(slots=True, eq=False)
class Hugetlb:
    """hugetlb unmap."""

    ctx: ZapContext
    rmap: Rmap

    def unmap_hugepage_range_final(self, tlb: MmuGather, vma: MmVma, start: int,
                                   end: int) -> None:
        """__unmap_hugepage_range_final(): the hugetlb VMA lock and the file's
        i_mmap_rwsem, for write, around the unmap: nobody shares or
        unshares a PMD table of the file meanwhile."""
        emit = self.ctx.emit
        if emit is not None:
            emit("i_mmap_lock", file=vma.file)
        self.unmap_hugepage_range(tlb, vma, start, end)
        if emit is not None:
            emit("i_mmap_unlock", file=vma.file)

    def unmap_hugepage_range(self, tlb: MmuGather, vma: MmVma, start: int, end: int) -> None:
        """__unmap_hugepage_range(): one huge entry at a time."""
        ctx = self.ctx
        aspace = ctx.aspace
        geo = ctx.geo
        sz = vma.hpage_size
        emit = ctx.emit
        tlb.tlb_change_page_size(sz)
        tlb.tlb_start_vma(vma.gvma)
        table = aspace.huge_puds if sz >= geo.pud_size else aspace.huge_pmds
        shift = geo.pud_shift if sz >= geo.pud_size else geo.pmd_shift
        shared = aspace.pmd_share if sz == geo.pmd_size else None
        force_flush = False
        address = start
        while address < end:
            if shared:
                pmd_table = aspace.pmd_tables.get(address >> geo.pud_shift)
                if pmd_table is not None and shared.get(pmd_table, 1) > 1:
                    if emit is not None:
                        emit("ptl_lock", table=pmd_table, vma_start=vma.start)
                    self.huge_pmd_unshare(tlb, vma, address)
                    if emit is not None:
                        emit("ptl_unlock", table=pmd_table)
                    force_flush |= self.huge_pmd_unshare_flush(tlb, address)
                    # The rest of the PUD range was mapped through that table.
                    address = (address | (geo.pud_size - 1)) + 1
                    continue
            key = address >> shift
            ent = table.get(key)
            if ent is None:
                address += sz
                continue
            lock = self.huge_pte_lock(vma, address)
            if emit is not None:
                emit("ptl_lock", table=lock, vma_start=vma.start)
            del table[key]
            if not ent & PTE_PRESENT:
                if emit is not None:
                    emit("ptl_unlock", table=lock)
                address += sz
                continue
            tlb.tlb_remove_huge_tlb_entry(address, sz)
            pfn = ent >> 8
            head = aspace.pages.head[pfn - PFN_BASE]
            if ent & PTE_DIRTY:
                aspace.pages.flags[head] |= F_DIRTY
            if emit is not None:
                emit("pte_clear", addr=address, page=pfn, level="huge", size=sz, rmap="now",
                     dirty_file=False)
                emit("rmap_remove_now", page=pfn)
            self.rmap.page_remove_rmap(pfn, True)
            if emit is not None:
                emit("ptl_unlock", table=lock)
            tlb.tlb_remove_page_size(pfn, sz)
            address += sz
        tlb.tlb_end_vma(vma.gvma)
        if force_flush:
            # Unsharing cleared nothing the gather saw: flush before
            # i_mmap_rwsem goes, or the other process may free and reuse
            # what this mm's TLBs still reach.
            tlb.tlb_flush_mmu_tlbonly()

    def huge_pmd_unshare(self, tlb: MmuGather, vma: MmVma, address: int) -> bool:
        """huge_pmd_unshare(), under the table's lock: if the PMD table this
        mm's PUD entry points to at ``address`` is shared, clear the PUD
        entry and drop this mm's reference (True); else nothing (False)."""
        ctx = self.ctx
        aspace = ctx.aspace
        geo = ctx.geo
        pud_i = address >> geo.pud_shift
        table = aspace.pmd_tables[pud_i]
        users = aspace.pmd_share.get(table, 1)
        if users == 1:
            return False
        # pud_clear(): the table's entries are no longer this mm's.
        del aspace.pmd_tables[pud_i]
        per_table = 1 << (geo.pud_shift - geo.pmd_shift)
        first = pud_i * per_table
        entries = []
        for pmd_i in range(first, first + per_table):
            ent = aspace.huge_pmds.pop(pmd_i, None)
            if ent is not None and ent & PTE_PRESENT:
                entries.append([pmd_i << geo.pmd_shift, ent >> 8])
        if ctx.emit is not None:
            ctx.emit("pmd_unshare", table=table, addr=pud_i << geo.pud_shift,
                     size=geo.pud_size, users=users, entries=entries)
        tlb.hook.huge_pmd_unshare_sync(tlb=tlb)
        if ctx.complete is not None:
            ctx.complete.pmd_unshared([pfn for _addr, pfn in entries])
        # put_page() on the table: the other process has it to itself now.
        if users == 2:
            del aspace.pmd_share[table]
        else:
            aspace.pmd_share[table] = users - 1
        aspace.tables.pop(table, None)
        return True

    def huge_pmd_unshare_flush(self, tlb: MmuGather, address: int) -> bool:
        """After an unshare: the whole PUD range goes in the gather's range
        (``tlb_flush_pmd_range()``), and the flush is forced before
        i_mmap_rwsem is dropped (a4a118f2eead).  True: force it."""
        geo = self.ctx.geo
        tlb.tlb_flush_pmd_range(address & ~(geo.pud_size - 1), geo.pud_size)
        return True

    def huge_pte_lock(self, vma: MmVma, address: int) -> int:
        """huge_pte_lock(): the PMD's split lock for PMD-sized pages,
        mm->page_table_lock otherwise."""
        geo = self.ctx.geo
        if vma.hpage_size == geo.pmd_size:
            return self.ctx.aspace.pmd_tables.get(address >> geo.pud_shift, MM_PAGE_TABLE_LOCK)
        return MM_PAGE_TABLE_LOCK

    @staticmethod
    def hugetlb_vm_op_split(vma: MmVma, addr: int) -> bool:
        """hugetlb_vm_op_split(): may ``vma`` be split at ``addr``?  Only on a
        huge page boundary (else the munmap() fails with EINVAL)."""
        return not addr % vma.hpage_size
