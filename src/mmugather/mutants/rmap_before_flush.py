"""rmap-before-flush: the order commit 5df397dec7c4 fixed.

Before it (v6.1), ``zap_pte_range()`` removed every page's rmap as it
cleared the PTE, dirty shared file pages included, and no flush was forced
for them: writeback could find such a page unmapped and clean it while
another CPU still wrote through a stale TLB entry (a lost write).
"""

from __future__ import annotations

from mmugather.core.callers.memory import Memory
from mmugather.core.gather import MmuGather
from mmugather.core.vma import Vma
from mmugather.mutants.base import Mutant, batching


class RmapBeforeFlush(Memory):
    """The seed patch's table without rmap batching: each rmap goes at once
    and no ``tlb_flush_rmaps()`` follows (there is nothing batched to
    flush)."""

    __slots__ = ()

    def zap_batch_rmap(self, tlb: MmuGather) -> bool:
        return False

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
        if force_flush:
            if emit is not None:
                emit("force_flush", dirty=dirty_flush, full=queue_full)
            tlb.tlb_flush_mmu_tlbonly()
        if emit is not None:
            emit("ptl_unlock", table=table)
        if force_flush:
            tlb.tlb_flush_mmu()


MUTANT = Mutant(
    name="rmap-before-flush",
    description="remove each rmap at once, dirty file pages included, and do not force the "
    "flush: the ordering commit 5df397dec7c4 fixed",
    rule="dirty-page-reachable",
    breaks="a dirty file page keeps its rmap until a TLB flush has removed every stale "
    "writable entry (folio_mkclean() must find it mapped and wait on the PTE lock)",
    applies=batching,
    fixed_by="5df397dec7c4 (\"mm: delay page_remove_rmap() until after the TLB has been "
    "flushed\", v6.2)",
    callers={"memory": RmapBeforeFlush},
    changes="the seed patch's zap_pte_range()",
    # Only an unmap while another thread runs can lose a write.
    scenario="dirty-shared",
)
