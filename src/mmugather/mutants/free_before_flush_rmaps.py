"""``free-before-flush-rmaps``: the queue is freed between
``tlb_discard_rmaps()`` and ``tlb_flush_rmaps()``: the seed patch's own
hazard.

The seed patch batches rmap removal per PTE table: ``tlb_discard_rmaps()``
marks where the table's pages start in the queue, and ``tlb_flush_rmaps()``,
before the lock is dropped, removes the rmap of every page queued since.
Until then those pages are still mapped in the rmap sense.  Anything that
frees the queue in between (``tlb_flush_mmu()``, directly or through
``tlb_remove_page()`` or a page-size change) gives pages back with their
mapcount still raised, and its ``tlb_discard_rmaps()`` moves the pointer
past them: their rmap removal is lost for good (a mapcount leak; an
anonymous page reaches the allocator still mapped).  The seed avoids it:
the forced flush under the lock is ``tlb_flush_mmu_tlbonly()`` alone, and
``tlb_flush_mmu()`` comes after the unlock.  Here the forced flush frees
the queue too.  Caught by the checker's ``rmap-dropped`` (and by the
explorer, which runs that checker, in ``dirty-writeback``).
"""

from __future__ import annotations

from mmugather.core.callers.memory import Memory
from mmugather.core.gather import MmuGather
from mmugather.core.vma import Vma
from mmugather.mutants.base import Mutant, batching


class FreeBeforeFlushRmaps(Memory):
    """The table's epilogue with the forced flush freeing the queue under
    the lock, before tlb_flush_rmaps()."""

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
            tlb.tlb_flush_mmu()
        tlb.tlb_flush_rmaps(gvma)
        if emit is not None:
            emit("ptl_unlock", table=table)


MUTANT = Mutant(
    name="free-before-flush-rmaps",
    description="zap_pte_range()'s forced flush frees the queue under the lock, between "
    "tlb_discard_rmaps() and tlb_flush_rmaps()",
    rule="rmap-dropped",
    breaks="nothing frees the queue between tlb_discard_rmaps() and tlb_flush_rmaps(): the "
    "pages queued in between still await their rmap removal",
    applies=batching,
    fixed_by="",
    callers={"memory": FreeBeforeFlushRmaps},
    changes="the seed patch's zap_pte_range()",
    scenario="dirty-shared",
    explore="dirty-writeback",
    prop="checker:rmap-dropped",
)
