"""The host-check workloads: fixed layouts of anonymous VMAs and one
operation each.

Every layout lives in an otherwise empty 512 GiB slot (one PUD table's
reach), so which page tables an operation frees is known in advance: one
populated *anchor* page keeps a table alive.  An anchor in the target's
2 MiB keeps its PTE table; one elsewhere in the same 1 GiB lets the PTE
table go but keeps the PMD table.  Offsets are from the slot's base; the
workload process picks the slot (:mod:`.child`).

The madvise workload keeps its PTE table non-empty (an anchor in the same
2 MiB) and covers less than 2 MiB.  Kernels from 6.14 with CONFIG_PT_RECLAIM
free a PTE table that MADV_DONTNEED empties over a whole PMD range, which
widens the flushed range down to the PMD start; v6.5, which the model
follows, frees no table there.  This layout flushes the same on both.
"""

from __future__ import annotations

from typing import Any

import attrs

PAGE = 4096
PMD_SIZE = 1 << 21
PUD_SIZE = 1 << 30
#: the reach of one PUD table with 4-level paging: the layouts' slot
SLOT_SIZE = 1 << 39
#: the target sits 1 GiB above the slot's base, so a PMD-table free widens
#: the range to a boundary below it
TARGET = PUD_SIZE

MUNMAP = "munmap"
DONTNEED = "madvise_dontneed"


@attrs.frozen
class Area:
    """One VMA: ``populate`` is a list of (offset, pages) written one byte
    per page; ``thp`` asks for a PMD-mapped THP (MADV_HUGEPAGE, the whole
    area populated) instead of 4K pages (MADV_NOHUGEPAGE)."""

    name: str
    offset: int
    size: int
    populate: tuple[tuple[int, int], ...] = ()
    thp: bool = False


@attrs.frozen
class Workload:
    name: str
    areas: tuple[Area, ...]
    op: str
    op_offset: int
    op_size: int
    #: what v6.5 flushes, and why
    why: str


def _pages(n: int, offset: int = TARGET) -> Area:
    return Area("target", offset, n * PAGE, ((0, n),))


def _anchor(offset: int) -> Area:
    return Area("anchor", offset, PAGE, ((0, 1),))


#: an anchor in the target's 2 MiB: its PTE table stays
SAME_PMD = _anchor(TARGET + PMD_SIZE - PAGE)
#: an anchor 8 MiB away in the same 1 GiB: the PTE table goes, the PMD table stays
SAME_PUD = _anchor(TARGET + 4 * PMD_SIZE)
#: an anchor 2 GiB away in the slot: the PMD table goes too
SAME_SLOT = _anchor(3 * PUD_SIZE)


def _munmap(n: int) -> Workload:
    return Workload(f"munmap_{n}", (_pages(n), SAME_PMD), MUNMAP, TARGET, n * PAGE,
                    f"{n} page{'s' * (n > 1)}, PTE table kept: {n} stride{'s' * (n > 1)}"
                    + (", past the 33-stride ceiling: a full flush" if n > 33 else ""))


WORKLOADS: tuple[Workload, ...] = (
    *(_munmap(n) for n in (1, 16, 33, 34)),
    Workload("munmap_512", (_pages(512), SAME_PUD), MUNMAP, TARGET, PMD_SIZE,
             "a whole PTE table of pages, the table freed too: 512 strides, a full flush"),
    Workload("dontneed_16", (_pages(16), SAME_PMD), DONTNEED, TARGET, 16 * PAGE,
             "16 PTEs zapped by MADV_DONTNEED, the PTE table kept non-empty: 16 strides"),
    Workload("ptfree_16_off16", (_pages(16, TARGET + 16 * PAGE), SAME_PUD), MUNMAP,
             TARGET + 16 * PAGE, 16 * PAGE,
             "16 PTEs 64 KiB into their PMD, the PTE table freed: pte_free_tlb() widens the "
             "range to the PMD start, the stride stays 4K: 32 strides"),
    Workload("thp_munmap", (Area("target", TARGET, PMD_SIZE, thp=True), SAME_PUD), MUNMAP,
             TARGET, PMD_SIZE, "one PMD-mapped THP: 1 PMD stride"),
    Workload("thp_pmdfree_off1", (Area("target", TARGET + PMD_SIZE, PMD_SIZE, thp=True),
                                  SAME_SLOT), MUNMAP, TARGET + PMD_SIZE, PMD_SIZE,
             "a THP 2 MiB above a 1 GiB boundary, its PMD table freed: pmd_free_tlb() widens "
             "the range to the boundary: 2 PMD strides"),
)


def by_name(name: str) -> Workload:
    for w in WORKLOADS:
        if w.name == name:
            return w
    known = ", ".join(w.name for w in WORKLOADS)
    raise KeyError(f"no workload {name!r} (known: {known})")


def child_spec(w: Workload) -> dict[str, Any]:
    """What the workload process needs (JSON): areas and the operation,
    relative to the slot it will choose."""
    return {
        "name": w.name,
        "areas": [{"name": a.name, "offset": a.offset, "size": a.size, "thp": a.thp,
                   "populate": [list(p) for p in a.populate]} for a in w.areas],
        "op": {"kind": w.op, "offset": w.op_offset, "size": w.op_size},
    }


def layout(w: Workload, slot: int, context: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    """The layout with absolute addresses, as a recording keeps it.
    ``context``: the process's nearest VMAs below and above the slot, which
    bound how far up free_pgtables() may free."""
    vmas = []
    for a in w.areas:
        start = slot + a.offset
        if a.thp:
            populate = [{"offset": 0, "pages": a.size // PAGE, "thp": True}]
        else:
            populate = [{"offset": off, "pages": n} for off, n in a.populate]
        vmas.append({"name": a.name, "start": start, "end": start + a.size,
                     "populate": populate})
    return {
        "slot": slot,
        "vmas": vmas,
        "op": {"kind": w.op, "start": slot + w.op_offset, "end": slot + w.op_offset + w.op_size},
        "context": list(context or []),
    }
