"""MMU_GATHER_NO_GATHER: pages are not queued; each is freed at once.

The arch (s390) invalidates the TLB entry as it clears the PTE, so by the time
the caller hands the page over there is nothing left to wait for.  There are
no batches, no rmap pointer and no rmap batching: the caller removes each
rmap itself.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma


@hookimpl
def tlb_page_remover(tlb: MmuGather) -> PageRemover:
    free = tlb.free_page_and_swap_cache

    def free_at_once(page: int, page_size: int, flags: int = 0) -> bool:
        free(page)
        return False

    return free_at_once


@hookimpl(tryfirst=True)
def tlb_batch_rmap(tlb: MmuGather) -> bool:
    # Even under CONFIG_SMP: nothing is queued, so nothing can be batched.
    return False


@hookimpl(tryfirst=True)
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool:
    return True


@hookimpl(tryfirst=True)
def tlb_discard_rmaps(tlb: MmuGather) -> bool:
    return True
