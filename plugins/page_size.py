"""MMU_GATHER_PAGE_SIZE: tlb_flush() is told the size of the pages it covers.

For arches with size-specific invalidate instructions (powerpc radix): a
change of page size mid-gather flushes what was gathered at the old size.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl


@hookimpl
def tlb_gather_init(tlb: MmuGather) -> None:
    tlb.page_size = 0
    tlb.track_page_size = True


@hookimpl
def tlb_change_page_size(tlb: MmuGather, page_size: int) -> bool:
    # A fullmm or flush-everything gather flushes all sizes anyway.
    changed = tlb.page_size and tlb.page_size != page_size
    if changed and not tlb.fullmm and not tlb.need_flush_all:
        tlb.tlb_flush_mmu()
    tlb.page_size = page_size
    return True
