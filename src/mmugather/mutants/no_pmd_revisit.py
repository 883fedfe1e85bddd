"""``no-pmd-revisit``: ``zap_pmd_range()`` goes on to the next PMD when
``zap_pte_range()`` stopped early on a full queue, instead of coming back
to the same one (the kernel's ``pmd--``).

``__tlb_remove_page()`` reports the queue full when no batch page can be
had (``MAX_GATHER_BATCH_COUNT`` reached, or a GFP_NOWAIT allocation
failed): ``zap_pte_range()`` then flushes, frees the queue and returns
short of the PMD's end, and ``zap_pmd_range()`` must revisit that PMD from
there.  Skipping it leaves the rest of the table's PTEs present in a range
munmap() has unmapped; ``free_pgtables()`` then frees the table with them
in it, and the TLB entries a CPU holds for them survive the unmap.  No
kernel commit: the rule of ``zap_pmd_range()``'s loop.

The checker has no rule for an entry left in an unmapped range (the
completeness rules of check_mm() will); the explorer's
``munmap-queue-full`` (a batch page allocation fails) shows the entry still
used after munmap() returned (``stale-after-return``).
"""

from __future__ import annotations

from mmugather.core.callers.memory import Memory
from mmugather.mutants.base import Mutant, gathering


class NoPmdRevisit(Memory):
    """zap_pmd_range(): on to the next PMD, whatever zap_pte_range() left."""

    __slots__ = ()

    def zap_pmd_resume(self, addr: int, nxt: int) -> int:
        return nxt


MUTANT = Mutant(
    name="no-pmd-revisit",
    description="zap_pmd_range() goes on to the next PMD after zap_pte_range() stopped on a "
    "full queue, leaving the rest of the PTE table mapped",
    rule="table-not-empty",
    breaks="a zap clears every entry of its range: after a full queue ends a PTE table early, "
    "zap_pmd_range() comes back to the same PMD (pmd--)",
    applies=gathering,
    callers={"memory": NoPmdRevisit},
    changes="zap_pmd_range()",
    scenario="munmap-large",
    explore="munmap-queue-full",
    prop="stale-after-return",
)
