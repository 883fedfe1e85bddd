"""``arm64-last-level``: arm64's ``tlb_flush()`` takes ``last_level`` even
after page tables were freed.

Leaf-only ``TLBI VALE1IS`` leaves the walk-cache entries that still point to
the freed tables, and a fullmm teardown issues no TLBI at all: a CPU's
walker, speculative or not, goes on reading the freed pages as tables.
This is what happened when a nested gather lost ``freed_tables``, the
hazard 7a30df49f63a removed ("mm: mmu_gather: remove __tlb_reset_range()
for force flush").  Caught by ``table-reachable``.
"""

from __future__ import annotations

import attrs

from mmugather.arches.arm64 import Arm64
from mmugather.core.gather import MmuGather
from mmugather.mutants._arm64 import flush_with


@attrs.frozen(slots=True)
class LastLevelAlways(Arm64):
    def last_level(self, tlb: MmuGather) -> bool:
        return True


PLUGIN = flush_with(LastLevelAlways)
