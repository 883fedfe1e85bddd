"""x86-64 as an mmugather arch plugin (the "Add a new arch" tutorial).

Modelled on arch/x86/include/asm/tlb.h and arch/x86/mm/tlb.c of v6.5:

* ``tlb_flush()`` calls ``flush_tlb_mm_range(mm, start, end, stride_shift,
  freed_tables)`` with the whole address space for a fullmm gather, else the
  gathered range, the stride of the smallest level unmapped
  (``tlb_get_unmap_shift()``) and whether page tables were freed;
* ``flush_tlb_mm_range()`` flushes everything when the range holds more than
  ``tlb_single_page_flush_ceiling`` (33) strides: past that, one full flush is
  cheaper than INVLPG per page;
* x86 selects MMU_GATHER_MERGE_VMAS (one range across VMAs); without PARAVIRT
  page tables are freed as ordinary pages after the IPI-based flush.
"""

from __future__ import annotations

import sys

from mmugather.core.arch import ArchSpec
from mmugather.core.constants import MASK64, Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl

TLB_FLUSH_ALL = MASK64
#: /sys/kernel/debug/x86/tlb_single_page_flush_ceiling
TLB_SINGLE_PAGE_FLUSH_CEILING = 33


def flush_tlb_mm_range(
    tlb: MmuGather, start: int, end: int, stride_shift: int, freed_tables: bool
) -> None:
    # Unsigned arithmetic: an empty range (end 0, start TASK_SIZE) wraps
    # and so becomes a full flush, as in the kernel.
    if end == TLB_FLUSH_ALL or ((end - start) & MASK64) >> stride_shift > (
        TLB_SINGLE_PAGE_FLUSH_CEILING
    ):
        tlb.emit_tlb_flush("mm", stride_shift=stride_shift)
    else:
        tlb.emit_tlb_flush("range", start, end, stride_shift=stride_shift)


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    start, end = 0, TLB_FLUSH_ALL
    if not tlb.fullmm and not tlb.need_flush_all:
        start, end = tlb.start, tlb.end
    flush_tlb_mm_range(tlb, start, end, tlb.tlb_get_unmap_shift(), tlb.freed_tables)
    return True


X86_64 = ArchSpec(
    name="x86-64",
    description="x86-64: flush_tlb_mm_range() with the unmap stride, a full flush past "
    "33 strides, MERGE_VMAS, page tables freed as pages",
    features=("SMP", "MMU_GATHER_MERGE_VMAS"),
    plugins=(sys.modules[__name__],),
    geometry=Geometry,
    page_sizes=(4096,),
)


@hookimpl
def mmugather_add_arches() -> list[ArchSpec]:
    return [X86_64]
