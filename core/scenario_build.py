"""Building a scenario's address space (:func:`build`): the VMAs, their
page tables, the folios and the page cache, for one arch geometry.

The scenario was validated by :mod:`mmugather.core.scenario` (its size
included: at most ``--max-pages`` populated pages); :func:`check_geometry`
adds the checks that need the arch's geometry, before anything is built.
"""

from __future__ import annotations

import bisect
from array import array

import attrs
from mmugather.core.aspace import (
    F_ANON,
    F_HUGETLB,
    F_SHARED,
    F_SWAPCACHE,
    MM_ANONPAGES,
    MM_FILEPAGES,
    MM_SWAPENTS,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_YOUNG,
    SWP_HWPOISON,
    SWP_MARKER,
    SWP_MIGRATION,
    SWP_SWAP,
    ZERO_PFN,
    AddressSpace,
    MmVma,
)
from mmugather.core.constants import Geometry
from mmugather.core.scenario import (
    HUGE_PMD,
    HUGE_PUD,
    PMD_ORDER,
    Populate,
    Scenario,
    ScenarioError,
)


def check_geometry(scenario: Scenario, geo: Geometry, arch: str = "") -> None:
    """The checks that depend on the arch's geometry: VMAs and operations
    below its TASK_SIZE, folio orders against its PMD order, alignment to
    its huge page sizes (and no PUD-sized page where the PUD level is
    folded), and the page cache (one folio order per file page, folios at
    aligned file offsets).  ``arch`` names the arch in the messages."""
    path = scenario.path
    check_task_size(scenario, geo, arch)
    pmd_order = geo.pmd_shift - geo.page_shift
    cached: dict[str, list[_Cached]] = {}
    for n, spec in enumerate(scenario.vmas):
        key = f"vma[{n}]"
        if spec.kind == "hugetlb":
            if spec.hugepage_size == HUGE_PUD and geo.pud_folded:
                raise ScenarioError(path, f"{key}.hugepage_size", f"{_arch(arch)} folds the "
                                    "PUD level: it has no PUD-sized pages")
            size = geo.pmd_size if spec.hugepage_size == HUGE_PMD else geo.pud_size
            if spec.start % size or spec.end % size:
                raise ScenarioError(path, key, f"a hugetlb VMA must be aligned to {size:#x} "
                                    f"on {_arch(arch)}")
            continue
        for k, pop in enumerate(spec.populate):
            pkey = f"{key}.populate[{k}]"
            order = pmd_order if pop.folio_order == PMD_ORDER else pop.folio_order
            if order > pmd_order:
                raise ScenarioError(path, f"{pkey}.folio_order",
                                    f"order {order} is above this arch's PMD order {pmd_order}")
            if pop.pmd_mapped and order != pmd_order:
                raise ScenarioError(path, f"{pkey}.pmd_mapped",
                                    f"only a folio of this arch's PMD order ({pmd_order}) "
                                    "maps with a PMD")
            nr = 1 << order
            folio_bytes = geo.page_size << order
            if order and ((spec.start + pop.offset) % folio_bytes
                          or (pop.pages * geo.page_size) % folio_bytes):
                raise ScenarioError(path, pkey, f"folios of order {order} must start and end "
                                    f"{folio_bytes:#x}-aligned on this arch")
            if spec.kind not in ("file", "file-shared") or pop.state != "present":
                continue
            first = spec.pgoff + pop.offset // geo.page_size
            if first % nr:
                raise ScenarioError(path, pkey, f"file folios of order {order} sit at file "
                                    f"offsets aligned to {nr} pages; this one starts at {first}")
            cached.setdefault(spec.file, []).append(
                _Cached(first, first + pop.pages, order, pop.every, (n, k), pkey))
    for file, entries in cached.items():
        _one_order_per_page(path, file, entries)


def _arch(arch: str) -> str:
    return arch or "this arch"


