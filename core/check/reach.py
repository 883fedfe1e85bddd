"""The rules that ask the hardware model what a CPU can still reach.

A run announces its machine with a ``hw_config`` event; from then on the
checker keeps a :class:`~mmugather.core.hw.tlb.TlbModel` in step with the
stream (cleared entries, unhooked tables, ``tlb_invalidate`` events, the mm's
exit) and asks it, at each free, rmap removal and end of a gather, whether
something stale is still reachable.  Each message names the entry: the CPUs
that may use or walk it, the ASID, the address, the level and what it maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmugather.core.constants import Geometry
from mmugather.core.hw.cpus import ZAPPING_CPU, CpuConfig, describe
from mmugather.core.hw.invalidate import HwSemantics, Invalidate
from mmugather.core.hw.tlb import Reach, TlbModel

Violate = Callable[..., None]


def geometry_of(ev: dict[str, Any]) -> Geometry:
    """The sizes a ``hw_config`` event carries, as a Geometry."""
    page_size = ev["page_size"]

    def shift(size: int) -> int:
        return int(size).bit_length() - 1

    return Geometry(page_size=page_size, pmd_shift=shift(ev["pmd_size"]),
                    pud_shift=shift(ev["pud_size"]), p4d_shift=shift(ev["p4d_size"]),
                    pgdir_shift=shift(ev["pgdir_size"]))


def tlb_model_of(ev: dict[str, Any]) -> TlbModel:
    """The TlbModel a ``hw_config`` event describes."""
    cpus = CpuConfig(nr_cpus=ev["nr_cpus"], threads=tuple(ev["running"]), lazy=tuple(ev["lazy"]),
                     asid=ev["asid"])
    semantics = HwSemantics(lazy_cpus_use_leaf=ev["lazy_cpus_use_leaf"],
                            asid_reuse_invalidates=ev["asid_reuse_invalidates"])
    return TlbModel(geometry_of(ev), cpus, semantics)


def entry_text(r: Reach) -> str:
    """``a stale pte entry 0x401000 (ASID 1) -> page 0x100201``."""
    what = "page" if r.kind == "leaf" else "table"
    target = "no struct page" if r.target is None else f"{what} {r.target:#x}"
    kind = "TLB" if r.kind == "leaf" else "walk-cache"
    dirty = " dirty" if r.dirty else ""
    return (f"a stale{dirty} {r.level} {kind} entry for {r.va:#x} (ASID {r.asid}) "
            f"-> {target}")


class HardwareRules:
    """Reachability rules over one TlbModel; ``violate(rule, message, page)``
    reports."""

    def __init__(self, tlb: TlbModel, violate: Violate) -> None:
        self.tlb = tlb
        self.violate = violate

    # --- what may use or walk what ----------------------------------------

    def other_writers(self) -> int:
        """CPUs other than the zapping one that may store through a stale
        entry: the lost write needs a store on another CPU while writeback
        cleans the page (5df397dec7c4: "only SMP needs it")."""
        return self.tlb.leaf_users() & ~(1 << ZAPPING_CPU)

    # --- checks ---------------------------------------------------------

    def page_released(self, page: int) -> bool:
        """The gather dropped the mm's reference to ``page``; True if that
        broke ``page-reachable``."""
        reach = self.tlb.page_reach(page, self.tlb.leaf_users())
        if reach is None:
            return False
        self.violate(
            "page-reachable",
            f"page {page:#x} is released while {describe(reach.cpus)} may still use "
            f"{entry_text(reach)}: a load or store there reaches a page the mm no longer owns",
            page,
        )
        return True

    def dirty_rmap_removed(self, page: int) -> bool:
        reach = self.tlb.dirty_reach(page, self.other_writers())
        if reach is None:
            return False
        self.violate(
            "dirty-page-reachable",
            f"dirty file page {page:#x} loses its rmap while {describe(reach.cpus)} may still "
            f"store through {entry_text(reach)}: writeback can clean the page and miss that "
            "store (folio_mkclean() finds no mapping to write-protect)",
            page,
        )
        return True

    def table_freed(self, table: int, level: str, addr: int | None = None) -> bool:
        """``table`` is freed (or handed back to the allocator); ``addr``:
        an address it mapped, for the report."""
        broke = False
        reach = self.tlb.table_reach(table)
        if reach is not None:
            self.violate(
                "table-reachable",
                f"{level or 'page'} table {table:#x} is freed while {describe(reach.cpus)} may "
                f"still walk {entry_text(reach)}: the walker reads whatever the page holds next",
            )
            broke = True
        seq = self.tlb.lockless.pop(table, None)
        if seq is not None:
            self.violate(
                "table-free-walkers",
                f"{level or 'page'} table {table:#x}{self._maps(level, addr)} is freed while "
                "a lockless walker "
                f"(gup_fast, IRQs off) on {describe(self.tlb.gup_cpus())} may still be inside: "
                f"no invalidation that waits for it, no synchronising IPI and no RCU grace "
                f"period since its unhook (event #{seq})",
            )
            broke = True
        self.tlb.walk.pop(table, None)
        return broke

    def _maps(self, level: str, addr: int | None) -> str:
        """`` (for [start, end), ASID n)``: what a table of ``level`` that
        mapped ``addr`` translated."""
        geo = self.tlb.geometry
        size = {"pte": geo.pmd_size, "pmd": geo.pud_size, "pud": geo.p4d_size,
                "p4d": geo.pgdir_size}.get(level)
        if addr is None or size is None:
            return ""
        start = addr & ~(size - 1)
        return f" (for [{start:#x}, {start + size:#x}), ASID {self.tlb.asid})"

    def table_queued(self, table: int, level: str) -> bool:
        """``table`` is handed to RCU (``tlb_remove_table_free()``): one
        grace period later it is freed, and nothing orders an invalidation
        issued after this point before that free, so no walk-cache entry
        may lead to it any more (``tlb_table_invalidate()``)."""
        reach = self.tlb.table_reach(table)
        if reach is None:
            return False
        self.violate(
            "table-reachable",
            f"{level or 'page'} table {table:#x} is handed to RCU while {describe(reach.cpus)} "
            f"may still walk {entry_text(reach)}: the grace period can end before any later "
            "invalidation, and the walker then reads whatever the page holds next",
        )
        # Reported once, here, not again when it is freed.
        self.tlb.walk.pop(table, None)
        return True

    def vma_end(self, start: int, end: int, pfnmap: bool) -> None:
        """tlb_end_vma(): a VM_PFNMAP VMA's entries must be gone by now (the
        PFNs are not the mm's: their owner may free them once a racing
        unmap_mapping_range() finds the PTEs cleared, b67fbebd4cf9)."""
        if not pfnmap:
            return
        left = next(self.tlb.usable_leaves(self.tlb.leaf_users(), start, end), None)
        if left is not None:
            self.violate(
                "stale-after-unmap",
                f"tlb_end_vma() of the VM_PFNMAP VMA [{start:#x}, {end:#x}) returns while "
                f"{describe(left.cpus)} may still use {entry_text(left)}",
            )

    def gather_end(self) -> None:
        """tlb_finish_mmu(): a live mm's unmap must leave nothing usable; a
        dead mm's teardown nothing held, unless the ASID is never reused
        without an invalidation."""
        tlb = self.tlb
        if tlb.mm_alive:
            left = list(tlb.usable_leaves(tlb.leaf_users()))
            if left:
                self.violate(
                    "stale-after-unmap",
                    f"tlb_finish_mmu() returns while {describe(left[0].cpus)} may still use "
                    f"{entry_text(left[0])}" + (f" and {len(left) - 1} more" if len(left) > 1
                                                else "")
                    + ": the unmapped range is still accessible",
                )
            return
        if tlb.semantics.asid_reuse_invalidates:
            return
        held = [r for r in tlb.held_entries() if r.kind == "leaf"]
        if held:
            self.violate(
                "stale-after-exit",
                f"the dead mm's last gather ends while {describe(held[0].cpus)} still hold "
                f"{entry_text(held[0])}" + (f" and {len(held) - 1} more" if len(held) > 1
                                            else "")
                + ": its ASID can be given to another mm, whose accesses would hit them",
            )

    def invalidate(self, ev: dict[str, Any]) -> None:
        self.tlb.invalidate(Invalidate.from_event(ev))
