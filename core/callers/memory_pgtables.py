"""mm/memory.c of v6.5, its second half: freeing page tables.

:class:`FreePgtables` is ``free_pgtables()`` and the walk it starts,
``free_pgd_range()`` down through ``free_p4d_range()``,
``free_pud_range()`` and ``free_pmd_range()`` to ``free_pte_range()``:
each table whose whole span lies inside [floor, ceiling) is unhooked and
handed to the gather (``p?d_free_tlb()``).  A folded level
(``Geometry.folded``) has no table: the walk goes through it, and its
``p?d_free_tlb()`` frees nothing, as ``pgtable-nop4d.h`` and
``pgtable-nopud.h`` make it.  The zapping half of the file
is :mod:`mmugather.core.callers.memory`.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from mmugather.core.aspace import MmVma
from mmugather.core.callers.context import ZapContext, addr_end
from mmugather.core.constants import MASK64
from mmugather.core.gather import MmuGather


@attrs.define(slots=True, eq=False)
class FreePgtables:
    """Page-table freeing of v6.5."""

    ctx: ZapContext

    def free_pgtables(
        self, tlb: MmuGather, vmas: Sequence[MmVma], floor: int, ceiling: int
    ) -> None:
        """Free the tables under ``vmas`` that no VMA outside [floor, ceiling) uses."""
        geo = self.ctx.geo
        i = 0
        n = len(vmas)
        while i < n:
            vma = vmas[i]
            addr = vma.start
            i += 1
            if vma.is_hugetlb:
                nxt_start = vmas[i].start if i < n else ceiling
                self.free_pgd_range(tlb, addr, vma.end, floor, nxt_start)
                continue
            # Gather nearby VMAs into one walk down.
            while i < n and vmas[i].start <= vma.end + geo.pmd_size and not vmas[i].is_hugetlb:
                vma = vmas[i]
                i += 1
            nxt_start = vmas[i].start if i < n else ceiling
            self.free_pgd_range(tlb, addr, vma.end, floor, nxt_start)

    def free_pgd_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.ctx.geo
        pmd_mask = ~(geo.pmd_size - 1) & MASK64
        # 0 is both the bottom (addr, floor) and the top (end, ceiling) of
        # the address space; hence the "- 1"s.
        addr &= pmd_mask
        if addr < floor:
            addr = (addr + geo.pmd_size) & MASK64
            if not addr:
                return
        if ceiling:
            ceiling &= pmd_mask
            if not ceiling:
                return
        if ((end - 1) & MASK64) > ((ceiling - 1) & MASK64):
            end = (end - geo.pmd_size) & MASK64
        if addr > ((end - 1) & MASK64):
            return
        # Page-table pages are queued as PAGE_SIZE pages.
        tlb.tlb_change_page_size(geo.page_size)
        aspace = self.ctx.aspace
        while True:
            nxt = addr_end(addr, end, geo.pgdir_size)
            # A folded P4D level: the PGD entry is the P4D entry, never none.
            if geo.p4d_folded or (addr >> geo.pgdir_shift) in aspace.p4d_tables:
                self.free_p4d_range(tlb, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break

    def free_p4d_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.ctx.geo
        aspace = self.ctx.aspace
        start = addr
        while True:
            nxt = addr_end(addr, end, geo.p4d_size)
            if geo.pud_folded or (addr >> geo.p4d_shift) in aspace.pud_tables:
                self.free_pud_range(tlb, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break
        # p4d_free_tlb() does nothing for a folded level: no table to free.
        if not geo.p4d_folded:
            self.free_table_above(tlb, "p4d", start, end, floor, ceiling)

    def free_pud_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.ctx.geo
        aspace = self.ctx.aspace
        start = addr
        while True:
            nxt = addr_end(addr, end, geo.pud_size)
            aspace.huge_puds.pop(addr >> geo.pud_shift, None)
            if (addr >> geo.pud_shift) in aspace.pmd_tables:
                self.free_pmd_range(tlb, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break
        # pud_free_tlb() does nothing for a folded level.
        if not geo.pud_folded:
            self.free_table_above(tlb, "pud", start, end, floor, ceiling)

    def free_pmd_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.ctx.geo
        aspace = self.ctx.aspace
        start = addr
        while True:
            nxt = addr_end(addr, end, geo.pmd_size)
            pmd_i = addr >> geo.pmd_shift
            # A leftover huge entry is a "bad" pmd: cleared, nothing to free.
            aspace.huge_pmds.pop(pmd_i, None)
            if pmd_i in aspace.pte_tables:
                self.free_pte_range(tlb, pmd_i, addr)
            addr = nxt
            if addr == end:
                break
        self.free_table_above(tlb, "pmd", start, end, floor, ceiling)

    def free_pte_range(self, tlb: MmuGather, pmd_i: int, addr: int) -> None:
        table = self.ctx.aspace.pte_tables.pop(pmd_i)
        if self.ctx.complete is not None:
            self.ctx.complete.pte_table_freed(table, addr)
        self._unhook("pte", table.id, addr)
        tlb.pte_free_tlb(table.id, addr)

    def free_table_above(
        self, tlb: MmuGather, level: str, start: int, end: int, floor: int, ceiling: int
    ) -> None:
        """The tail of free_{pmd,pud,p4d}_range(): once the tables below
        [start, end) are gone, the ``level`` table that held them goes too,
        unless a VMA outside [floor, ceiling) may still use it."""
        geo = self.ctx.geo
        aspace = self.ctx.aspace
        # The level's table is indexed by the entry one level up that points to it.
        shift, tables, free_tlb = {
            "pmd": (geo.pud_shift, aspace.pmd_tables, tlb.pmd_free_tlb),
            "pud": (geo.p4d_shift, aspace.pud_tables, tlb.pud_free_tlb),
            "p4d": (geo.pgdir_shift, aspace.p4d_tables, tlb.p4d_free_tlb),
        }[level]
        if not self.table_free_allowed(start, end, floor, ceiling, shift):
            return
        start &= ~((1 << shift) - 1) & MASK64
        table = tables.pop(start >> shift, None)
        if table is not None:
            self._unhook(level, table, start)
            free_tlb(table, start)

    @staticmethod
    def table_free_allowed(start: int, end: int, floor: int, ceiling: int, shift: int) -> bool:
        """May the table above [start, end) go?  Only if no VMA outside
        [floor, ceiling) can still use it (0 as ceiling is the top)."""
        mask = ~((1 << shift) - 1) & MASK64
        start &= mask
        if start < floor:
            return False
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return False
        return not ((end - 1) & MASK64) > ((ceiling - 1) & MASK64)

    def _unhook(self, level: str, table: int, addr: int) -> None:
        emit = self.ctx.emit
        if emit is not None:
            emit("table_unhook", table=table, level=level, addr=addr)
