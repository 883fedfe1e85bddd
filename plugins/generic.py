"""The generic mmu_gather: asm-generic/tlb.h where no arch overrides it.

Registered ``trylast`` on every arch, so that any feature or arch plugin that
implements a hook takes precedence.
"""

from __future__ import annotations

from mmugather.core.arch import ArchSpec
from mmugather.core.batch import MmuGatherBatch
from mmugather.core.constants import FREE_CHUNK
from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw.invalidate import HwSemantics
from mmugather.core.vma import Vma


@hookimpl(trylast=True)
def tlb_batch_rmap(tlb: MmuGather) -> bool:
    # No batching: UP has no remote TLB to wait for and runs under the PTL
    # without preemption; the caller removes each rmap at once.
    return False


@hookimpl(trylast=True)
def tlb_page_remover(tlb: MmuGather) -> PageRemover:
    return tlb.queue_page


@hookimpl(trylast=True)
def tlb_next_batch_allowed(tlb: MmuGather) -> bool:
    return True


@hookimpl(trylast=True)
def tlb_free_batch(tlb: MmuGather, batch: MmuGatherBatch) -> bool:
    """tlb_batch_pages_flush()'s loop body: free_pages_and_swap_cache() on
    chunks of at most FREE_CHUNK pages, until the batch is empty."""
    pages = batch.pages
    offset = 0
    free = tlb.free_pages_and_swap_cache
    # Bound the work per free call: matters only where a batch page holds
    # more than 512 pointers (PAGE_SIZE > 4K).
    while batch.nr:
        nr = min(FREE_CHUNK, batch.nr)
        free(pages[offset : offset + nr])
        offset += nr
        batch.nr -= nr
    return True


@hookimpl(trylast=True)
def tlb_flush(tlb: MmuGather) -> bool:
    """The default tlb_flush(): a range flush, or the whole mm when asked."""
    if tlb.fullmm or tlb.need_flush_all:
        tlb.emit_tlb_flush("mm")
    elif tlb.end:
        tlb.emit_tlb_flush("range", tlb.start, tlb.end)
    return True


@hookimpl(trylast=True)
def mmu_hw_semantics(arch: ArchSpec) -> HwSemantics:
    return HwSemantics()


@hookimpl(trylast=True)
def tlb_change_page_size(tlb: MmuGather, page_size: int) -> bool:
    return True


@hookimpl(trylast=True)
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool:
    return True


@hookimpl(trylast=True)
def tlb_discard_rmaps(tlb: MmuGather) -> bool:
    return True


@hookimpl(trylast=True)
def flush_tlb_batched_pending(tlb: MmuGather) -> bool:
    # Reclaim flushes at once where the arch does not batch its flushes:
    # nothing is ever owed.
    return True


@hookimpl(trylast=True)
def huge_pmd_unshare_sync(tlb: MmuGather) -> bool:
    # v6.5: huge_pmd_unshare() drops its reference with no synchronisation.
    return True


@hookimpl(trylast=True)
def tlb_start_vma(tlb: MmuGather, vma: Vma) -> bool:
    # A fullmm teardown shoots down everything: ranges do not matter.
    if tlb.fullmm:
        return True
    tlb.tlb_update_vma_flags(vma)
    tlb.flush_cache_range(vma, vma.start, vma.end)
    return True


@hookimpl(trylast=True)
def tlb_end_vma(tlb: MmuGather, vma: Vma) -> bool:
    if tlb.fullmm:
        return True
    # Flush and reset the range at each VMA boundary, so that it does not
    # grow over the unmapped space between VMAs.
    tlb.tlb_flush_mmu_tlbonly()
    return True


@hookimpl(trylast=True)
def tlb_free_pgtable(tlb: MmuGather, level: str, table: int, addr: int) -> bool:
    """pte/pmd/pud/p4d_free_tlb(): the range one level up, PAGE_SIZE wide.

    PAGE_SIZE, not the level's size: invalidating one page is enough for
    page-walk caches to drop what they hold behind it.
    """
    page_size = tlb.geometry.page_size
    if level == "pte":
        tlb.tlb_flush_pmd_range(addr, page_size)
    elif level == "pmd":
        tlb.tlb_flush_pud_range(addr, page_size)
    elif level == "pud":
        tlb.tlb_flush_p4d_range(addr, page_size)
    else:
        tlb.adjust_range(addr, page_size)
    tlb.freed_tables = True
    tlb.tlb_remove_table(table)
    return True


@hookimpl(trylast=True)
def tlb_remove_table(tlb: MmuGather, table: int) -> bool:
    # Page directories are ordinary pages: queue them with the others.
    tlb.tlb_remove_page(table)
    return True


@hookimpl(trylast=True)
def tlb_table_flush(tlb: MmuGather) -> bool:
    return True
