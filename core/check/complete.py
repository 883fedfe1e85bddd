"""Completeness: what a teardown must leave behind.

The ordering rules (:mod:`mmugather.core.check.reach`) ask whether anything
was freed too early; these ask whether anything was left undone, in the
spirit of the kernel's ``check_mm()`` (kernel/fork.c), which looks at an mm
being freed for rss counters that are not back to 0 and page-table bytes
still accounted.  They read the address space itself, not the event
stream, so ``mmugather run`` calls them at three points (``docs/checker.md``):

* after each operation (:meth:`Completeness.after_op`): no present or swap
  entry is left in the range it unmapped (``left-mapped``);
* when ``free_pte_range()`` frees a PTE table
  (:meth:`Completeness.pte_table_freed`): every entry in it is none
  (``table-not-empty``);
* after exit: the rss counters are back to 0 (``rss-counter``), no page is
  still mapped (``mapped-at-exit``) and no page table is still hooked in
  the mm (``pgtables-bytes``).

Each finding goes to ``report(rule, message)`` (the checker's).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mmugather.core.aspace import (
    PFN_BASE,
    PTE_PRESENT,
    RSS_NAMES,
    SWP_KIND,
    SWP_SWAP,
    AddressSpace,
    PteTable,
)
from mmugather.core.constants import MASK64

Report = Callable[[str, str], None]

#: bytes of one page-table entry
ENTRY_BYTES = 8
#: reports of one kind of finding, at most, per check (the count says the rest)
SHOWN = 1


def _entry_text(addr: int, ent: int) -> str:
    if ent & PTE_PRESENT:
        return f"a present PTE at {addr:#x} -> page {ent >> 8:#x}"
    if ent & SWP_KIND == SWP_SWAP:
        return f"a swap entry at {addr:#x} (slot {ent >> 8})"
    return f"a non-present entry at {addr:#x} ({ent:#x})"


def _nonzero(values: array[int]) -> list[int]:
    """Indexes of the non-zero items (a memcmp first: almost always none)."""
    if values.tobytes() == bytes(values.itemsize * len(values)):
        return []
    return [i for i, v in enumerate(values) if v]


def _more(n: int, what: str) -> str:
    """`` (and 3 more entries)``: the rest of ``n`` findings."""
    return f" (and {n - 1:,} more {what})" if n > 1 else ""


class Completeness:
    """The completeness rules over one address space."""

    def __init__(self, aspace: AddressSpace, report: Report) -> None:
        self.aspace = aspace
        self.report = report
        self._zero = bytes(ENTRY_BYTES * aspace.geometry.ptrs_per_pte)
        #: folio head index -> hugetlb mappings handed to another process
        #: with a PMD table this mm unshared (its mapcount stays with them)
        self._elsewhere: dict[int, int] = {}

    def pmd_unshared(self, heads: Sequence[int]) -> None:
        """huge_pmd_unshare() left the shared PMD table, and what it maps,
        to the other processes: the folios at ``heads`` stay mapped by them
        after this mm exits (v6.5 counts a shared table's mappings once)."""
        for head in heads:
            i = head - PFN_BASE
            self._elsewhere[i] = self._elsewhere.get(i, 0) + 1

    # --- after each operation ---------------------------------------------

    def after_op(self, op: dict[str, Any], zapped: Sequence[tuple[int, int]] = ()) -> None:
        """``op`` returned.  munmap() and exit leave no entry outside a VMA
        in their range (a munmap() refused with EINVAL kept its VMAs);
        madvise(MADV_DONTNEED) none in the ranges it zapped (``zapped``:
        the VMAs it refused stop it)."""
        kind = op["kind"]
        if kind == "exit":
            self._empty("exit", self._outside_vmas(0, MASK64))
            self.exit_done()
        elif kind == "munmap":
            what = f"munmap({op['start']:#x}, {op['end']:#x})"
            self._empty(what, self._outside_vmas(op["start"], op["end"]))
        elif kind == "madvise_dontneed":
            what = f"madvise({op['start']:#x}, {op['end']:#x}, MADV_DONTNEED)"
            self._empty(what, zapped)

    def _outside_vmas(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) no VMA covers."""
        out = []
        at = start
        for vma in sorted(self.aspace.vmas, key=lambda v: v.start):
            if vma.end <= at or vma.start >= end:
                continue
            if vma.start > at:
                out.append((at, vma.start))
            at = max(at, vma.end)
        if at < end:
            out.append((at, end))
        return out

    def _empty(self, what: str, ranges: Sequence[tuple[int, int]]) -> None:
        left = [text for start, end in ranges for text in self._mapped_in(start, end)]
        if left:
            more = _more(len(left), "entries")
            self.report("left-mapped", f"{what} returns with {left[0]}{more} left in the range "
                        "it unmapped: the page stays mapped and accounted")

    def _mapped_in(self, start: int, end: int) -> Iterator[str]:
        """Present and swap entries in [start, end), as report texts."""
        aspace = self.aspace
        geo = aspace.geometry
        for key, ent in sorted(aspace.huge_puds.items()):
            addr = key << geo.pud_shift
            if start < addr + geo.pud_size and addr < end and ent & PTE_PRESENT:
                yield f"a present huge PUD at {addr:#x} -> page {ent >> 8:#x}"
        for key, ent in sorted(aspace.huge_pmds.items()):
            addr = key << geo.pmd_shift
            if start < addr + geo.pmd_size and addr < end and ent & PTE_PRESENT:
                yield f"a present huge PMD at {addr:#x} -> page {ent >> 8:#x}"
        for pmd_i, table in sorted(aspace.pte_tables.items()):
            base = pmd_i << geo.pmd_shift
            if not (start < base + geo.pmd_size and base < end):
                continue
            if table.entries.tobytes() == self._zero:
                continue
            for i, ent in enumerate(table.entries):
                addr = base + (i << geo.page_shift)
                if start <= addr < end and (ent & PTE_PRESENT or ent & SWP_KIND == SWP_SWAP):
                    yield _entry_text(addr, ent)

    # --- free_pte_range() ---------------------------------------------------

    def pte_table_freed(self, table: PteTable, addr: int) -> None:
        """free_pte_range() frees ``table``, which mapped around ``addr``:
        it must be empty, or what it still maps is leaked."""
        if table.entries.tobytes() == self._zero:
            return
        geo = self.aspace.geometry
        base = addr & ~(geo.pmd_size - 1)
        left = [(base + (i << geo.page_shift), ent) for i, ent in enumerate(table.entries) if ent]
        self.report("table-not-empty",
                    f"PTE table {table.id:#x} of [{base:#x}, {base + geo.pmd_size:#x}) is freed "
                    f"with {len(left)} entries still in it (first: {_entry_text(*left[0])}): "
                    "what they map is never unmapped")

    # --- exit ---------------------------------------------------------------

    def exit_done(self) -> None:
        """exit_mmap() returned: check_mm()'s questions, and whether any
        page is still mapped."""
        aspace = self.aspace
        for name, value in zip(RSS_NAMES, aspace.rss_stat, strict=True):
            if value:
                self.report("rss-counter", f"after exit {name} is {value}, not 0 "
                            "(check_mm(): \"Bad rss-counter state\"): "
                            + ("a mapping was never zapped" if value > 0
                               else "more was zapped than was mapped"))
        store = aspace.pages
        mapped = _nonzero(store.mapcount)
        if mapped:
            i = mapped[0]
            more = _more(len(mapped), "pages")
            why = ("a mapping of it was never removed" if store.mapcount[i] > 0
                   else "its mapping was removed more often than it was made")
            self.report("mapped-at-exit", f"after exit page {PFN_BASE + i:#x} has mapcount "
                        f"{store.mapcount[i]}, not 0{more}: {why}")
        elsewhere = self._elsewhere
        whole = [i for i in _nonzero(store.entire_mapcount)
                 if store.entire_mapcount[i] != elsewhere.get(i, 0)]
        whole += [i for i in elsewhere if i not in whole and store.entire_mapcount[i] == 0]
        if whole:
            whole.sort()
            i = whole[0]
            more = _more(len(whole), "folios")
            ours = store.entire_mapcount[i] - elsewhere.get(i, 0)
            why = ("a PMD or hugetlb mapping of it was never removed" if ours > 0
                   else "its PMD or hugetlb mapping was removed more often than it was made")
            shared = (f" ({elsewhere[i]} of them through a PMD table another process "
                      "still shares)" if i in elsewhere else "")
            self.report("mapped-at-exit", f"after exit folio {PFN_BASE + i:#x} has entire "
                        f"mapcount {store.entire_mapcount[i]}{shared}, not "
                        f"{elsewhere.get(i, 0)}{more}: {why}")
        self._pgtables_bytes()

    def pgtables_bytes(self) -> dict[str, int]:
        """Page tables still hooked in the mm, by level (deposited THP
        tables count as PTE tables, as mm_inc_nr_ptes() counts them)."""
        aspace = self.aspace
        return {"pte": len(aspace.pte_tables) + len(aspace.deposited),
                "pmd": len(aspace.pmd_tables), "pud": len(aspace.pud_tables),
                "p4d": len(aspace.p4d_tables)}

    def _pgtables_bytes(self) -> None:
        geo = self.aspace.geometry
        hooked = self.pgtables_bytes()
        if not any(hooked.values()):
            return
        # mm->pgtables_bytes counts PTE, PMD and PUD tables: PTRS_PER_* entries each.
        entries = {"pte": geo.ptrs_per_pte, "pmd": geo.pud_size // geo.pmd_size,
                   "pud": geo.p4d_size // geo.pud_size}
        counted = sum(hooked[level] * n * ENTRY_BYTES for level, n in entries.items())
        levels = ", ".join(f"{n} {level}" for level, n in hooked.items() if n)
        self.report("pgtables-bytes", f"after exit {sum(hooked.values())} page tables are still "
                    f"hooked in the mm ({levels}): pgtables_bytes is {counted:,}, not 0 "
                    "(check_mm(): \"non-zero pgtables_bytes on freeing mm\")")
