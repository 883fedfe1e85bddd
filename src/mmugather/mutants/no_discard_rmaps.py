"""no-discard-rmaps: the seed patch without its ``tlb_discard_rmaps()``."""

from __future__ import annotations

from mmugather.core.callers.memory import Memory
from mmugather.core.gather import MmuGather
from mmugather.mutants.base import Mutant, batching


class NoDiscardRmaps(Memory):
    """The seed patch's table start without ``tlb_discard_rmaps()``: the rmap
    pointer stays where the last flush or table left it."""

    __slots__ = ()

    def zap_pte_start(self, tlb: MmuGather) -> None:
        pass


MUTANT = Mutant(
    name="no-discard-rmaps",
    description="leave out tlb_discard_rmaps() at the start of each PTE table",
    rule="rmap-not-pending",
    breaks="tlb_flush_rmaps() walks only the pages the current PTE table queued with their "
    "rmap batched; pages queued before it (a THP whose rmap is gone, a page-table page) "
    "must be skipped (the seed patch's tlb_discard_rmaps())",
    applies=batching,
    callers={"memory": NoDiscardRmaps},
    changes="the seed patch's zap_pte_range()",
)
