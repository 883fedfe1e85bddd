"""``no-nested-flush``: ``tlb_finish_mmu()`` flushes only what its own
gather recorded, as before 99baac21e458.

Two threads MADV_DONTNEED (or munmap and MADV_DONTNEED) the same range
under mmap_lock held for read.  The first clears the PTE and defers its
flush; the second finds the PTE already clear, records nothing, and
returns to user space, which now takes the range for discarded, while a
CPU still uses the entry the first cleared.  ``mm_tlb_flush_nested()``
(another gather in flight on the mm) makes the second flush everything.
Only the interleaving shows it: the explorer's ``dontneed-race``.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.mutants.base import Mutant, always


class NoNestedFlush(MmuGather):
    """The gather: never sees another gather in flight."""

    __slots__ = ()

    def mm_tlb_flush_nested(self) -> bool:
        return False


MUTANT = Mutant(
    name="no-nested-flush",
    description="tlb_finish_mmu() ignores a concurrent gather on the same mm "
    "(mm_tlb_flush_nested() always false) and flushes only what it recorded itself",
    rule="",
    breaks="an unmap returns only when no CPU still translates its range: a gather that "
    "found its PTEs already cleared by another, unflushed gather must flush too",
    applies=always,
    fixed_by="99baac21e458 (\"mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem\", v4.13)",
    gather=NoNestedFlush,
    scenario="",
    explore="dontneed-race",
    prop="stale-after-return",
)
