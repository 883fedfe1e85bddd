"""direct-table-free: page-table pages freed the moment they are unhooked.

An engine plugin: its ``tlb_remove_table()`` frees the table at once,
before the TLB flush and, where tables are freed through RCU, before the
grace period.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.mutants.base import Mutant, always


class DirectTableFree:
    """The plugin."""

    @staticmethod
    @hookimpl(tryfirst=True)
    def tlb_remove_table(tlb: MmuGather, table: int) -> bool:
        tlb.tlb_remove_table_free_now([table])
        return True


MUTANT = Mutant(
    name="direct-table-free",
    description="free page-table pages at once instead of after the flush (and RCU)",
    rule="table-reachable",
    breaks="a page-table page is freed only after the TLB flush that drops the walk "
    "caches over it and, where lockless walkers are not stopped by that flush "
    "(MMU_GATHER_RCU_TABLE_FREE), after an RCU grace period or a synchronising IPI",
    applies=always,
    plugin=DirectTableFree(),
)
