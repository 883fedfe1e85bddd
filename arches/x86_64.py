"""x86-64 as v6.5 runs it natively (bare metal), with 4-level paging.

``tlb_flush()`` (arch/x86/include/asm/tlb.h) hands ``flush_tlb_mm_range()``
(arch/x86/mm/tlb.c) the gathered range, or everything for a fullmm gather,
the stride of the smallest level cleared (``tlb_get_unmap_shift()``) and
whether page tables were freed.  That function decides, in this order:

* a range of more than ``tlb_single_page_flush_ceiling`` (33) strides is
  flushed whole: past that, one CR3 reload is cheaper than the INVLPGs;
* when a CPU other than this one is in ``mm_cpumask()``, every CPU of the
  mask is sent an IPI and waited for (``flush_tlb_multi()``), except CPUs
  holding the mm lazily when no page table was freed; otherwise the flush
  runs here alone, if this CPU has the mm loaded;
* each CPU reached flushes with INVLPG per stride or by reloading CR3; a
  lazy one switches to ``init_mm`` instead, which drops the mm from it.

INVLPG drops the leaf entries of the page holding its address *and* every
paging-structure-cache entry of the current PCID (Intel SDM vol. 3A,
4.10.4.1): one INVLPG at a freed table's address is enough for the walk
caches.  x86 selects MMU_GATHER_MERGE_VMAS, ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH
(reclaim defers its flushes; ``zap_pte_range()`` settles them with
``flush_tlb_batched_pending()``, here with x86's ``flush_tlb_mm()``) and
ARCH_WANT_HUGE_PMD_SHARE.  It selects
MMU_GATHER_RCU_TABLE_FREE only with PARAVIRT, and even then the native
``tlb_remove_table`` pv op is ``tlb_remove_page``: on bare metal page tables
are queued as pages and freed after the IPI flush, as modelled here.

The geometry is 4-level paging: the p4d level is folded into the pgd
(PGDIR_SHIFT = P4D_SHIFT = 39), TASK_SIZE_MAX is 2^47 - 4K.
"""

from __future__ import annotations

import sys

from mmugather.core.arch import ArchSpec
from mmugather.core.constants import MASK64, Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw.cpus import ZAPPING_CPU
from mmugather.core.hw.invalidate import WALK_ASID, HwSemantics, Invalidate
from mmugather.core.mm import MmStruct
from mmugather.plugins.batched_unmap import settle

TLB_FLUSH_ALL = MASK64
#: The default of /sys/kernel/debug/x86/tlb_single_page_flush_ceiling: a
#: count of strides, despite its name (arch/x86/mm/tlb.c)
TLB_SINGLE_PAGE_FLUSH_CEILING = 33
#: TASK_SIZE_MAX with 4-level paging: (1 << 47) - PAGE_SIZE
TASK_SIZE_MAX = 0x7FFFFFFFF000

OP_INVLPG = "invlpg"
OP_CR3 = "flush_tlb_local (cr3)"
OP_LAZY = "switch to init_mm (lazy)"


def geometry(page_size: int) -> Geometry:
    """4K pages, 512 entries per table, the p4d level folded (no LA57)."""
    return Geometry(page_size=page_size, pmd_shift=21, pud_shift=30, p4d_shift=39,
                    pgdir_shift=39, task_size=TASK_SIZE_MAX, folded=("p4d",))


def flush_targets(mm: MmStruct, freed_tables: bool) -> int:
    """The CPUs that run flush_tlb_func() for a flush issued on the zapping
    CPU (bit mask)."""
    me = 1 << ZAPPING_CPU
    mask = mm.cpumask
    if mask & ~me:
        # flush_tlb_multi(): a lazy CPU is sent nothing unless tables were
        # freed: it makes no user access and catches up on the flushes it
        # missed (tlb_gen) when it switches back to the mm.  Its hardware
        # may still walk the tables, so a freed table must reach it.
        return mask if freed_tables else mask & ~mm.lazy_cpus
    # No other CPU holds the mm: flush here if it is loaded here (lazily
    # or not: flush_tlb_func() itself looks at laziness).
    return mask & me


