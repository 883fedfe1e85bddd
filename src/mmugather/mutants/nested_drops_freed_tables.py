"""``nested-drops-freed-tables``: the forced flush of a nested gather loses
``freed_tables``, as before 7a30df49f63a.

Since dd2283f2605e (v4.20) munmap() frees page tables under mmap_lock held
for read, so a MADV_DONTNEED's gather can be in flight at once.  Its
``tlb_finish_mmu()`` then saw a nested gather and forced a flush: it reset
the range (``__tlb_reset_range()``, which clears ``freed_tables`` and every
``cleared_*`` bit) and set it back to the caller's [start, end).  arm64 took
that for a leaf-only flush at the page stride (``last_level``: TLBI VALE1IS),
and the walk-cache entries that still led into the page tables munmap()
had just freed survived it (LTP mtest06 stalled on aarch64).  v6.5 flushes
the whole mm with ``freed_tables`` set instead.

Here: in a gather that freed page tables, the range it recorded is kept
with the page stride, and every level bit and ``freed_tables`` are lost; a
gather that freed none has nothing to lose and keeps v6.5's full flush.  Harmless where a flush
by address drops the walk caches too (x86's INVLPG, the generic flush);
wrong where a flush without ``freed_tables`` leaves them (arm64's VALE1IS,
powerpc radix's RIC=0).  Only a concurrent MADV_DONTNEED makes the gather
nested: the explorer's ``munmap-nested``.
"""

from __future__ import annotations

from mmugather.arches import arm64, powerpc
from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather
from mmugather.mutants.base import Mutant


class NestedDropsFreedTables(MmuGather):
    """The gather: the nested forced flush keeps the range, not its levels."""

    __slots__ = ()

    def tlb_finish_nested(self) -> None:
        if not self.freed_tables:
            super().tlb_finish_nested()
            return
        start, end = self.start, self.end
        self.reset_range()
        self.adjust_range(start, end - start)
        # tlb_get_unmap_size() with no level recorded: the page stride.
        self.cleared_ptes = True


def leaf_flush_keeps_walk_caches(spec: ArchSpec) -> bool:
    """where a flush without freed_tables leaves the walk caches: arm64 (TLBI
    VALE1IS), powerpc radix (RIC=0)"""
    return arm64.arm64_of(spec) is not None or powerpc in spec.plugins


MUTANT = Mutant(
    name="nested-drops-freed-tables",
    description="tlb_finish_mmu() of a nested gather resets the range and keeps only its "
    "addresses: freed_tables and the levels cleared are lost, the flush is leaf-only",
    rule="",
    breaks="after page tables are freed, the flush must reach the walk caches "
    "(freed_tables), whoever else gathers on the mm at the same time",
    applies=leaf_flush_keeps_walk_caches,
    fixed_by="7a30df49f63a (\"mm: mmu_gather: remove __tlb_reset_range() for force "
    "flush\", v5.2)",
    gather=NestedDropsFreedTables,
    scenario="",
    explore="munmap-nested",
    prop="walk-freed-table",
)
