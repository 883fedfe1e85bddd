"""``thp-rmap-after-unlock``: ``zap_huge_pmd()`` removes the folio's rmap
after it drops the PMD lock.

v6.5 clears the huge PMD and drops the compound mapcount under the PMD
lock, and only queues the folio after the unlock.  Code that finds the PMD
none must be able to trust the mapcount once it has taken and dropped that
lock: ``zap_pmd_range()`` does exactly that for
``unmap_mapping_folio()`` (a none PMD of a PMD-mappable folio: lock,
unlock, so that the zap cannot return while ``zap_huge_pmd()`` has cleared
the PMD but not yet dropped the mapcount; 22061a1ffabd, "mm/thp:
unmap_mapping_page() to fix THP truncate_cleanup_page()").  With the rmap
removed after the unlock, truncation finds the folio still mapped after
its unmap returned.  Caught by the checker's ``rmap-outside-ptl``: an rmap
removed at once must go under the lock that guarded the entry.
"""

from __future__ import annotations

from mmugather.core.callers.huge_memory import HugeMemory
from mmugather.core.gather import MmuGather
from mmugather.mutants.base import Mutant, always


class ThpRmapAfterUnlock(HugeMemory):
    """The rest of zap_huge_pmd(): unlock first, then the rmap."""

    __slots__ = ()

    def zap_huge_pmd_folio(
        self, tlb: MmuGather, pmd_i: int, addr: int, pfn: int, lock: int
    ) -> None:
        ctx = self.ctx
        geo = ctx.geo
        emit = ctx.emit
        if emit is not None:
            emit("pte_clear", addr=addr, page=pfn, level="pmd", size=geo.pmd_size, rmap="now",
                 dirty_file=False)
        self.zap_deposited_table(pmd_i)
        ctx.rss_freed += geo.ptrs_per_pte
        if emit is not None:
            emit("ptl_unlock", table=lock)
            emit("rmap_remove_now", page=pfn)
        self.rmap.page_remove_rmap(pfn, True)
        tlb.tlb_remove_page_size(pfn, geo.pmd_size)


MUTANT = Mutant(
    name="thp-rmap-after-unlock",
    description="zap_huge_pmd() drops the PMD lock before it removes the folio's rmap",
    rule="rmap-outside-ptl",
    breaks="a mapping's rmap goes while the lock that guarded its entry is held: whoever "
    "takes that lock after the entry is cleared must find the mapcount dropped",
    applies=always,
    fixed_by="",
    callers={"huge_memory": ThpRmapAfterUnlock},
    changes="zap_huge_pmd()",
    scenario="default",
)
