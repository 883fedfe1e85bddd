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
from mmugather.core.hw.cpus import ZAPPING_CPU
from mmugather.core.hw.invalidate import WALK_ASID, Invalidate

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


#: plugin_state key: this gather's PTE clears are deferred (ptep_flush_lazy())
DEFERRED = "s390_deferred"


@hookimpl
def tlb_gather_init(tlb: MmuGather) -> None:
    """How this gather's PTE clears reach the TLBs (ptep_get_and_clear_full()).

    At exit (``full``) the PTE only gets its invalid bit: nobody runs in the
    mm, and freeing its tables marks it for the flush at the end.  Otherwise
    ptep_xchg_lazy(): with the mm attached to this CPU alone the invalid bit
    and the mark suffice (this CPU flushes before it runs the mm's user code
    again: finish_arch_post_lock_switch()), else IPTE invalidates the entry
    on every CPU at once.
    """
    mm = tlb.mm
    if tlb.fullmm:
        mode = "keeps"
    elif mm.running_cpus == 1 << ZAPPING_CPU:
        mode = "deferred"
    else:
        mode = "direct"
    tlb.plugin_state[DEFERRED] = mode == "deferred"
    hw_emit = tlb.machine.hw_emit
    if hw_emit is not None:
        hw_emit("pte_clear_flush", mode=mode, op="ipte" if mode == "direct" else None)


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    """__tlb_flush_mm_lazy(): cleared PTEs were invalidated one by one (or
    left to the mark); only a marked mm is flushed, whole, by IDTE."""
    context = tlb.mm.context
    if tlb.plugin_state.get(DEFERRED) and (tlb.cleared_ptes or tlb.cleared_pmds):
        # ptep_flush_lazy() marked the mm when it cleared these.
        context[FLUSH_MM] = True
    if context.get(FLUSH_MM):
        context[FLUSH_MM] = False
        # IDTE by ASCE: every entry of the address space, leaf and
        # region/segment table entries alike, on every CPU.
        idte = Invalidate("idte", cpus=tlb.machine.cpus.all_cpus, walk=WALK_ASID, waits=False)
        tlb.emit_tlb_flush("mm", hw=[idte])
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
