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
from mmugather.mutants._arm64 import applies as _applies
from mmugather.mutants._arm64 import flush_with
from mmugather.mutants.base import Mutant


@attrs.frozen(slots=True)
class LastLevelAlways(Arm64):
    def last_level(self, tlb: MmuGather) -> bool:
        return True


PLUGIN = flush_with(LastLevelAlways)


MUTANT = Mutant(
    name="arm64-last-level",
    description="arm64's tlb_flush() takes last_level even after page tables were freed: "
    "leaf-only TLBI VALE1IS, and no TLBI at all at exit, leave walk-cache entries to the "
    "freed tables",
    rule="table-reachable",
    breaks="with freed_tables set, tlb_flush() must use TLBI VAE1IS (walk caches too), and "
    "flush_tlb_mm() at exit",
    applies=_applies,
    fixed_by="7a30df49f63a (\"mm: mmu_gather: remove __tlb_reset_range() for force flush\"): "
    "the hazard of a gather that loses freed_tables",
    plugin=PLUGIN,
    scenario="order0-anon",
)
