"""MMU_GATHER_TABLE_FREE: page tables collect in a table batch of their own.

For arches whose page directories are not plain pages, or that must delay
their freeing (MMU_GATHER_RCU_TABLE_FREE).  ``tlb_remove_table()`` adds the
table to ``tlb.batch``, allocating the batch page on first use; a full batch,
or a gather flush, disposes of the whole batch.

The batch page is allocated deep inside the mm with GFP_NOWAIT and fails
under memory pressure; the gather must still make progress, so a table that
finds no batch is freed on its own, after the walkers are synchronised
(``tlb_remove_table_one()``).
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.table import MmuTableBatch


@hookimpl
def tlb_gather_init(tlb: MmuGather) -> None:
    tlb.batch = None


@hookimpl
def tlb_remove_table(tlb: MmuGather, table: int) -> bool:
    batch = tlb.batch
    if batch is None:
        if not tlb.machine.get_free_page("table_batch"):
            tlb_table_invalidate(tlb)
            tlb_remove_table_one(tlb, table)
            return True
        batch = tlb.batch = MmuTableBatch(max=tlb.geometry.max_table_batch)
    batch.tables.append(table)
    if len(batch.tables) == batch.max:
        tlb_table_flush(tlb)
    return True


@hookimpl
def tlb_table_flush(tlb: MmuGather) -> bool:
    batch = tlb.batch
    if batch is not None:
        tlb_table_invalidate(tlb)
        tlb.hook.tlb_remove_table_free(tlb=tlb, batch=batch)
        tlb.batch = None
    return True


@hookimpl(trylast=True)
def tlb_remove_table_free(tlb: MmuGather, batch: MmuTableBatch) -> bool:
    tlb.tlb_remove_table_free_now(batch.tables)
    return True


@hookimpl(trylast=True)
def tlb_needs_table_invalidate(tlb: MmuGather) -> bool:
    return True


@hookimpl(trylast=True)
def tlb_remove_table_sync_one(tlb: MmuGather) -> bool:
    # Without RCU table freeing the arch's TLB-flush IPI already waited for
    # every lockless walker.
    return True


def tlb_table_invalidate(tlb: MmuGather) -> None:
    """Hardware walkers cache page-table entries too: invalidate first, then
    (under RCU table free) still wait out the software walkers."""
    if tlb.hook.tlb_needs_table_invalidate(tlb=tlb):
        tlb.tlb_flush_mmu_tlbonly()


def tlb_remove_table_one(tlb: MmuGather, table: int) -> None:
    tlb.hook.tlb_remove_table_sync_one(tlb=tlb)
    tlb.tlb_remove_table_free_now([table])
