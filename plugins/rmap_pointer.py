"""CONFIG_SMP rmap batching with the rmap pointer (the seed patch).

The gather keeps a pointer, ``tlb.rmap_pend`` and ``tlb.rmap_pend_first``,
to the first queued page whose rmap is still to be removed.
``tlb_flush_rmaps()`` walks from there to the end of the queue and removes
each page's rmap; ``tlb_discard_rmaps()`` moves the pointer to the end.  So
the walk never revisits the prefix of the queue whose rmaps are already gone
but whose TLB invalidate and free are still pending.

The caller calls ``tlb_flush_rmaps()`` under the page-table lock it held to
clear the PTEs: rmap removal happens per PTE table, while the invalidate and
the freeing go on in much larger batches outside the lock.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma


@hookimpl
def tlb_batch_rmap(tlb: MmuGather) -> bool:
    return True


@hookimpl
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool:
    batch = tlb.rmap_pend
    first = tlb.rmap_pend_first
    walked = 0
    while True:
        if batch.nr > first:
            tlb.page_remove_rmaps(batch.pages[first : batch.nr], vma)
            walked += batch.nr - first
        nxt = batch.next
        # Batches after the active one are empty left-overs of earlier
        # flushes: the walk stops at the first empty batch.
        if nxt is None or not nxt.nr:
            break
        batch, first = nxt, 0
    if tlb.emit is not None:
        tlb.emit("rmap_walk", walked=walked, removed=walked)
    tlb_discard_rmaps(tlb)
    return True


@hookimpl
def tlb_discard_rmaps(tlb: MmuGather) -> bool:
    tlb.rmap_pend = tlb.active
    tlb.rmap_pend_first = tlb.active.nr
    if tlb.detail is not None:
        tlb.detail("rmap_pend", batch=tlb.active.index, first=tlb.active.nr)
    return True
