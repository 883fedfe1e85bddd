"""s390: synchronous invalidation, immediate page freeing, RCU table freeing.

s390 invalidates each PTE as it clears it (IPTE/IDTE), so nothing is gathered
(MMU_GATHER_NO_GATHER): every page is freed at once and rmaps are removed one
by one by the caller.  Page tables still need care: freeing one marks the mm
(``context.flush_mm``), and ``tlb_flush()`` is lazy, flushing the whole mm
only when that mark is set.  Tables go through the RCU table batch.

The geometry is s390's 5-level layout: 256-entry page tables under 1 MiB
segments (PMD), 2 GiB region-3 entries (PUD), 4 TiB region-2 entries (P4D),
8 PiB region-1 entries (PGD); no level is folded.
"""

from __future__ import annotations

import sys

from mmugather.core.arch import ArchSpec
from mmugather.core.constants import Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl

FLUSH_MM = "flush_mm"


def geometry(page_size: int) -> Geometry:
    return Geometry(
        page_size=page_size,
        pmd_shift=20,
        pud_shift=31,
        p4d_shift=42,
        pgdir_shift=53,
        task_size=(1 << 64) - page_size,
    )


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    """__tlb_flush_mm_lazy(): PTE clears were already invalidated one by one;
    only a freed page table leaves something to flush, for the whole mm."""
    context = tlb.mm.context
    if context.get(FLUSH_MM):
        context[FLUSH_MM] = False
        tlb.emit_tlb_flush("mm")
    return True


@hookimpl
def tlb_free_pgtable(tlb: MmuGather, level: str, table: int, addr: int) -> bool:
    page_size = tlb.geometry.page_size
    # Each freed table clears a region/segment entry (CRSTE) that the TLB
    # may cache: mark the mm so that the next tlb_flush() does flush.
    if level == "pte":
        tlb.adjust_range(addr, page_size)
        tlb.mm.context[FLUSH_MM] = True
        tlb.freed_tables = True
        tlb.cleared_pmds = True
    elif level == "pmd":
        tlb.adjust_range(addr, page_size)
        tlb.mm.context[FLUSH_MM] = True
        tlb.freed_tables = True
        tlb.cleared_puds = True
    elif level == "p4d":
        tlb.adjust_range(addr, page_size)
        tlb.mm.context[FLUSH_MM] = True
        tlb.freed_tables = True
    else:
        # s390's pud_free_tlb() records no range, only the level.
        tlb.mm.context[FLUSH_MM] = True
        tlb.freed_tables = True
        tlb.cleared_p4ds = True
    tlb.tlb_remove_table(table)
    return True


SPEC = ArchSpec(
    name="s390",
    description="MMU_GATHER_NO_GATHER (pages freed at once), MERGE_VMAS, RCU table free, "
    "lazy whole-mm tlb_flush()",
    features=("SMP", "MMU_GATHER_NO_GATHER", "MMU_GATHER_MERGE_VMAS", "MMU_GATHER_RCU_TABLE_FREE"),
    plugins=(sys.modules[__name__],),
    geometry=geometry,
    page_sizes=(4096,),
)
