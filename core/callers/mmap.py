"""mm/mmap.c of v6.5: the two ways a process loses mappings for good.

:class:`Mmap` is ``exit_mmap()`` (the last user of the mm is gone: one
fullmm gather unmaps every VMA and frees every table) and ``munmap()``
(``do_vmi_align_munmap()``: split the VMAs at the edges, detach the ones
inside, then ``unmap_region()``: unmap them and free the page tables only
they used, between the neighbours' floor and ceiling).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from mmugather.core.aspace import MmVma
from mmugather.core.callers.context import ZapContext
from mmugather.core.callers.hugetlb import Hugetlb
from mmugather.core.callers.memory import Memory
from mmugather.core.callers.memory_pgtables import FreePgtables
from mmugather.core.constants import MASK64
from mmugather.core.gather import tlb_gather_mmu, tlb_gather_mmu_fullmm

#: FIRST_USER_ADDRESS and USER_PGTABLES_CEILING (0: the top)
FIRST_USER_ADDRESS = 0
USER_PGTABLES_CEILING = 0


@attrs.define(slots=True, eq=False)
class Mmap:
    """exit_mmap() and munmap()."""

    ctx: ZapContext
    memory: Memory
    pgtables: FreePgtables
    hugetlb: Hugetlb

    def exit_mmap(self) -> None:
        """The last user of the mm is gone: unmap everything, free every table."""
        ctx = self.ctx
        vmas = list(ctx.aspace.vmas)
        # mmput() dropped the last user: no thread runs in the mm any more.
        ctx.mm.exit()
        if ctx.machine.hw_emit is not None:
            ctx.machine.hw_emit("mm_exit")
        if not vmas:
            return
        tlb = tlb_gather_mmu_fullmm(ctx.machine, ctx.mm)
        self.memory.unmap_vmas(tlb, vmas, 0, MASK64)
        self.pgtables.free_pgtables(tlb, vmas, FIRST_USER_ADDRESS, USER_PGTABLES_CEILING)
        tlb.tlb_finish_mmu()
        ctx.aspace.vmas.clear()

    def munmap(self, start: int, end: int) -> None:
        """do_vmi_align_munmap(): split the VMAs at the edges, detach the
        ones inside [start, end), and unmap_region() them."""
        aspace = self.ctx.aspace
        for vma in aspace.vmas:
            for edge in (start, end):
                if (vma.is_hugetlb and vma.start < edge < vma.end
                        and not self.hugetlb.hugetlb_vm_op_split(vma, edge)):
                    return  # EINVAL: nothing is unmapped
        self.split_vma(start)
        self.split_vma(end)
        detached = [v for v in aspace.vmas if v.start >= start and v.end <= end]
        if not detached:
            return
        prev = max((v for v in aspace.vmas if v.end <= start), key=lambda v: v.end, default=None)
        nxt = min((v for v in aspace.vmas if v.start >= end), key=lambda v: v.start, default=None)
        aspace.vmas[:] = [v for v in aspace.vmas if v not in detached]
        self.unmap_region(detached, prev, nxt, start, end)

    def unmap_region(
        self,
        vmas: Sequence[MmVma],
        prev: MmVma | None,
        nxt: MmVma | None,
        start: int,
        end: int,
    ) -> None:
        """unmap_region(): one gather unmaps ``vmas`` and frees the tables
        that no neighbour (``prev``, ``nxt``) may still use."""
        ctx = self.ctx
        floor, ceiling = self.unmap_region_bounds(prev, nxt)
        tlb = tlb_gather_mmu(ctx.machine, ctx.mm)
        self.memory.unmap_vmas(tlb, vmas, start, end)
        self.pgtables.free_pgtables(tlb, vmas, floor, ceiling)
        tlb.tlb_finish_mmu()

    def unmap_region_bounds(self, prev: MmVma | None, nxt: MmVma | None) -> tuple[int, int]:
        """The [floor, ceiling) unmap_region() gives free_pgtables(): from
        the end of the VMA before to the start of the VMA after."""
        floor = prev.end if prev is not None else FIRST_USER_ADDRESS
        ceiling = nxt.start if nxt is not None else USER_PGTABLES_CEILING
        return floor, ceiling

    def split_vma(self, addr: int) -> None:
        """__split_vma(): the VMA across ``addr``, if any, becomes two."""
        aspace = self.ctx.aspace
        for k, vma in enumerate(aspace.vmas):
            if vma.start < addr < vma.end:
                pages = (addr - vma.start) >> self.ctx.geo.page_shift
                low = _clone(vma, vma.start, addr, vma.pgoff)
                high = _clone(vma, addr, vma.end, vma.pgoff + pages)
                aspace.vmas[k : k + 1] = [low, high]
                return


def _clone(vma: MmVma, start: int, end: int, pgoff: int) -> MmVma:
    return MmVma(
        start=start,
        end=end,
        kind=vma.kind,
        exec=vma.exec,
        name=vma.name,
        hpage_size=vma.hpage_size,
        file=vma.file,
        pgoff=pgoff,
    )
