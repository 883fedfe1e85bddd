"""Mutant ``x86-pmd-stride``: x86-64 flushing a range that holds PTEs with
the PMD stride.

``tlb_get_unmap_shift()`` picks the *smallest* level cleared, so that one
INVLPG per stride reaches every entry of the range: a PTE cleared next to a
PMD (a THP, or the PMD entry of a freed PTE table) makes the stride 4K.
This variant takes PMD_SHIFT whenever a PMD-level entry was cleared, PTEs
or not: ``flush_tlb_mm_range()`` then issues one INVLPG per 2 MiB and the
4K entries between those addresses stay in every TLB.  No commit fixed this
in the kernel; it is the rule ``flush_tlb_mm_range()`` relies on (its loop
steps by ``1 << stride_shift`` and invalidates one page per step).

It overrides one step, the stride ``tlb_flush()`` hands on, and acts on
x86-64 only: on any other arch it lets the arch's own ``tlb_flush()`` run.
"""

from __future__ import annotations

from mmugather.arches import x86_64
from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.mutants.base import Mutant

NAME = "x86-pmd-stride"


def applies(spec: ArchSpec) -> bool:
    """x86-64 (any configuration whose flush is x86's)"""
    return x86_64 in spec.plugins


@hookimpl(tryfirst=True)
def tlb_flush(tlb: MmuGather) -> bool | None:
    if not applies(tlb.machine.arch):
        return None
    shift = tlb.tlb_get_unmap_shift()
    if tlb.cleared_pmds:
        shift = tlb.geometry.pmd_shift  # the bug: the PTEs' stride is lost
    start, end = 0, x86_64.TLB_FLUSH_ALL
    if not tlb.fullmm and not tlb.need_flush_all:
        start, end = tlb.start, tlb.end
    x86_64.flush_tlb_mm_range(tlb, start, end, shift, tlb.freed_tables)
    return True


class _Plugin:
    tlb_flush = staticmethod(tlb_flush)


MUTANT = Mutant(
    name=NAME,
    description="x86-64 flushes a range holding PTEs with the PMD stride (PMD_SHIFT whenever a "
    "PMD-level entry was cleared too): one INVLPG per 2 MiB misses the 4K entries in between",
    rule="page-reachable",
    breaks="tlb_get_unmap_shift() gives the smallest level cleared, the stride at which "
    "flush_tlb_mm_range() issues INVLPG, so that every cleared entry is named",
    applies=applies,
    plugin=_Plugin(),
    # Half of a heap munmapped: its PTE tables go too (cleared_pmds).
    scenario="order0-anon",
)
