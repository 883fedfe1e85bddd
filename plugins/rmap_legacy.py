"""The ``legacy`` strategy: CONFIG_SMP rmap batching as v6.5 had it before the
seed patch (commit 5df397dec7c4, "mm: delay page_remove_rmap() until after
the TLB has been flushed").

Only dirty file pages have their rmap removal delayed.  The caller asks
:func:`tlb_delay_rmap`, which sets ``tlb.delayed_rmap`` and says yes on a
batching configuration, and queues the page with the delay flag encoded
beside the pointer (``encode_page(page, 1)``: ``MmuGatherBatch.flags``).
Every other page's rmap the caller removes at once.

* ``tlb_next_batch()`` refuses a new batch page while delayed rmaps are
  pending and the active batch is not the on-stack bundle, so the delayed
  pages are always in ``tlb->local`` or ``tlb->active``;
* ``tlb_flush_rmaps()`` does nothing unless ``delayed_rmap`` is set; then it
  walks every entry of ``tlb->local`` and of ``tlb->active`` and removes the
  rmap of the flagged ones, and clears ``delayed_rmap``;
* there is no ``tlb_discard_rmaps()``.

Kernel: ``mm/mmu_gather.c`` (``tlb_next_batch``, ``tlb_flush_rmap_batch``,
``tlb_flush_rmaps``) and ``include/asm-generic/tlb.h`` (``tlb_delay_rmap``)
of v6.5; the caller is ``LegacyMemory`` in ``core/callers/memory.py``.

Registered over the arch's plugins (``make_machine(extra_plugins=...)``), it
changes only gathering CONFIG_SMP arches: where ``tlb.batch_rmap`` is false
(``up``; ``s390``, whose ``no_gather`` rmap hooks are ``tryfirst``) every
hook here defers to the arch's own.
"""

from __future__ import annotations

from collections.abc import Generator

from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma

#: encode_page(page, 1): the page's rmap removal is delayed
DELAY_RMAP = 1


def tlb_delay_rmap(tlb: MmuGather) -> bool:
    """``#define tlb_delay_rmap(tlb) (((tlb)->delayed_rmap = 1), true)`` on
    CONFIG_SMP with gathering; ``false`` elsewhere (UP, s390)."""
    if tlb.batch_rmap:
        tlb.delayed_rmap = True
        return True
    return False


@hookimpl(wrapper=True)
def tlb_page_remover(tlb: MmuGather) -> Generator[None, PageRemover, PageRemover]:
    remover = yield
    if not tlb.batch_rmap or remover != tlb.queue_page:
        return remover
    queue = remover

    def queue_noting_delay(page: int, page_size: int, flags: int = 0) -> bool:
        # A page queued with the delay flag was preceded by the caller's
        # tlb_delay_rmap(): say so here too, so that a replay (which records
        # the flag, not the macro) runs the v6.5 code.
        if flags & DELAY_RMAP:
            tlb.delayed_rmap = True
        return queue(page, page_size, flags)

    return queue_noting_delay


@hookimpl
def tlb_next_batch_allowed(tlb: MmuGather) -> bool:
    # Limit batching if we have delayed rmaps pending.
    return not (tlb.delayed_rmap and tlb.active is not tlb.local)


@hookimpl
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool | None:
    if not tlb.batch_rmap:
        return None
    walked = 0
    removed: list[int] = []
    if tlb.delayed_rmap:
        # Because of tlb_next_batch() above, delayed rmaps can only be in the
        # bundle and in the active batch.
        batches = [tlb.local] if tlb.active is tlb.local else [tlb.local, tlb.active]
        for batch in batches:
            nr = batch.nr
            walked += nr
            flags = batch.flags
            pages = batch.pages
            removed.extend(pages[i] for i in range(nr) if flags[i] & DELAY_RMAP)
        if removed:
            tlb.page_remove_rmaps(removed, vma)
        tlb.delayed_rmap = False
    if tlb.emit is not None:
        tlb.emit("rmap_walk", walked=walked, removed=len(removed))
    return True


@hookimpl
def tlb_discard_rmaps(tlb: MmuGather) -> bool | None:
    # v6.5 has no tlb_discard_rmaps(): nothing to move.
    return True if tlb.batch_rmap else None
