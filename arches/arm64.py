"""arm64 (v6.5): broadcast TLBI by address or ASID, leaf-only and level-hinted.

``arch/arm64/Kconfig`` selects MMU_GATHER_RCU_TABLE_FREE (226),
HAVE_FAST_GUP (203) and ARCH_WANT_HUGE_PMD_SHARE (4K pages, or 16K without
VA_BITS_36; with 64K pages the PUD level is folded and no table is
shared), and neither MMU_GATHER_MERGE_VMAS nor
MMU_GATHER_PAGE_SIZE: ``tlb_end_vma()`` flushes each VMA.  ``tlb_flush()``
(``arch/arm64/include/asm/tlb.h`` 53-73) and ``__flush_tlb_range()``
(``arch/arm64/include/asm/tlbflush.h`` 281-361) are modelled step by step
in :class:`Arm64`, one method per step, so that a mutant can replace one
(``mmugather.mutants``):

* a teardown of the whole mm (fullmm) issues ``TLBI ASIDE1IS`` only once
  page tables were freed, and nothing at all before: the dead mm's leaf
  entries stay in the TLBs, unusable (no thread runs in the mm) and
  harmless, because the ASID allocator (``arch/arm64/mm/context.c``) hands
  the number out again only after a rollover that makes every CPU flush
  its whole TLB before it uses an ASID of the new generation;
* otherwise the range, rounded out to the stride (the smallest level
  cleared), one ``TLBI VALE1IS`` (leaf only, while no table was freed) or
  ``TLBI VAE1IS`` (walk cache too) per stride, with the TTL level hint of
  ``tlb_get_level()``; ``MAX_TLBI_OPS`` (PTRS_PER_PTE) strides or more fall
  back to ``TLBI ASIDE1IS``; with FEAT_TLBIRANGE (``arm64-tlbirange``) the
  range instructions ``TLBI RVALE1IS``/``RVAE1IS`` cover it in at most five
  operations.

Every TLBI is broadcast to the Inner Shareable domain: every CPU, with no
interrupt, so it does not wait for a lockless walker that runs with
interrupts off (why arm64 frees page tables through RCU).

The geometry is VA_BITS 48 (``arch/arm64/include/asm/pgtable-hwdef.h``):
4K pages, 4 levels (p4d folded); 16K, 4 levels with a 2-entry top level
(p4d folded); 64K, 3 levels (pud and p4d folded).  A folded level has the
size of the level above it, as ``pgtable-nop4d.h``/``pgtable-nopud.h`` make
it; TASK_SIZE is 2^48.
"""

from __future__ import annotations

from typing import Any

import attrs
from mmugather.core.arch import ArchSpec
from mmugather.core.constants import Geometry
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw.invalidate import WALK_ASID, WALK_NONE, WALK_VA, HwSemantics, Invalidate

VA_BITS = 48

#: PMD_SHIFT, PUD_SHIFT, P4D_SHIFT, PGDIR_SHIFT at VA_BITS 48 per PAGE_SIZE
#: (each level resolves PAGE_SHIFT - 3 bits; folded levels take the shift
#: of the level above)
SHIFTS = {
    4096: (21, 30, 39, 39),
    16384: (25, 36, 47, 47),
    65536: (29, 42, 42, 42),
}

#: the levels each page size folds at VA_BITS 48
FOLDED = {4096: ("p4d",), 16384: ("p4d",), 65536: ("pud", "p4d")}


def geometry(page_size: int) -> Geometry:
    pmd, pud, p4d, pgdir = SHIFTS[page_size]
    return Geometry(page_size=page_size, pmd_shift=pmd, pud_shift=pud, p4d_shift=p4d,
                    pgdir_shift=pgdir, task_size=1 << VA_BITS, folded=FOLDED[page_size])


#: tlb_get_level()'s answer -> the level an entry must have to match the
#: TTL hint (0: no hint, any level)
TTL_LEVELS: dict[int, str | None] = {0: None, 1: "pud", 2: "pmd", 3: "pte"}

#: __TLBI_RANGE_PAGES(31, 3): pages one range operation can name at most
MAX_TLBI_RANGE_PAGES = (31 + 1) << (5 * 3 + 1)


def tlbi_range_pages(num: int, scale: int) -> int:
    """__TLBI_RANGE_PAGES(): pages of a range TLBI with these NUM and SCALE."""
    return (num + 1) << (5 * scale + 1)


