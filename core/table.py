"""struct mmu_table_batch: page-table pages waiting to be freed.

Used by MMU_GATHER_TABLE_FREE configurations (``plugins/table_free.py``):
freed tables collect here, ``tlb->batch``, until the page is full or the
gather flushes; then the whole batch is freed, after an RCU grace period
where MMU_GATHER_RCU_TABLE_FREE asks for it.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True, eq=False)
class MmuTableBatch:
    max: int
    tables: list[int] = attrs.Factory(list)

    @property
    def nr(self) -> int:
        return len(self.tables)
