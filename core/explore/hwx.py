"""Exact per-CPU TLBs and walk caches, and the hardware page-table walk.

The checker's :class:`~mmugather.core.hw.tlb.TlbModel` keeps what *may* be
cached; here each CPU's TLB holds exactly the entries its accesses filled,
until an invalidation that reaches them (an :class:`Invalidate`, the same
records the arches issue) or a clear that invalidates as it goes (s390's
IPTE) drops them.  A walk uses the deepest walk-cache entry that covers
the address, then the page tables of the shared memory from there, and
fills the walk cache with the upper-level entries it read.
"""

from __future__ import annotations

from typing import Any

from mmugather.core.aspace import PFN_BASE, PTE_DIRTY, PTE_PRESENT
from mmugather.core.constants import Geometry
from mmugather.core.explore.mem import (
    HUGE_PMDS,
    HUGE_PUDS,
    P4D_TABLES,
    PMD_TABLES,
    PUD_TABLES,
    Mem,
)
from mmugather.core.explore.state import Leaf, WalkEntry
from mmugather.core.hw.invalidate import WALK_ASID, WALK_NONE, Invalidate

#: Walk-cache levels, top down, of a geometry folding nothing.
LEVELS = ("pgd", "p4d", "pud", "pmd")
#: The mem table holding what an entry of each table level points to.
_TABLE_OF = {"p4d": P4D_TABLES, "pud": PUD_TABLES, "pmd": PMD_TABLES}
_LEVELS_CACHE: dict[tuple[bool, bool], tuple[tuple[str, ...], dict[str, int]]] = {}


def _levels(geo: Geometry) -> tuple[tuple[str, ...], dict[str, int]]:
    key = (geo.p4d_folded, geo.pud_folded)
    hit = _LEVELS_CACHE.get(key)
    if hit is None:
        lv = tuple(level for level in LEVELS
                   if not (level == "p4d" and geo.p4d_folded)
                   and not (level == "pud" and geo.pud_folded))
        # A folded level has no table: the entry above points at the table
        # below it (x86-64's 4-level pgd entry at a PUD table).
        children = {lv[i]: _TABLE_OF[lv[i + 1]] for i in range(len(lv) - 1)}
        hit = _LEVELS_CACHE[key] = (lv, children)
    return hit


def levels(geo: Geometry) -> tuple[str, ...]:
    """The levels a walk reads an entry of, top down: a folded level has no
    table, so no entry of its own and nothing in a walk cache."""
    return _levels(geo)[0]


def child_table(geo: Geometry, level: str) -> int:
    """The mem table holding the table an entry of ``level`` points to
    (keyed by ``va >> shift of level``; not for "pmd": the PTE tables)."""
    return _levels(geo)[1][level]


def shifts(geo: Geometry) -> dict[str, int]:
    """The shift of the region one entry of each level maps."""
    return {"pgd": geo.pgdir_shift, "p4d": geo.p4d_shift, "pud": geo.pud_shift,
            "pmd": geo.pmd_shift}


def lookup(entries: frozenset[Leaf], va: int) -> Leaf | None:
    """The entry translating ``va``; of several, the smallest (a choice
    the hardware may make, and one that does not depend on set order)."""
    found = None
    for e in entries:
        if e[0] <= va < e[0] + e[2] and (found is None or e < found):
            found = e
    return found


def invalidate(tlb: tuple[frozenset[Leaf], ...], walk: tuple[frozenset[WalkEntry], ...],
               inv: Invalidate) -> tuple[tuple[frozenset[Leaf], ...],
                                         tuple[frozenset[WalkEntry], ...]]:
    """What the CPUs ``inv`` reaches hold after it."""
    new_tlb = list(tlb)
    new_walk = list(walk)
    reaches = inv.reaches
    for cpu in range(len(tlb)):
        if not inv.cpus >> cpu & 1:
            continue
        if inv.leaf and tlb[cpu]:
            kept = frozenset(e for e in tlb[cpu] if not reaches(e[0], e[2], e[3], e[2]))
            if len(kept) != len(tlb[cpu]):
                new_tlb[cpu] = kept
        if inv.walk != WALK_NONE and walk[cpu]:
            if inv.walk == WALK_ASID:
                kept_w = frozenset(w for w in walk[cpu]
                                   if not (inv.level is None or inv.level == w[0]))
            else:
                kept_w = frozenset(w for w in walk[cpu] if not reaches(w[1], w[2], w[0]))
            if len(kept_w) != len(walk[cpu]):
                new_walk[cpu] = kept_w
    return tuple(new_tlb), tuple(new_walk)