def invalidations(mm: MmStruct, start: int, end: int, stride_shift: int,
                  freed_tables: bool) -> tuple[bool, int, int, list[Invalidate]]:
    """What ``flush_tlb_mm_range()`` makes the CPUs do for [start, end) of
    ``mm`` with INVLPG every 1 << stride_shift bytes, or everything: (a
    full flush?, start, end, one Invalidate per kind of flush the CPUs
    reached carry out; none when no CPU had anything to do)."""
    # Unsigned: an empty range (start TASK_SIZE, end 0) wraps into a full flush.
    if end == TLB_FLUSH_ALL or ((end - start) & MASK64) >> stride_shift > (
            TLB_SINGLE_PAGE_FLUSH_CEILING):
        start, end = 0, TLB_FLUSH_ALL
    full = end == TLB_FLUSH_ALL
    targets = flush_targets(mm, freed_tables)
    lazy = targets & mm.lazy_cpus
    flushing = targets & ~lazy
    # Every invalidation here waits: the IPIs are sent with wait=1, and a
    # flush done locally is done by the CPU that asked for it.
    hw: list[Invalidate] = []
    if flushing and full:
        # A CR3 write without the no-flush bit: every non-global entry of
        # the PCID, leaf and paging-structure caches alike.
        hw.append(Invalidate(OP_CR3, cpus=flushing, walk=WALK_ASID, waits=True))
    elif flushing:
        hw.append(Invalidate(OP_INVLPG, cpus=flushing, start=start, end=end,
                             stride=1 << stride_shift, walk=WALK_ASID, waits=True))
    if lazy:
        # flush_tlb_func() on a lazy CPU switches it to init_mm: afterwards
        # it holds nothing of the mm and cannot walk its tables.
        hw.append(Invalidate(OP_LAZY, cpus=lazy, walk=WALK_ASID, waits=True))
    return full, start, end, hw


def flush_tlb_mm_range(tlb: MmuGather, start: int, end: int, stride_shift: int,
                       freed_tables: bool) -> None:
    """Flush [start, end) of ``tlb.mm`` with INVLPG every 1 << stride_shift
    bytes, or everything; report it as one ``tlb_flush`` event and one
    ``tlb_invalidate`` event per kind of flush the CPUs reached carry out."""
    full, start, end, hw = invalidations(tlb.mm, start, end, stride_shift, freed_tables)
    if not hw:
        return  # no CPU had anything to do: no flush was issued
    if full:
        tlb.emit_tlb_flush("mm", hw=hw)
    else:
        tlb.emit_tlb_flush("range", start, end, hw=hw)


@hookimpl
def tlb_flush(tlb: MmuGather) -> bool:
    """tlb_flush() of arch/x86/include/asm/tlb.h."""
    start, end = 0, TLB_FLUSH_ALL
    if not tlb.fullmm and not tlb.need_flush_all:
        start, end = tlb.start, tlb.end
    flush_tlb_mm_range(tlb, start, end, tlb.tlb_get_unmap_shift(), tlb.freed_tables)
    return True


@hookimpl
def flush_tlb_batched_pending(tlb: MmuGather) -> bool:
    """mm/rmap.c's flush_tlb_batched_pending() with x86's flush_tlb_mm(),
    which is flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, 0, true): every CPU
    of the mm, lazy ones too."""
    if tlb.mm.tlb_flush_batched:
        settle(tlb, invalidations(tlb.mm, 0, TLB_FLUSH_ALL, 0, True)[3])
    return True


@hookimpl
def mmu_hw_semantics(arch: ArchSpec) -> HwSemantics:
    # A lazy CPU uses no user entry before switch_mm_irqs_off() brings it
    # back to the mm, and that compares the mm's tlb_gen with its own and
    # flushes what it missed.  choose_new_asid() flushes a PCID slot before
    # it serves another mm, so a dead mm's entries cannot be hit by another
    # process (x86 still flushes at exit: its freed tables force the IPI).
    # Native flushes are IPIs sent with wait=1.
    return HwSemantics(lazy_cpus_use_leaf=False, asid_reuse_invalidates=True,
                       flush_waits=True)


SPEC = ArchSpec(
    name="x86-64",
    description="v6.5 x86-64 native, 4-level: flush_tlb_mm_range() (INVLPG per stride "
    "up to 33 strides, else CR3), IPIs that wait and skip lazy CPUs unless tables were "
    "freed, MERGE_VMAS, page tables freed as pages after the flush",
    features=("SMP", "MMU_GATHER_MERGE_VMAS", "ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH",
              "ARCH_WANT_HUGE_PMD_SHARE"),
    plugins=(sys.modules[__name__],),
    geometry=geometry,
    page_sizes=(4096,),
)
