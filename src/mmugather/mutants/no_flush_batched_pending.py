"""``no-flush-batched-pending``: ``zap_pte_range()`` ignores the flush
reclaim still owes the mm, as before 3ea277194daa.

Reclaim's batched unmap (TTU_BATCH_FLUSH) clears a PTE and defers its flush.
A munmap() (or MADV_DONTNEED, mprotect()) that then finds the PTE already
clear records nothing to flush and may return to user space while another
CPU still stores through the entry reclaim cleared: the store lands in a
page the process no longer maps.  Only an interleaving of reclaim and the
unmap shows it: the explorer's ``reclaim-munmap`` (``stale-after-return``).
"""

from __future__ import annotations

from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.mutants.base import Mutant


class NoFlushBatchedPending:
    """The plugin."""

    @staticmethod
    @hookimpl(tryfirst=True)
    def flush_tlb_batched_pending(tlb: MmuGather) -> bool:
        return True


def batches_reclaim_flushes(spec: ArchSpec) -> bool:
    """where reclaim defers its TLB flushes (ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH: x86 in v6.5)"""
    return "ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH" in spec.resolved_features()


MUTANT = Mutant(
    name="no-flush-batched-pending",
    description="zap_pte_range() does not settle the TLB flush reclaim deferred "
    "(flush_tlb_batched_pending() left out)",
    rule="",
    breaks="a zap that finds PTEs reclaim cleared with a deferred flush must flush them "
    "under the same PTE lock before it returns: the unmapped range must not stay reachable",
    applies=batches_reclaim_flushes,
    fixed_by="3ea277194daa (\"mm, mprotect: flush TLB if potentially racing with a parallel "
    "reclaim leaving stale TLB entries\", v4.13)",
    plugin=NoFlushBatchedPending(),
    scenario="",
    explore="reclaim-munmap",
    prop="stale-after-return",
)
