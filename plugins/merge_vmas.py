"""MMU_GATHER_MERGE_VMAS: one range over many VMAs.

For arches where several range invalidates cost more than one large one
(x86, s390): tlb_end_vma() flushes only for a VM_PFNMAP/VM_MIXEDMAP VMA.
Those stay fragile: the core mm does not track their mapcount, so a racing
unmap_mapping_range() must not find the TLB entries still live.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma


@hookimpl
def tlb_end_vma(tlb: MmuGather, vma: Vma) -> bool:
    if tlb.fullmm:
        return True
    # The VMA's flags as tlb_start_vma() recorded them, not the argument's.
    if tlb.vma_pfn:
        tlb.tlb_flush_mmu_tlbonly()
    return True
