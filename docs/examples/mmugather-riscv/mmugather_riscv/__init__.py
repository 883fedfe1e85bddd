"""riscv as mmugather arch plugins (the "Add a new arch" tutorial).

Two configurations, both modelled on arch/riscv of v6.5 with Sv48 paging:

``riscv``
    * ``tlb_flush()`` is ``flush_tlb_mm(tlb->mm)`` whatever the gather
      recorded (arch/riscv/include/asm/tlb.h): range, levels and freed
      tables are not looked at, and every flush drops everything of the
      mm's ASID, leaf and non-leaf entries alike (``sfence.vma`` by ASID,
      locally or on the other harts of ``mm_cpumask()``), which is the
      generic ``flush_tlb_mm()``;
    * riscv selects no MMU_GATHER_* option (arch/riscv/Kconfig): without
      MMU_GATHER_MERGE_VMAS, ``tlb_end_vma()`` flushes at the end of every
      VMA, and page tables are queued as ordinary pages, freed after the
      flush.  For the PMD, PUD and P4D tables that is how later kernels do
      it; v6.5 did not (below).
    * Sv48: four levels of 512 entries, the p4d level folded
      (``pgtable_l5_enabled`` false), TASK_SIZE 2^47 (PGDIR_SIZE *
      PTRS_PER_PGD / 2).

``riscv-v6.5``
    The same, with v6.5's ``__pmd_free_tlb()``, ``__pud_free_tlb()`` and
    ``__p4d_free_tlb()`` (arch/riscv/include/asm/pgalloc.h): they call
    ``pmd_free()``/``pud_free()``/``p4d_free()``, which give the page back
    at once, in ``free_pgtables()``, before the gather's TLB flush; another
    hart's walk cache may still point into it.  Only ``__pte_free_tlb()``
    queues its table (``tlb_remove_page()``).  The conformance kit fails it
    (rule ``invariants``, ``[table-reachable]``): the tutorial's exercise.

Left out: riscv has no ``gup_fast()`` in v6.5, so no lockless walker; the
model's hardware assumes one, so of the rules a table freed too early can
break, ``table-reachable`` (the other harts' walk caches) is the one that
stands for riscv.
"""

from __future__ import annotations

import sys
from typing import Any

from mmugather.core.arch import ArchSpec
from mmugather.core.constants import Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl


def geometry(page_size: int) -> Geometry:
    """Sv48: 512-entry tables on four levels, the p4d level folded."""
    return Geometry(page_size=page_size, folded=("p4d",), task_size=1 << 47)


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    # flush_tlb_mm(): the whole address space, whatever was gathered.
    tlb.emit_tlb_flush("mm")
    return True


class FreeUpperTablesAtOnce:
    """v6.5's ``__pmd_free_tlb()`` and friends: the table is freed now."""

    @hookimpl
    def tlb_free_pgtable(self, tlb: MmuGather, level: str, table: int, addr: int) -> Any:
        if level == "pte":
            return None  # __pte_free_tlb(): tlb_remove_page(), freed after the flush
        # pmd_free_tlb() and friends (asm-generic/tlb.h): the range one level
        # up grows by a page and the gather knows tables went...
        grow = {"pmd": tlb.tlb_flush_pud_range, "pud": tlb.tlb_flush_p4d_range}
        grow.get(level, tlb.adjust_range)(addr, tlb.geometry.page_size)
        tlb.freed_tables = True
        # ...but __pmd_free_tlb() is pmd_free(): the page goes back at once.
        tlb.tlb_remove_table_free_now([table])
        return True


RISCV = ArchSpec(
    name="riscv",
    description="riscv (Sv48): tlb_flush() is flush_tlb_mm(), no MMU_GATHER_* option "
    "(a flush at every VMA end, page tables freed as pages after the flush)",
    features=("SMP",),
    plugins=(sys.modules[__name__],),
    geometry=geometry,
    page_sizes=(4096,),
)

RISCV_V6_5 = ArchSpec(
    name="riscv-v6.5",
    description="riscv as v6.5 shipped it: PMD/PUD/P4D tables freed at once, before the "
    "flush (the tutorial's exercise: the kit fails it)",
    features=("SMP",),
    plugins=(sys.modules[__name__], FreeUpperTablesAtOnce()),
    geometry=geometry,
    page_sizes=(4096,),
)


@hookimpl
def mmugather_add_arches() -> list[ArchSpec]:
    return [RISCV, RISCV_V6_5]
