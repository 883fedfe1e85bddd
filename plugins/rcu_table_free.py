"""MMU_GATHER_RCU_TABLE_FREE: page tables are freed after an RCU grace period.

gup_fast() and other lockless walkers run with interrupts off.  Where the
TLB invalidate is an IPI, its completion already proves that no walker is
still inside a table being freed.  Where it is not (hardware broadcast
invalidates, hypercalls), the table batch is handed to RCU-sched instead,
whose grace period interrupts-off sections also hold off; the single-table
fallback sends an IPI to every CPU to get the same guarantee.
"""

from __future__ import annotations

from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw.invalidate import HwSemantics
from mmugather.core.table import MmuTableBatch


@hookimpl
def tlb_remove_table_free(tlb: MmuGather, batch: MmuTableBatch) -> bool:
    tables = batch.tables
    if tlb.emit is not None:
        tlb.emit("rcu_queue", tables=tables)
    tlb.machine.call_rcu(lambda: tlb.tlb_remove_table_free_now(tables))
    return True


@hookimpl
def tlb_needs_table_invalidate(tlb: MmuGather) -> bool:
    return True


@hookimpl
def tlb_remove_table_sync_one(tlb: MmuGather) -> bool:
    # Not a grace period, but enough for walkers that rely on interrupts
    # being off: once every CPU took the IPI, none is still walking.
    if tlb.emit is not None:
        tlb.emit("ipi_sync")
    return True


@hookimpl
def mmu_hw_semantics(arch: ArchSpec) -> HwSemantics:
    # An arch frees tables through RCU because its TLB flush does not
    # interrupt the CPUs it reaches: hardware broadcast, or a hypercall.
    return HwSemantics(flush_waits=False)
