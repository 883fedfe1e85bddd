"""riscv as an mmugather arch plugin (the "Add a new arch" tutorial).

Modelled on v6.5 arch/riscv:

* ``tlb_flush()`` is ``flush_tlb_mm(tlb->mm)`` whatever the gather recorded
  (arch/riscv/include/asm/tlb.h): range, levels and freed tables are not
  looked at, and every flush drops everything of the mm's ASID, leaf and
  non-leaf entries alike (``sfence.vma`` by ASID, locally or on the other
  harts of ``mm_cpumask()``), which is the generic ``flush_tlb_mm()``;
* riscv selects no MMU_GATHER_* option (arch/riscv/Kconfig): without
  MMU_GATHER_MERGE_VMAS, ``tlb_end_vma()`` flushes at the end of every VMA,
  and PTE tables are queued as ordinary pages, freed after the flush.

Left out: v6.5's ``__pmd_free_tlb()``/``__pud_free_tlb()``/``__p4d_free_tlb()``
free upper-level tables at once rather than queueing them (fixed in a later
kernel); riscv has no ``gup_fast()`` in v6.5, so no lockless walker either.
"""

from __future__ import annotations

import sys

from mmugather.core.arch import ArchSpec
from mmugather.core.constants import Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    # flush_tlb_mm(): the whole address space, whatever was gathered.
    tlb.emit_tlb_flush("mm")
    return True


RISCV = ArchSpec(
    name="riscv",
    description="riscv (v6.5): tlb_flush() is flush_tlb_mm(), no MMU_GATHER_* option "
    "(a flush at every VMA end, page tables freed as pages)",
    features=("SMP",),
    plugins=(sys.modules[__name__],),
    geometry=Geometry,
    page_sizes=(4096,),
)


@hookimpl
def mmugather_add_arches() -> list[ArchSpec]:
    return [RISCV]
