"""ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH: reclaim defers its TLB flushes.

``try_to_unmap()`` with TTU_BATCH_FLUSH clears a PTE under the page-table
lock and, instead of flushing, records the flush it owes (the CPUs in
``arch_tlbbatch``, the mm in ``mm->tlb_flush_batched``); one flush later
settles a whole batch of pages.  Whoever changes those PTEs in the meantime
and finds them already clear must settle the mm's debt before relying on
it: ``flush_tlb_batched_pending()`` (mm/rmap.c), called under the same
lock.  In v6.5 only x86 selects the option (``arch/x86/Kconfig``);
``arches/x86_64.py`` flushes with its own ``flush_tlb_mm()``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw.flush import flush_tlb_mm
from mmugather.core.hw.invalidate import Invalidate


def settle(tlb: MmuGather, hw: Sequence[Invalidate]) -> None:
    """Flush ``hw`` (the arch's ``flush_tlb_mm()``) for the mm's owed
    flushes and mark them settled (a ``flush_tlb_batched_pending`` event,
    then the invalidations)."""
    mm = tlb.mm
    if tlb.emit is not None:
        tlb.emit("flush_tlb_batched_pending", batched=mm.tlb_flush_batched)
    for inv in hw:
        tlb.machine.invalidate(inv, mm)
    mm.tlb_flush_batched = 0


@hookimpl
def flush_tlb_batched_pending(tlb: MmuGather) -> bool:
    if tlb.mm.tlb_flush_batched:
        settle(tlb, [flush_tlb_mm(tlb.machine, tlb.mm)])
    return True
