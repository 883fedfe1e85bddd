"""mm/hugetlb.c of v6.5: unmapping hugetlb pages.

:class:`Hugetlb` walks a hugetlb VMA one huge entry at a time
(``__unmap_hugepage_range()``), each under ``huge_pte_lock()``, and says
where a hugetlb VMA may be split (``hugetlb_vm_op_split()``).  Shared PMD
tables (``huge_pmd_unshare()``) are not modelled.
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
        address = start
        while address < end:
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