@attrs.frozen(slots=True)
class Arm64:
    """arm64's ``tlb_flush()``, as a plugin: its hook methods, and one
    method per step of the kernel's code.

    ``tlb_range``: the CPUs implement FEAT_TLBIRANGE and the kernel uses
    it (CONFIG_ARM64_TLB_RANGE, ``system_supports_tlb_range()``).  FEAT_TTL
    is taken as implemented: a level hint restricts what matches.
    """

    tlb_range: bool = False

    # --- the steps ------------------------------------------------------

    def last_level(self, tlb: MmuGather) -> bool:
        """Only leaf entries need to go while no page table was freed."""
        return not tlb.freed_tables

    def tlb_get_level(self, tlb: MmuGather) -> int:
        """The TTL hint: the level of the leaf entries cleared, when they
        are all of one level; 0 (no hint) when tables were freed (a TTL
        describes a leaf entry, 52218fcd61cb), several levels were cleared
        or none."""
        if tlb.freed_tables:
            return 0
        levels = (tlb.cleared_ptes, tlb.cleared_pmds, tlb.cleared_puds, tlb.cleared_p4ds)
        if sum(levels) != 1:
            return 0
        if tlb.cleared_ptes:
            return 3
        if tlb.cleared_pmds:
            return 2
        if tlb.cleared_puds:
            return 1
        return 0  # arm64 has no p4d level to hint

    def round_range(self, start: int, end: int, stride: int) -> tuple[int, int]:
        """Start rounded down, end rounded up to the stride: a range that
        ends inside a stride still names that stride's address."""
        return start & ~(stride - 1), (end + stride - 1) & ~(stride - 1)

    def flush_tlb_mm(self, tlb: MmuGather) -> Invalidate:
        """TLBI ASIDE1IS: every entry of the ASID, leaf and walk cache, on
        every CPU."""
        return Invalidate("tlbi aside1is", cpus=tlb.machine.cpus.all_cpus, walk=WALK_ASID,
                          waits=False)

    def flush_tlb_range(self, tlb: MmuGather, start: int, end: int, stride: int,
                        last_level: bool, level: int) -> list[Invalidate] | None:
        """__flush_tlb_range(): the TLBIs for [start, end), or None when it
        falls back to flush_tlb_mm()."""
        geo = tlb.geometry
        start, end = self.round_range(start, end, stride)
        pages = (end - start) >> geo.page_shift
        # MAX_TLBI_OPS is PTRS_PER_PTE: bounds the loop, not a ceiling of cost.
        if (not self.tlb_range and end - start >= geo.ptrs_per_pte * stride) \
                or pages >= MAX_TLBI_RANGE_PAGES:
            return None
        cpus = tlb.machine.cpus.all_cpus
        walk = WALK_NONE if last_level else WALK_VA
        op = "vale1is" if last_level else "vae1is"
        ttl = TTL_LEVELS[level]
        if not self.tlb_range:
            if not pages:
                return []
            return [Invalidate(f"tlbi {op}", cpus, start, end, stride=stride, walk=walk,
                               level=ttl)]
        out = []
        scale = 0
        while pages > 0:
            if pages % 2:
                # An odd count: one page by the ordinary instruction first.
                out.append(Invalidate(f"tlbi {op}", cpus, start, start + stride, stride=stride,
                                      walk=walk, level=ttl))
                start += stride
                pages -= stride >> geo.page_shift
                continue
            num = ((pages >> (5 * scale + 1)) & 31) - 1
            if num >= 0:
                n = tlbi_range_pages(num, scale)
                size = n << geo.page_shift
                out.append(Invalidate(f"tlbi r{op}", cpus, start, start + size, walk=walk,
                                      level=ttl))
                start += size
                pages -= n
            scale += 1
        return out

    # --- the hooks ------------------------------------------------------

    @hookimpl
    def tlb_flush(self, tlb: MmuGather) -> bool:
        last_level = self.last_level(tlb)
        stride = tlb.tlb_get_unmap_size()
        level = self.tlb_get_level(tlb)
        if tlb.fullmm:
            # Tearing down the whole mm: only cached table entries matter
            # (the ASID is not reused before every CPU flushed everything).
            if not last_level:
                tlb.emit_tlb_flush("mm", hw=[self.flush_tlb_mm(tlb)])
            return True
        hw = self.flush_tlb_range(tlb, tlb.start, tlb.end, stride, last_level, level)
        if hw is None:
            tlb.emit_tlb_flush("mm", hw=[self.flush_tlb_mm(tlb)])
        else:
            tlb.emit_tlb_flush("range", tlb.start, tlb.end, hw=hw)
        return True

    @hookimpl
    def mmu_hw_semantics(self, arch: ArchSpec) -> HwSemantics:
        # Broadcast TLBIs interrupt nobody (hence RCU table freeing); a dead
        # mm's ASID comes back only after a rollover has every CPU flush.
        return HwSemantics(asid_reuse_invalidates=True, flush_waits=False)


#: the plugins of the two configurations
ARM64 = Arm64(tlb_range=False)
ARM64_TLBIRANGE = Arm64(tlb_range=True)


def arm64_of(spec: ArchSpec) -> Arm64 | None:
    """The arm64 ``tlb_flush()`` an arch configuration uses, if any (for
    mutants that replace one of its steps)."""
    for plugin in spec.plugins:
        if isinstance(plugin, Arm64):
            return plugin
    return None


def _spec(name: str, plugin: Any, description: str) -> ArchSpec:
    return ArchSpec(
        name=name,
        description=description,
        features=("SMP", "MMU_GATHER_RCU_TABLE_FREE", "ARCH_WANT_HUGE_PMD_SHARE"),
        plugins=(plugin,),
        geometry=geometry,
        page_sizes=(4096, 16384, 65536),
    )


SPEC = _spec("arm64", ARM64, "v6.5 arm64: RCU table free, per-VMA flush, broadcast TLBI "
             "VALE1IS/VAE1IS per stride with a TTL hint, ASIDE1IS; no TLBI at exit until "
             "tables are freed")
SPEC_TLBIRANGE = _spec("arm64-tlbirange", ARM64_TLBIRANGE, "arm64 with FEAT_TLBIRANGE: range "
                       "TLBIs RVALE1IS/RVAE1IS")