def check_task_size(scenario: Scenario, geo: Geometry, arch: str = "") -> None:
    """Every VMA and every operation's range ends at or below TASK_SIZE: an
    address above it is not a user address on this arch (mmap() fails,
    munmap() says EINVAL)."""
    top = geo.task_size
    where = f"{_arch(arch)}'s TASK_SIZE {top:#x} (PAGE_SIZE {geo.page_size})"
    for n, spec in enumerate(scenario.vmas):
        if spec.end > top:
            raise ScenarioError(scenario.path, f"vma[{n}]", f"[{spec.start:#x}, {spec.end:#x}) "
                                f"ends above {where}")
    for n, op in enumerate(scenario.ops):
        if op.get("end", 0) > top:
            raise ScenarioError(scenario.path, f"op[{n}]", f"{op['kind']} [{op['start']:#x}, "
                                f"{op['end']:#x}) ends above {where}")


@attrs.frozen
class _Cached:
    """The page-cache indices a file populate entry maps: [start, end), one in
    ``every`` for order 0, all of them (whole folios) for a large order."""

    start: int
    end: int
    order: int
    every: int
    pos: tuple[int, int]
    key: str

    def first_in(self, lo: int, hi: int) -> int | None:
        """The first index it maps in [lo, hi), if any."""
        if self.order:
            at = max(lo, self.start)
        else:
            at = self.start + max(0, -(-(lo - self.start) // self.every)) * self.every
        return at if at < min(hi, self.end) else None


def _one_order_per_page(path: str, file: str, entries: list[_Cached]) -> None:
    """Every page of ``file`` is cached in folios of one order, whichever
    VMAs map it: checked on the index ranges, in time that grows with the
    number of entries, not of pages."""

    def clash(a: _Cached, b: _Cached, index: int) -> ScenarioError:
        first, later = sorted((a, b), key=lambda e: e.pos)
        return ScenarioError(path, later.key, f"page {index} of file {file!r} is cached "
                             f"already as a folio of order {first.order}, not {later.order}")

    # Large folios: among overlapping ranges, one order (a sweep by start).
    large = sorted((e for e in entries if e.order), key=lambda e: e.start)
    segments: list[_Cached] = []  # merged, disjoint, each of one order
    for e in large:
        last = segments[-1] if segments else None
        if last is not None and e.start < last.end:
            if e.order != last.order:
                raise clash(last, e, e.start)
            if e.end > last.end:
                segments[-1] = attrs.evolve(last, end=e.end)
        else:
            segments.append(e)
    # Order-0 pages inside a large folio's range.
    starts = [s.start for s in segments]
    for e in entries:
        if e.order:
            continue
        i = max(0, bisect.bisect_right(starts, e.start) - 1)
        while i < len(segments) and segments[i].start < e.end:
            index = e.first_in(segments[i].start, segments[i].end)
            if index is not None:
                raise clash(segments[i], e, index)
            i += 1


def build(scenario: Scenario, geo: Geometry, arch: str = "", *,
          pmd_share: bool = False) -> AddressSpace:
    """Materialise the scenario's address space for one arch geometry
    (after :func:`~mmugather.core.scenario.check_geometry`; ``arch`` names
    the arch in its messages).  ``pmd_share``: the arch shares hugetlb PMD
    tables (:func:`share_pmd_tables`)."""
    check_geometry(scenario, geo, arch)
    aspace = AddressSpace(geometry=geo)
    store = aspace.pages
    page_size = geo.page_size
    pmd_order = geo.pmd_shift - geo.page_shift
    for spec in scenario.vmas:
        hpage = {HUGE_PMD: geo.pmd_size, HUGE_PUD: geo.pud_size}.get(spec.hugepage_size, 0)
        vma = MmVma(
            start=spec.start, end=spec.end, kind=spec.kind, exec=spec.exec, name=spec.name,
            hpage_size=hpage, file=spec.file, pgoff=spec.pgoff,
        )
        aspace.vmas.append(vma)
        for pop in spec.populate:
            if pop.folio_order == PMD_ORDER:
                pop = attrs.evolve(pop, folio_order=pmd_order)
            if spec.kind == "hugetlb":
                _populate_hugetlb(aspace, vma, pop)
                continue
            bits = PTE_PRESENT | (PTE_DIRTY if pop.dirty else 0) | (PTE_YOUNG if pop.young else 0)
            if (spec.kind == "anon" and pop.state in ("present", "swapcache")
                    and pop.folio_order == 0 and pop.every == 1):
                _populate_small_anon(aspace, spec.start + pop.offset, pop, bits)
                continue
            nr = 1 << pop.folio_order
            addr = spec.start + pop.offset
            last = addr + pop.pages * page_size
            step = page_size * pop.every
            while addr < last:
                if pop.state == "swap":
                    slot = aspace.next_swap
                    aspace.next_swap += 1
                    aspace.swap_map[slot] = 1
                    aspace.set_pte(addr, slot << 8 | SWP_SWAP)
                    aspace.rss_stat[MM_SWAPENTS] += 1
                elif pop.state == "zero":
                    aspace.set_pte(addr, ZERO_PFN << 8 | PTE_PRESENT | PTE_SPECIAL)
                elif pop.state == "marker":
                    aspace.set_pte(addr, 1 << 8 | SWP_MARKER)
                elif pop.state == "hwpoison":
                    aspace.set_pte(addr, 1 << 8 | SWP_HWPOISON)
                elif pop.state == "migration":
                    head = store.new_folio(0, F_ANON if spec.kind == "anon" else 0)
                    aspace.set_pte(addr, head << 8 | SWP_MIGRATION)
                    # A page under migration still counts in the rss.
                    aspace.rss_stat[MM_ANONPAGES if spec.kind == "anon" else MM_FILEPAGES] += 1
                elif spec.kind == "pfnmap":
                    aspace.set_pte(addr, ((addr >> geo.page_shift) | 1 << 36) << 8 | bits
                                   | PTE_SPECIAL)
                else:
                    head = _folio_for(aspace, vma, addr, pop, nr)
                    if pop.pmd_mapped:
                        _map_pmd(aspace, vma, addr, head, bits)
                    else:
                        for j in range(nr):
                            _map_pte(aspace, addr + j * page_size, head + j, bits)
                    if nr > 1:
                        # A large folio is mapped whole (parse() keeps every = 1).
                        addr += nr * page_size
                        continue
                addr += step
        if spec.shared_pmd and pmd_share:
            share_pmd_tables(aspace, vma)
    # The kernel keeps an mm's VMAs in address order (the maple tree), and
    # free_pgtables() and the munmap neighbours rely on it: a file may list
    # them in any order.
    aspace.vmas.sort(key=lambda v: v.start)
    return aspace


def share_pmd_tables(aspace: AddressSpace, vma: MmVma) -> None:
    """``huge_pmd_share()`` as another process mapping the same file range
    did it: each PUD-aligned range the VMA covers whole (``want_pmd_share()``)
    has a PMD table the two share, two references on its page.  Nothing
    where the PUD level is folded (arm64 with 64K pages: v6.5 selects
    ARCH_WANT_HUGE_PMD_SHARE only for 4K and 16K pages).  The pages mapped
    through it count the shared entries once, as the kernel's do."""
    geo = aspace.geometry
    if geo.pud_shift == geo.p4d_shift:
        return
    addr = -(-vma.start // geo.pud_size) * geo.pud_size
    while addr + geo.pud_size <= vma.end:
        aspace.ensure_tables(addr, upto="pmd")
        aspace.pmd_share[aspace.pmd_tables[addr >> geo.pud_shift]] = 2
        addr += geo.pud_size


def _folio_for(aspace: AddressSpace, vma: MmVma, addr: int, pop: Populate, nr: int) -> int:
    """The folio mapped at ``addr``: new for anon, from the page cache for files."""
    store = aspace.pages
    if vma.kind == "anon":
        flags = F_ANON | (F_SWAPCACHE if pop.state == "swapcache" else 0)
        head = store.new_folio(pop.folio_order, flags)
        if flags & F_SWAPCACHE:
            store.refcount[head - PFN_BASE] += nr
        return head
    index = vma.pgoff + ((addr - vma.start) >> aspace.geometry.page_shift)
    key = (vma.file, index)
    head = aspace.page_cache.get(key, 0)
    if not head:
        flags = F_SHARED if vma.kind == "file-shared" else 0
        head = store.new_folio(pop.folio_order, flags)
        store.refcount[head - PFN_BASE] += 1  # the page cache's reference
        for j in range(nr):
            aspace.page_cache[(vma.file, index + j)] = head + j
    elif store.order[store.head[head - PFN_BASE]] != pop.folio_order:
        raise ScenarioError(vma.file, "populate",
                            "a file page is cached already with another folio order")
    return head


def _map_pte(aspace: AddressSpace, addr: int, pfn: int, bits: int) -> None:
    store = aspace.pages
    idx = pfn - PFN_BASE
    head = store.head[idx]
    aspace.set_pte(addr, pfn << 8 | bits)
    aspace.rss_stat[MM_ANONPAGES if store.flags[head] & F_ANON else MM_FILEPAGES] += 1
    if store.mapcount[idx] == 0:
        store.nr_mapped[head] += 1
    store.mapcount[idx] += 1
    store.refcount[head] += 1


def _map_pmd(aspace: AddressSpace, vma: MmVma, addr: int, head: int, bits: int) -> None:
    geo = aspace.geometry
    aspace.ensure_tables(addr, upto="pmd")
    pmd_i = addr >> geo.pmd_shift
    aspace.huge_pmds[pmd_i] = head << 8 | bits
    store = aspace.pages
    store.entire_mapcount[head - PFN_BASE] += 1
    store.refcount[head - PFN_BASE] += 1
    aspace.rss_stat[MM_ANONPAGES if vma.kind == "anon" else MM_FILEPAGES] += geo.ptrs_per_pte
    if vma.kind == "anon":
        # An anon THP keeps a PTE table in reserve for a later split.
        aspace.deposited[pmd_i] = aspace.new_table("pte", addr)


def _populate_hugetlb(aspace: AddressSpace, vma: MmVma, pop: Populate) -> None:
    geo = aspace.geometry
    sz = vma.hpage_size
    order = (sz // geo.page_size).bit_length() - 1
    store = aspace.pages
    addr = vma.start + pop.offset
    last = addr + pop.pages * geo.page_size
    while addr < last:
        if sz >= geo.pud_size:
            aspace.ensure_tables(addr, upto="pud")
            table, key = aspace.huge_puds, addr >> geo.pud_shift
        else:
            aspace.ensure_tables(addr, upto="pmd")
            table, key = aspace.huge_pmds, addr >> geo.pmd_shift
        if pop.state == "migration":
            table[key] = 1 << 8 | SWP_MIGRATION
        else:
            head = store.new_folio(order, F_HUGETLB)
            store.entire_mapcount[head - PFN_BASE] = 1
            store.refcount[head - PFN_BASE] = 2  # the mapping and hugetlbfs' page cache
            table[key] = head << 8 | PTE_PRESENT | (PTE_DIRTY if pop.dirty else 0)
        addr += sz


def _populate_small_anon(aspace: AddressSpace, addr: int, pop: Populate, bits: int) -> None:
    """The common case in bulk: a run of order-0 anon pages, a PTE table at a time."""
    geo = aspace.geometry
    swapcache = pop.state == "swapcache"
    flags = F_ANON | (F_SWAPCACHE if swapcache else 0)
    first = aspace.pages.new_small_folios(pop.pages, flags, 1, 2 if swapcache else 1)
    aspace.rss_stat[MM_ANONPAGES] += pop.pages
    per_table = geo.ptrs_per_pte
    left = pop.pages
    pfn = first
    while left:
        table = aspace.ensure_tables(addr)
        assert table is not None
        i = (addr >> geo.page_shift) & (per_table - 1)
        n = min(left, per_table - i)
        table.entries[i : i + n] = array("q", [(p << 8) | bits for p in range(pfn, pfn + n)])
        pfn += n
        left -= n
        addr += n * geo.page_size
