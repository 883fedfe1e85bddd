"""``arm64-range-round-down``: ``__flush_tlb_range()`` rounds the end of the
range down to the stride instead of up.

After page tables are freed the stride is the size one table maps (2 MiB
for a PTE table) and ``pte_free_tlb()`` records a range one page wide at
the table's address: rounded down, the last table's stride drops out of
the range, and its walk-cache entry survives the ``TLBI VAE1IS``.
67a902a ("arm64: tlbflush: Allow stride to be specified for
__flush_tlb_range()", 2018) rounds the start down and the end up.  Caught
by ``table-reachable``.
"""

from __future__ import annotations

import attrs

from mmugather.arches.arm64 import Arm64
from mmugather.mutants._arm64 import applies as _applies
from mmugather.mutants._arm64 import flush_with
from mmugather.mutants.base import Mutant


@attrs.frozen(slots=True)
class RoundDown(Arm64):
    def round_range(self, start: int, end: int, stride: int) -> tuple[int, int]:
        return start & ~(stride - 1), end & ~(stride - 1)


PLUGIN = flush_with(RoundDown)


MUTANT = Mutant(
    name="arm64-range-round-down",
    description="__flush_tlb_range() rounds the end down to the stride: the last freed table's "
    "stride is not invalidated",
    rule="table-reachable",
    breaks="__flush_tlb_range() rounds start down and end up to the stride, so the "
    "PAGE_SIZE range a freed table records is named",
    applies=_applies,
    fixed_by="67a902a (rounds the end up)",
    plugin=PLUGIN,
    scenario="order0-anon",
)
