"""``arm64-no-rcu-table-free``: arm64 frees page tables as soon as the TLB
flush returns, as without MMU_GATHER_RCU_TABLE_FREE.

A broadcast TLBI interrupts no CPU, so its completion says nothing about a
lockless walker (``gup_fast()``, interrupts off) on another CPU that is
still reading the table: freed at once, the table may be reused under it.
5e5f6dc10546 ("arm64: mm: enable HAVE_RCU_TABLE_FREE logic", 2014, with
RCU fast_gup) frees them after an RCU grace period, which such a walker
holds off.  Caught by ``table-free-walkers``.
"""

from __future__ import annotations

from types import SimpleNamespace

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.table import MmuTableBatch
from mmugather.mutants._arm64 import applies
from mmugather.mutants.base import Mutant


@hookimpl(tryfirst=True)
def tlb_remove_table_free(tlb: MmuGather, batch: MmuTableBatch) -> bool | None:
    if not applies(tlb.machine.arch):
        return None
    tlb.tlb_remove_table_free_now(batch.tables)
    return True


@hookimpl(tryfirst=True)
def tlb_remove_table_sync_one(tlb: MmuGather) -> bool | None:
    # Without RCU table freeing this IPI is an empty stub.
    if not applies(tlb.machine.arch):
        return None
    return True


MUTANT = Mutant(
    name="arm64-no-rcu-table-free",
    description="arm64 frees page tables right after its broadcast TLBI, which waits for no "
    "gup_fast() walker",
    rule="table-free-walkers",
    breaks="an arch whose TLB flush is not an IPI frees tables after an RCU grace period "
    "(MMU_GATHER_RCU_TABLE_FREE)",
    applies=applies,
    fixed_by="5e5f6dc10546 (frees them after RCU)",
    plugin=SimpleNamespace(tlb_remove_table_free=tlb_remove_table_free,
                           tlb_remove_table_sync_one=tlb_remove_table_sync_one),
    scenario="order0-anon",
)
