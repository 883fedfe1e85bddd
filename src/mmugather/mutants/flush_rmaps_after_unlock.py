"""flush-rmaps-after-unlock: the batched rmaps removed after the PTE lock is
dropped."""

from __future__ import annotations

from mmugather.core.callers.memory import Memory
from mmugather.core.gather import MmuGather
from mmugather.core.vma import Vma
from mmugather.mutants.base import Mutant, batching


class FlushRmapsAfterUnlock(Memory):
    """The seed patch's table end with ``tlb_flush_rmaps()`` moved after
    ``pte_unmap_unlock()``."""

    __slots__ = ()

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
        tlb.tlb_flush_rmaps(gvma)
        if force_flush:
            tlb.tlb_flush_mmu()


MUTANT = Mutant(
    name="flush-rmaps-after-unlock",
    description="call tlb_flush_rmaps() after the page-table lock is dropped",
    rule="rmap-outside-ptl",
    breaks="page_remove_rmap() runs under the lock of the PTE it unmapped: rmap walkers "
    "take that lock and must see the cleared PTE and the lowered mapcount together "
    "(5df397dec7c4 and the seed patch both flush the delayed rmaps before the unlock)",
    applies=batching,
    callers={"memory": FlushRmapsAfterUnlock},
    changes="the seed patch's zap_pte_range()",
)
