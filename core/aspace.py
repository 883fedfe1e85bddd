"""An address space to tear down: VMAs, a four-level page-table tree, folios.

Compact by design (millions of PTEs): each PTE table is an ``array('q')`` of
encoded entries, and page and folio state live in parallel arrays indexed by
page number, not in per-page objects.

PTE encoding (one int64):

* present: ``pfn << 8 | PTE_PRESENT | PTE_DIRTY? | PTE_YOUNG? | PTE_SPECIAL?``
  (``PTE_SPECIAL``: no struct page behind it, so ``vm_normal_page()`` is
  NULL: the zero page, VM_PFNMAP);
* not present: ``payload << 8 | kind`` with kind one of ``SWP_SWAP``,
  ``SWP_MIGRATION``, ``SWP_MARKER``, ``SWP_HWPOISON``;
* 0: ``pte_none``.

Page ids (PFNs) start at :data:`PFN_BASE`; page-table pages get ids from
:data:`TABLE_ID_BASE` on, so that a table queued as a page (generic-smp) can
be told from a data page when it is freed.
"""

from __future__ import annotations

from array import array

import attrs
from mmugather.core.constants import Geometry
from mmugather.core.vma import VM_EXEC, VM_HUGETLB, VM_PFNMAP, Vma

PTE_PRESENT = 0x1
PTE_DIRTY = 0x2
PTE_YOUNG = 0x4
PTE_SPECIAL = 0x8
SWP_SWAP = 0x10
SWP_MIGRATION = 0x20
SWP_MARKER = 0x30
SWP_HWPOISON = 0x40
SWP_KIND = 0xF0

PFN_BASE = 0x100000
TABLE_ID_BASE = 1 << 40
#: The shared zero page: mapped read-only, never gathered.
ZERO_PFN = 0xFFFF0

# Folio flags, kept at the head page's index.
F_ANON = 0x1
F_DIRTY = 0x2
F_SWAPCACHE = 0x4
F_DEFERRED_SPLIT = 0x8
F_HUGETLB = 0x10
F_FREED = 0x20
F_SHARED = 0x40  # file folio mapped MAP_SHARED somewhere (writeback matters)

VMA_KINDS = ("anon", "file", "file-shared", "hugetlb", "pfnmap")

#: The mm's rss counters (include/linux/mm_types_task.h), indexes of
#: ``AddressSpace.rss_stat``; a MAP_SHARED file of the model is no shmem,
#: so MM_SHMEMPAGES is not kept
MM_FILEPAGES = 0
MM_ANONPAGES = 1
MM_SWAPENTS = 2
RSS_NAMES = ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SWAPENTS")


@attrs.define(slots=True, eq=False)
class MmVma:
    """A VMA of the modelled mm: the gather's view plus what callers need."""

    start: int
    end: int
    kind: str = "anon"
    exec: bool = False
    name: str = ""
    #: hugetlb: the huge page size
    hpage_size: int = 0
    #: file VMAs: the file and the page offset of ``start``
    file: str = ""
    pgoff: int = 0
    gvma: Vma = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        flags = VM_EXEC if self.exec else 0
        if self.kind == "hugetlb":
            flags |= VM_HUGETLB
        if self.kind == "pfnmap":
            flags |= VM_PFNMAP
        self.gvma = Vma(self.start, self.end, flags)

    @property
    def is_anon(self) -> bool:
        return self.kind == "anon"

    @property
    def is_hugetlb(self) -> bool:
        return self.kind == "hugetlb"

    def label(self) -> str:
        return self.name or f"{self.kind}@{self.start:#x}"


@attrs.define(slots=True, eq=False)
class PteTable:
    id: int
    entries: array  # type: ignore[type-arg]


class PageStore:
    """struct page / struct folio state for every page the mm can map."""

    __slots__ = (
        "entire_mapcount",
        "flags",
        "head",
        "mapcount",
        "nr_mapped",
        "order",
        "refcount",
    )

    def __init__(self) -> None:
        #: per page: number of PTE mappings (the kernel's _mapcount + 1)
        self.mapcount = array("i")
        #: per page: index of its folio's head page
        self.head = array("q")
        # per folio, at the head index:
        self.order = array("b")
        self.flags = array("i")
        self.refcount = array("i")
        #: PMD (or hugetlb) mappings of the whole folio
        self.entire_mapcount = array("i")
        #: pages of the folio mapped by at least one PTE
        self.nr_mapped = array("i")

    def __len__(self) -> int:
        return len(self.mapcount)

    def new_folio(self, order: int, flags: int) -> int:
        """Allocate a folio of 2**order pages; returns its head PFN."""
        n = 1 << order
        head = len(self.mapcount)
        self.mapcount.extend(array("i", bytes(4 * n)))
        self.head.extend(array("q", [head]) * n)
        zeros_i = array("i", bytes(4 * n))
        self.order.extend(array("b", bytes(n)))
        self.order[head] = order
        self.flags.extend(zeros_i)
        self.flags[head] = flags
        self.refcount.extend(zeros_i)
        self.entire_mapcount.extend(zeros_i)
        self.nr_mapped.extend(zeros_i)
        return PFN_BASE + head

    def new_small_folios(self, n: int, flags: int, mapcount: int, refcount: int) -> int:
        """Allocate ``n`` order-0 folios at once, each mapped ``mapcount``
        times and holding ``refcount`` references; returns the first PFN."""
        first = len(self.mapcount)
        self.mapcount.extend(array("i", [mapcount]) * n)
        self.head.extend(array("q", range(first, first + n)))
        self.order.extend(array("b", bytes(n)))
        self.flags.extend(array("i", [flags]) * n)
        self.refcount.extend(array("i", [refcount]) * n)
        zeros = array("i", bytes(4 * n))
        self.entire_mapcount.extend(zeros)
        self.nr_mapped.extend(zeros)
        return PFN_BASE + first

    def folio_of(self, pfn: int) -> int:
        return self.head[pfn - PFN_BASE]

    def is_page(self, pfn: int) -> bool:
        return 0 <= pfn - PFN_BASE < len(self.mapcount)


