"""powerpc book3s64 with the radix MMU (v6.5): tlbie by PID or by page of one size.

``arch/powerpc/Kconfig`` selects MMU_GATHER_PAGE_SIZE (281),
MMU_GATHER_RCU_TABLE_FREE (282) and MMU_GATHER_MERGE_VMAS (283), and
HAVE_FAST_GUP (233).  ``tlb_needs_table_invalidate()`` is
``radix_enabled()`` (``arch/powerpc/include/asm/tlb.h`` 36): the radix
walker caches the Linux tables, so they are invalidated before they go to
RCU.  ``tlb_flush()`` is ``radix__tlb_flush()``
(``arch/powerpc/mm/book3s64/radix_tlb.c`` 1300-1328):

* fullmm: a RIC=2 flush of the PID (TLB, page-walk cache and the cached
  process-table entry, which ``arch_exit_mmap()`` zeroed), every flush of
  the teardown;
* a page size it does not know: the whole PID, RIC=0 (RIC=2 once tables
  were freed);
* otherwise ``__radix__flush_tlb_range_psize()`` (1330-1395): more than 33
  pages (a global flush; 256 for a local one) invalidate the whole PID
  (RIC=0, RIC=2 once tables were freed); fewer get one PID-wide RIC=1
  page-walk-cache flush when tables were freed, then one RIC=0 invalidation
  per page of the gather's page size.  A RIC=0 invalidation by address
  names a page size and matches only entries of that size: that is why
  MMU_GATHER_PAGE_SIZE flushes whenever the size of the pages changes.

``flush_type_needed()`` (884-950) picks ``tlbiel`` on this CPU alone when
the mm is active on this CPU only, else the broadcast ``tlbie`` (every
CPU, completed by ``tlbsync``; no interrupt, so it does not wait for a
lockless walker: RCU table freeing).  The single-threaded trim
(``exit_flush_lazy_tlbs()``: an IPI that drops lazy CPUs from
``mm_cpumask()`` before a local flush) and the periodic trim are not
modelled: such a flush is the global tlbie here, which reaches those CPUs
too.

The geometry is radix's (``book3s/64/radix-4k.h``, ``radix-64k.h``): 4
levels, 52 bits; a PTE table maps 2 MiB (512 entries of 4K, 32 of 64K), a
PMD entry 2 MiB, a PUD entry 1 GiB, a PGD entry 512 GiB (p4d folded).
TASK_SIZE is 64 TiB with 4K pages, 4 PiB with 64K pages
(``asm/task_size_64.h``).
"""

from __future__ import annotations

import sys

from mmugather.core.arch import ArchSpec
from mmugather.core.constants import Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw.cpus import ZAPPING_CPU
from mmugather.core.hw.invalidate import WALK_ASID, WALK_NONE, HwSemantics, Invalidate

#: TASK_SIZE_USER64 per PAGE_SIZE
TASK_SIZE = {4096: 1 << 46, 65536: 1 << 52}


def geometry(page_size: int) -> Geometry:
    return Geometry(page_size=page_size, pmd_shift=21, pud_shift=30, p4d_shift=39,
                    pgdir_shift=39, task_size=TASK_SIZE[page_size], folded=("p4d",))


#: RIC values of tlbie/tlbiel (book3s/64/tlbflush-radix.h)
RIC_FLUSH_TLB = 0
RIC_FLUSH_PWC = 1
RIC_FLUSH_ALL = 2

#: tlb_single_page_flush_ceiling (global) and
#: tlb_local_single_page_flush_ceiling (POWER9_TLB_SETS_RADIX * 2)
GLOBAL_CEILING = 33
LOCAL_CEILING = 256


def flush_local(tlb: MmuGather) -> bool:
    """flush_type_needed(): the mm is active on this CPU alone (tlbiel)."""
    return tlb.mm.cpumask == 1 << ZAPPING_CPU


def _cpus(tlb: MmuGather, local: bool) -> tuple[str, int]:
    if local:
        return "tlbiel", 1 << ZAPPING_CPU
    return "tlbie", tlb.machine.cpus.all_cpus


def pid_flush(tlb: MmuGather, ric: int, local: bool) -> Invalidate:
    """_tlbie_pid()/_tlbiel_pid(): everything of the PID the RIC names."""
    insn, cpus = _cpus(tlb, local)
    return Invalidate(f"{insn} ric={ric}", cpus=cpus, leaf=ric != RIC_FLUSH_PWC,
                      walk=WALK_NONE if ric == RIC_FLUSH_TLB else WALK_ASID, waits=False)


def va_range(tlb: MmuGather, start: int, end: int, page_size: int, also_pwc: bool,
             local: bool) -> list[Invalidate]:
    """_tlbie_va_range()/_tlbiel_va_range(): the page-walk cache of the PID
    first if tables were freed, then one RIC=0 invalidation per page of
    ``page_size``, which matches entries of that size only."""
    insn, cpus = _cpus(tlb, local)
    out = [pid_flush(tlb, RIC_FLUSH_PWC, local)] if also_pwc else []
    out.append(Invalidate(f"{insn} ric={RIC_FLUSH_TLB}", cpus, start, end, stride=page_size,
                          walk=WALK_NONE, page_size=page_size, waits=False))
    return out


def radix_get_mmu_psize(tlb: MmuGather, page_size: int) -> int:
    """The page sizes radix invalidates by address: the base page, 2M, 1G;
    0 for any other (the kernel's -1)."""
    return page_size if page_size in (tlb.geometry.page_size, 1 << 21, 1 << 30) else 0


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    """radix__tlb_flush()."""
    local = flush_local(tlb)
    if tlb.fullmm:
        tlb.emit_tlb_flush("mm", hw=[pid_flush(tlb, RIC_FLUSH_ALL, local)])
        return True
    psize = radix_get_mmu_psize(tlb, tlb.page_size)
    also_pwc = tlb.freed_tables
    ric = RIC_FLUSH_ALL if also_pwc else RIC_FLUSH_TLB
    if not psize:
        tlb.emit_tlb_flush("mm", hw=[pid_flush(tlb, ric, local)])
        return True
    nr_pages = (tlb.end - tlb.start) // psize
    if nr_pages > (LOCAL_CEILING if local else GLOBAL_CEILING):
        tlb.emit_tlb_flush("mm", hw=[pid_flush(tlb, ric, local)])
    else:
        tlb.emit_tlb_flush("range", tlb.start, tlb.end,
                           hw=va_range(tlb, tlb.start, tlb.end, psize, also_pwc, local))
    return True


@hookimpl
def tlb_needs_table_invalidate(tlb: MmuGather) -> bool:
    # radix_enabled(): the hardware walker caches the tables' entries.
    return True


@hookimpl
def mmu_hw_semantics(arch: ArchSpec) -> HwSemantics:
    # tlbie completes in hardware without interrupting anyone.
    return HwSemantics(flush_waits=False)


SPEC = ArchSpec(
    name="powerpc-radix",
    description="v6.5 book3s64 radix: MMU_GATHER_PAGE_SIZE, RCU table free, MERGE_VMAS; "
    "tlbie RIC=0/1/2 by PID or per page of one size, 33-page ceiling",
    features=("SMP", "MMU_GATHER_PAGE_SIZE", "MMU_GATHER_RCU_TABLE_FREE",
              "MMU_GATHER_MERGE_VMAS"),
    plugins=(sys.modules[__name__],),
    geometry=geometry,
    page_sizes=(4096, 65536),
)
