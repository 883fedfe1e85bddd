"""``pfnmap-no-flush``: under MMU_GATHER_MERGE_VMAS, ``tlb_end_vma()`` does
not flush a VM_PFNMAP VMA either, as before b67fbebd4cf9 (CVE-2022-39188).

An arch that merges the ranges of adjacent VMAs into one flush
(``plugins/merge_vmas.py``) lets munmap() unlink a PFN-map VMA
(``free_pgtables()`` → ``unlink_file_vma()``) before its TLB entries are
gone.  The PFNs are not the mm's (no struct page, no reference): once the
VMA is unlinked, the driver's ``unmap_mapping_range()`` finds nothing to
zap, returns, and the driver frees the memory, while a CPU still reaches it
through a stale entry.  v6.5 flushes at ``tlb_end_vma()`` of such a VMA.

Caught by the checker's ``stale-after-unmap`` (its VM_PFNMAP clause, at
``vma_end``: scenario ``pfnmap-munmap``) and by the explorer
(``pfnmap-revoke``: a driver frees the PFN, a CPU reads it).  It applies
where the arch merges VMAs and its PTE clears leave the entries cached:
x86-64 and powerpc radix.  s390 merges VMAs too, but it invalidates each
PTE at its clear (IPTE) whenever another CPU has the mm attached, and with
the mm attached to this CPU alone the zapping CPU uses no entry before its
own flush: there, no CPU can reach the PFNs when ``tlb_end_vma()`` returns,
flush or not.
"""

from __future__ import annotations

from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma
from mmugather.mutants.base import Mutant


def merging(spec: ArchSpec) -> bool:
    """where VMAs share one range flush and PTE clears leave the entries cached
    (MMU_GATHER_MERGE_VMAS without s390's IPTE at the clear: x86-64, powerpc
    radix)"""
    feats = spec.resolved_features()
    return "MMU_GATHER_MERGE_VMAS" in feats and "MMU_GATHER_NO_GATHER" not in feats


class PfnmapNoFlush:
    """The plugin: MERGE_VMAS's ``tlb_end_vma()`` without its PFN-map flush."""

    @staticmethod
    @hookimpl(tryfirst=True)
    def tlb_end_vma(tlb: MmuGather, vma: Vma) -> bool | None:
        if "MMU_GATHER_MERGE_VMAS" not in tlb.machine.arch.resolved_features():
            return None
        return True


MUTANT = Mutant(
    name="pfnmap-no-flush",
    description="under MMU_GATHER_MERGE_VMAS, tlb_end_vma() leaves a VM_PFNMAP VMA "
    "unflushed, like any other: munmap() unlinks it with its TLB entries live",
    rule="stale-after-unmap",
    breaks="the PFNs of a VM_PFNMAP/VM_MIXEDMAP VMA are not the mm's: no CPU may reach them "
    "once the VMA can be unlinked (tlb_end_vma() flushes it), or the driver frees them "
    "under a stale TLB entry",
    applies=merging,
    fixed_by="b67fbebd4cf9 (\"mmu_gather: Force tlb-flush VM_PFNMAP vmas\", v5.19, "
    "CVE-2022-39188)",
    plugin=PfnmapNoFlush(),
    scenario="pfnmap-munmap",
    explore="pfnmap-revoke",
    prop="use-after-free",
)