@attrs.define(slots=True, eq=False)
class AddressSpace:
    """One mm: its VMAs (sorted, non-overlapping) and its page tables."""

    geometry: Geometry
    vmas: list[MmVma] = attrs.Factory(list)
    pages: PageStore = attrs.Factory(PageStore)
    #: PMD index (addr >> PMD_SHIFT) -> the PTE table it points to
    pte_tables: dict[int, PteTable] = attrs.Factory(dict)
    #: PMD index -> encoded huge PMD (a PMD-mapped THP or a hugetlb page)
    huge_pmds: dict[int, int] = attrs.Factory(dict)
    #: PMD index -> deposited PTE table id (anon THP)
    deposited: dict[int, int] = attrs.Factory(dict)
    #: PUD index -> encoded huge PUD (1G hugetlb)
    huge_puds: dict[int, int] = attrs.Factory(dict)
    #: PUD index -> PMD table id; P4D index -> PUD table id; PGD index -> P4D
    #: table id (a folded level's index is the one of the level above: no
    #: table of that level, the one below in its place)
    pmd_tables: dict[int, int] = attrs.Factory(dict)
    pud_tables: dict[int, int] = attrs.Factory(dict)
    p4d_tables: dict[int, int] = attrs.Factory(dict)
    #: (file, page index) -> PFN of that page of the page cache
    page_cache: dict[tuple[str, int], int] = attrs.Factory(dict)
    #: swap slots in use: offset -> count of references
    swap_map: dict[int, int] = attrs.Factory(dict)
    next_table_id: int = TABLE_ID_BASE
    next_swap: int = 1
    #: table id -> (level, address) for every live table
    tables: dict[int, tuple[str, int]] = attrs.Factory(dict)
    #: mm->rss_stat: pages mapped (by file and anon) and swap entries, as the
    #: builder mapped them and the zaps took them away (mm_counter());
    #: exit must bring each back to 0 (check_mm())
    rss_stat: list[int] = attrs.Factory(lambda: [0, 0, 0])
    #: hugetlb PMD tables shared with other processes: table id -> users
    #: (the table page's reference count in v6.5; a table not listed has
    #: this mm alone)
    pmd_share: dict[int, int] = attrs.Factory(dict)

    # --- geometry shortcuts -------------------------------------------------

    @property
    def ptrs_per_pte(self) -> int:
        return self.geometry.ptrs_per_pte

    @property
    def pgdir_shift(self) -> int:
        return self.geometry.pgdir_shift

    def new_table(self, level: str, addr: int) -> int:
        tid = self.next_table_id
        self.next_table_id += 1
        self.tables[tid] = (level, addr)
        return tid

    def ensure_tables(self, addr: int, upto: str = "pte") -> PteTable | None:
        """Allocate the tables down to ``upto`` ("pmd" stops above the PTE
        table, "pud" above the PMD table).  A folded level has no table: the
        table below hangs from the entry above (p4d_alloc() and pud_alloc()
        allocate nothing there)."""
        geo = self.geometry
        if not geo.p4d_folded:
            pgd_i = addr >> self.pgdir_shift
            if pgd_i not in self.p4d_tables:
                self.p4d_tables[pgd_i] = self.new_table("p4d", addr)
        if not geo.pud_folded:
            p4d_i = addr >> geo.p4d_shift
            if p4d_i not in self.pud_tables:
                self.pud_tables[p4d_i] = self.new_table("pud", addr)
        pud_i = addr >> geo.pud_shift
        if upto == "pud":
            return None
        if pud_i not in self.pmd_tables:
            self.pmd_tables[pud_i] = self.new_table("pmd", addr)
        if upto == "pmd":
            return None
        pmd_i = addr >> geo.pmd_shift
        table = self.pte_tables.get(pmd_i)
        if table is None:
            n = self.ptrs_per_pte
            table = PteTable(self.new_table("pte", addr), array("q", bytes(8 * n)))
            self.pte_tables[pmd_i] = table
        return table

    def set_pte(self, addr: int, value: int) -> None:
        table = self.ensure_tables(addr)
        assert table is not None
        index = (addr >> self.geometry.page_shift) & (self.ptrs_per_pte - 1)
        table.entries[index] = value

    def get_pte(self, addr: int) -> int:
        table = self.pte_tables.get(addr >> self.geometry.pmd_shift)
        if table is None:
            return 0
        return int(table.entries[(addr >> self.geometry.page_shift) & (self.ptrs_per_pte - 1)])

    def find_vma(self, addr: int) -> MmVma | None:
        for vma in self.vmas:
            if vma.start <= addr < vma.end:
                return vma
        return None

    def mapped_ptes(self) -> int:
        """Present PTEs, plus base pages behind huge entries (a size measure)."""
        total = 0
        for table in self.pte_tables.values():
            total += sum(1 for e in table.entries if e & PTE_PRESENT)
        per_pmd = self.ptrs_per_pte
        total += per_pmd * len(self.huge_pmds)
        return total