def drop_leaf(tlb: tuple[frozenset[Leaf], ...], va: int, size: int,
              cpus: int) -> tuple[frozenset[Leaf], ...]:
    """Leaf entries overlapping [va, va + size) gone from ``cpus``."""
    out = list(tlb)
    for cpu in range(len(tlb)):
        if cpus >> cpu & 1 and tlb[cpu]:
            kept = frozenset(e for e in tlb[cpu] if not (e[0] < va + size and va < e[0] + e[2]))
            if len(kept) != len(tlb[cpu]):
                out[cpu] = kept
    return tuple(out)


def table_hooked(mem: Mem, geo: Geometry, level: str, va: int, table: int) -> bool:
    """Is ``table`` still what the ``level`` entry covering ``va`` points to?"""
    if level == "pmd":
        hit = mem.pte_tables().get(va >> geo.pmd_shift)
        return hit is not None and hit[1] == table
    shift = shifts(geo)[level]
    return mem.table(child_table(geo, level)).get(va >> shift) == table


class Walk:
    """The result of a hardware (or gup-like) walk of ``va``."""

    __slots__ = ("leaf", "pte_table", "stale_table", "tables", "walked")

    def __init__(self) -> None:
        #: the leaf entry found: (va, pfn, size, level, dirty), or None
        self.leaf: Leaf | None = None
        #: the PTE table holding the leaf (None: a huge entry or no leaf)
        self.pte_table: int | None = None
        #: a table reached through a walk-cache entry that is freed or reused
        self.stale_table: tuple[str, int] | None = None
        #: walk-cache entries read from memory on the way (to cache)
        self.walked: list[WalkEntry] = []
        #: tables read (for footprints)
        self.tables: list[int] = []


def walk(mem: Mem, geo: Geometry, cached: frozenset[WalkEntry], va: int,
         gone: frozenset[int] | set[int]) -> Walk:
    """Walk ``va`` the way a CPU's page walker does: from the deepest
    walk-cache entry covering it (``cached``), else from the top.  ``gone``:
    tables freed or reused; a walk through a cached pointer to one of them
    stops there (``stale_table``)."""
    out = Walk()
    sh = shifts(geo)
    lv = levels(geo)
    start = 0
    table: int | None = None
    for i in range(len(lv) - 1, -1, -1):
        level = lv[i]
        hit = None
        for w in cached:
            if w[0] == level and w[1] <= va < w[1] + w[2] and (hit is None or w < hit):
                hit = w
        if hit is not None:
            table = hit[3]
            start = i + 1
            if table in gone:
                out.stale_table = (level, table)
                return out
            out.tables.append(table)
            if not table_hooked(mem, geo, level, va, table):
                return out  # an unhooked table: every entry of it is clear
            break
    # From lv[start] down, through memory.
    for i in range(start, len(lv)):
        level = lv[i]
        shift = sh[level]
        if shift == geo.pud_shift and level != "pmd":
            # The PUD entry (a pgd entry where the PUD level folds).
            huge = mem.table(HUGE_PUDS).get(va >> geo.pud_shift)
            if huge is not None:
                return _huge(out, huge, va, geo.pud_size, "pud")
        if level == "pmd":
            huge = mem.table(HUGE_PMDS).get(va >> geo.pmd_shift)
            if huge is not None:
                return _huge(out, huge, va, geo.pmd_size, "pmd")
            hit2 = mem.pte_tables().get(va >> geo.pmd_shift)
            if hit2 is None:
                return out
            child = hit2[1]
        else:
            found = mem.table(child_table(geo, level)).get(va >> shift)
            if found is None:
                return out
            child = found
        region = 1 << shift
        out.walked.append((level, va & ~(region - 1), region, child))
        out.tables.append(child)
    pte = mem.pte(geo, va)
    if pte is None:
        return out
    tid, ent = pte
    out.pte_table = tid
    if ent & PTE_PRESENT:
        page_va = va & ~(geo.page_size - 1)
        out.leaf = (page_va, ent >> 8, geo.page_size, "pte", bool(ent & PTE_DIRTY))
    return out


def _huge(out: Walk, ent: int, va: int, size: int, level: str) -> Walk:
    if ent & PTE_PRESENT:
        out.leaf = (va & ~(size - 1), ent >> 8, size, level, bool(ent & PTE_DIRTY))
    return out


def page_of(leaf: tuple[Any, ...], va: int, geo: Geometry) -> int:
    """The page ``va`` reaches through a leaf entry (a huge entry maps many)."""
    return int(leaf[1]) + ((int(va) - int(leaf[0])) >> geo.page_shift)


def is_page(mem: Mem, pfn: int) -> bool:
    return 0 <= pfn - PFN_BASE < mem.npages()
