"""The callers of the gather: mm/memory.c, mm/mmap.c, mm/huge_memory.c and
mm/hugetlb.c of v6.5 with the seed patch, over an :class:`AddressSpace`.

:class:`Teardown` walks the page tables the way the kernel does: per VMA,
per PUD, per PMD, and per PTE table under that table's lock.  It is also the
gather's :class:`~mmugather.core.mm.MmModel`: when the gather removes an rmap
or frees pages and tables, the page, folio and table state here follows.

Functions keep the kernel's names; the per-PTE loop of ``zap_pte_range()``
is the hot path and binds what it uses to locals.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from mmugather.core.aspace import (
    F_ANON,
    F_DEFERRED_SPLIT,
    F_DIRTY,
    F_FREED,
    F_HUGETLB,
    F_SWAPCACHE,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    SWP_KIND,
    SWP_MARKER,
    SWP_SWAP,
    TABLE_ID_BASE,
    AddressSpace,
    MmVma,
    PteTable,
)
from mmugather.core.constants import MASK64
from mmugather.core.events import page_rows
from mmugather.core.gather import MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.mm import Machine, MmStruct
from mmugather.core.vma import Vma

#: Caller-side mutants: deliberately broken orderings the checker must catch.
CALLER_MUTANTS = frozenset({"rmap-before-flush", "flush-rmaps-after-unlock", "no-discard-rmaps"})

#: The lock id of mm->page_table_lock (hugetlb entries other than PMD size).
MM_PAGE_TABLE_LOCK = 0


@attrs.define(slots=True, frozen=True)
class ZapDetails:
    """struct zap_details, as far as the modelled entries care."""

    #: zap private (COWed and swapped) pages too
    even_cows: bool = True
    #: ZAP_FLAG_DROP_MARKER: drop uffd-wp markers of file VMAs as well
    drop_marker: bool = True


#: unmap_vmas(): the final unmap of munmap() and exit
UNMAP_DETAILS = ZapDetails(even_cows=True, drop_marker=True)


class Teardown:
    """Unmaps and frees an :class:`AddressSpace` through one machine's gather."""

    def __init__(
        self,
        aspace: AddressSpace,
        machine: Machine,
        *,
        mutants: Sequence[str] = (),
        report: Callable[[str, str], None] | None = None,
        rmap_observer: Callable[[Iterable[int], int], None] | None = None,
    ) -> None:
        unknown = set(mutants) - CALLER_MUTANTS
        if unknown:
            raise ValueError(f"unknown caller mutants: {', '.join(sorted(unknown))}")
        self.aspace = aspace
        self.machine = machine
        self.mm = MmStruct.on(machine.cpus)
        self.geo = machine.geometry
        self.emit = machine.emit
        #: the per-PTE ``pte_clear`` events go through here
        self.rows = page_rows(machine.emit, machine.rows)
        self.mutants = frozenset(mutants)
        #: where model-level problems (a mapcount below zero) are reported
        self.report = report
        #: told (pages, vma start) of the rmaps each tlb_flush_rmaps() step
        #: removes
        self.rmap_observer = rmap_observer
        #: called after each PTE table, for progress reports
        self.progress: Callable[[int], None] | None = None
        machine.model = self
        #: counters the events cannot give cheaply
        self.rss_freed = 0
        self.deposited_freed = 0
        #: folios whose last reference went, not yet reported
        self.folios_freed: list[int] = []

    # ------------------------------------------------------------------
    # MmModel: what the gather tells us
    # ------------------------------------------------------------------

    def gather_remove_rmaps(self, pages: Sequence[int], vma: Vma) -> None:
        if self.rmap_observer is not None:
            self.rmap_observer(pages, vma.start)
        remove = self.page_remove_rmap
        store = self.aspace.pages
        mapcount = store.mapcount
        order = store.order
        head_of = store.head
        for page in pages:
            idx = page - PFN_BASE
            # Fast path: a page of an order-0 folio that stays mapped or goes
            # unmapped with nothing else to account.
            if 0 <= idx < len(mapcount) and not order[head_of[idx]] and mapcount[idx] > 0:
                mapcount[idx] -= 1
                continue
            remove(page, False)

    def release_pages(self, pages: Sequence[int]) -> None:
        """free_pages_and_swap_cache(): drop swap cache of unmapped folios,
        then one reference per entry (release_pages())."""
        aspace = self.aspace
        store = aspace.pages
        head_of = store.head
        refcount = store.refcount
        flags = store.flags
        order = store.order
        freed = self.folios_freed
        for pfn in pages:
            if pfn >= TABLE_ID_BASE:
                # A page-table page queued as an ordinary page (generic arches).
                aspace.tables.pop(pfn, None)
                continue
            head = head_of[pfn - PFN_BASE]
            # Fast paths: no swap cache to drop; not the last reference, or
            # the last one of an unmapped small folio.
            fl = flags[head]
            if not fl & F_SWAPCACHE:
                ref = refcount[head]
                if ref > 1:
                    refcount[head] = ref - 1
                    continue
                if ref == 1 and not order[head]:
                    refcount[head] = 0
                    flags[head] = fl | F_FREED
                    freed.append(PFN_BASE + head)
                    continue
            self.put_page(head)
        self.flush_folio_frees()

    def flush_folio_frees(self) -> None:
        """One ``folio_free`` event per release, listing the folios it freed."""
        if self.folios_freed:
            if self.emit is not None:
                self.emit("folio_free", folios=self.folios_freed)
            self.folios_freed = []

    def free_tables(self, tables: Sequence[int]) -> None:
        for table in tables:
            self.aspace.tables.pop(table, None)

    # ------------------------------------------------------------------
    # rmap and reference counting (mm/rmap.c, mm/swap.c)
    # ------------------------------------------------------------------

    def page_remove_rmap(self, pfn: int, compound: bool) -> None:
        """page_remove_rmap(): drop one mapping of a page, or of the whole folio."""
        store = self.aspace.pages
        idx = pfn - PFN_BASE
        head = store.head[idx]
        flags = store.flags[head]
        emit = self.emit
        if flags & F_HUGETLB:
            store.entire_mapcount[head] -= 1
            if emit is not None:
                emit("large_folio_rmap", folio=PFN_BASE + head, pages=0, folio_atomics=1,
                     mapped=self.folio_pages_mapped(head))
            return
        nr = 0
        nr_pmdmapped = 0
        if not compound:
            left = store.mapcount[idx] - 1
            store.mapcount[idx] = left
            if left < 0 and self.report is not None:
                self.report("mapcount", f"page {pfn:#x}: mapcount fell below zero")
            if not store.order[head]:
                return
            if left != 0:
                if emit is not None:
                    emit("large_folio_rmap", folio=PFN_BASE + head, pages=1, folio_atomics=0,
                         mapped=self.folio_pages_mapped(head))
                return
            # The last PTE of a page of a large folio.
            store.nr_mapped[head] -= 1
            # Pages of a PMD-mapped folio stay accounted as mapped.
            nr = 1 if store.entire_mapcount[head] == 0 else 0
            if emit is not None:
                emit("large_folio_rmap", folio=PFN_BASE + head, pages=1, folio_atomics=1,
                     mapped=self.folio_pages_mapped(head))
        else:
            left = store.entire_mapcount[head] - 1
            store.entire_mapcount[head] = left
            if left < 0 and self.report is not None:
                self.report("mapcount", f"folio {pfn:#x}: entire mapcount fell below zero")
            if left == 0:
                nr_pmdmapped = 1 << store.order[head]
                nr = nr_pmdmapped - store.nr_mapped[head]
            if emit is not None:
                # _entire_mapcount, and _nr_pages_mapped when it was the last
                emit("large_folio_rmap", folio=PFN_BASE + head, pages=0,
                     folio_atomics=2 if left == 0 else 1, mapped=self.folio_pages_mapped(head))
        folio_pages = 1 << store.order[head]
        # An anon PMD-sized folio left partly mapped is queued for a deferred
        # split (spuriously so when a zap is about to unmap the rest page by
        # page).
        pmd_sized_anon = flags & F_ANON and folio_pages >= self.geo.ptrs_per_pte
        if nr and pmd_sized_anon and (not compound or nr < nr_pmdmapped):
            self.deferred_split_folio(head)

    def folio_pages_mapped(self, head: int) -> int:
        """Pages of the folio at ``head`` still mapped: all of them while a
        PMD (or hugetlb) entry maps it, else those mapped by a PTE."""
        store = self.aspace.pages
        if store.entire_mapcount[head] > 0:
            return 1 << store.order[head]
        return int(store.nr_mapped[head])

    # ------------------------------------------------------------------
    # The ``ranges`` strategy (Ryan Roberts' series, v2): folio ranges
    # ------------------------------------------------------------------

    def folio_head(self, pfn: int) -> int:
        """page_folio(): the head page of ``pfn``'s folio (a page-table page
        is a folio of its own)."""
        idx = pfn - PFN_BASE
        if 0 <= idx < len(self.aspace.pages.head):
            return PFN_BASE + int(self.aspace.pages.head[idx])
        return pfn

    def folio_end(self, pfn: int) -> int:
        """The first page after ``pfn``'s folio (page_to_pfn(&folio->page) +
        folio_nr_pages(folio))."""
        store = self.aspace.pages
        idx = pfn - PFN_BASE
        if 0 <= idx < len(store.head):
            head = store.head[idx]
            return PFN_BASE + head + (1 << store.order[head])
        return pfn + 1

    def gather_remove_rmap_range(self, first: int, nr: int, vma: Vma) -> None:
        """folio_remove_rmap_range(folio, page, nr, vma) of the series (v2
        1/5): the PTE mappings of ``nr`` pages of one folio from ``first``.

        A large folio's ``_nr_pages_mapped`` is updated once for the range,
        and the folio goes on the deferred split queue only if some page of
        it is still mapped afterwards (``folio_test_large()``, not only
        PMD-sized folios, as in the series): unmapping a whole folio in one
        range queues nothing.
        """
        if self.rmap_observer is not None:
            self.rmap_observer(range(first, first + nr), vma.start)
        self._remove_pte_rmaps(first, nr, per_range=True)

    def _remove_pte_rmaps(self, first: int, nr: int, per_range: bool) -> None:
        """The PTE rmaps of ``nr`` pages of one folio from ``first``: each
        page's ``_mapcount``; ``_nr_pages_mapped`` once for the run
        (``per_range``, the series) or once per page whose last mapping went
        (v6.9); a large anon folio left partly mapped goes on the deferred
        split queue, whatever its size."""
        store = self.aspace.pages
        idx = first - PFN_BASE
        head = store.head[idx]
        mapcount = store.mapcount
        report = self.report
        if not store.order[head]:
            left = mapcount[idx] - 1
            mapcount[idx] = left
            if left < 0 and report is not None:
                report("mapcount", f"page {first:#x}: mapcount fell below zero")
            return
        unmapped = 0
        for i in range(idx, idx + nr):
            left = mapcount[i] - 1
            mapcount[i] = left
            if left == 0:
                unmapped += 1
            elif left < 0 and report is not None:
                report("mapcount", f"page {PFN_BASE + i:#x}: mapcount fell below zero")
        store.nr_mapped[head] -= unmapped
        mapped = self.folio_pages_mapped(head)
        if self.emit is not None:
            self.emit("large_folio_rmap", folio=PFN_BASE + head, pages=nr,
                      folio_atomics=1 if per_range else unmapped, mapped=mapped)
        if store.entire_mapcount[head] > 0:
            return  # still mapped whole by a PMD: no page counted unmapped
        if unmapped and mapped and store.flags[head] & F_ANON:
            self.deferred_split_folio(head)

    # ------------------------------------------------------------------
    # The ``folio-batch`` strategy (upstream v6.9): folio_remove_rmap_ptes()
    # ------------------------------------------------------------------

    def folio_remove_rmap_ptes(self, first: int, nr: int) -> None:
        """folio_remove_rmap_ptes(folio, page, nr, vma) of v6.9
        (``__folio_remove_rmap()``, RMAP_LEVEL_PTE): each page's ``_mapcount``
        and, for each page whose last PTE mapping went, one
        ``atomic_dec_return()`` on ``_nr_pages_mapped``; a large anonymous
        folio left partly mapped is queued for a deferred split (any large
        folio, not only PMD-sized ones)."""
        self._remove_pte_rmaps(first, nr, per_range=False)

    def gather_remove_rmap_ptes(self, first: int, nr: int, vma: Vma) -> None:
        """tlb_flush_rmaps() of v6.9 removed the delayed rmaps of ``nr``
        pages of one folio from ``first`` (one folio_remove_rmap_ptes())."""
        if self.rmap_observer is not None:
            self.rmap_observer(range(first, first + nr), vma.start)
        self.folio_remove_rmap_ptes(first, nr)

    def release_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """free_folios_and_swap_cache() of the series: free_swap_cache() once
        per range, then folios_put_refs(): one reference per page of the
        range, dropped at once."""
        aspace = self.aspace
        head_of = aspace.pages.head
        for start, nr in ranges:
            if start >= TABLE_ID_BASE:
                aspace.tables.pop(start, None)
                continue
            self.put_page(head_of[start - PFN_BASE], nr)
        self.flush_folio_frees()

    def deferred_split_folio(self, head: int) -> None:
        store = self.aspace.pages
        if store.flags[head] & F_DEFERRED_SPLIT:
            return
        store.flags[head] |= F_DEFERRED_SPLIT
        if self.emit is not None:
            self.emit("deferred_split", folio=PFN_BASE + head)

    def folio_mapped(self, head: int) -> bool:
        store = self.aspace.pages
        if store.entire_mapcount[head] > 0:
            return True
        n = 1 << store.order[head]
        return any(store.mapcount[head + i] > 0 for i in range(n))

    def put_page(self, head: int, refs: int = 1) -> None:
        """free_swap_cache() then put_page() (folio_put_refs() for ``refs``
        references) on the folio of a freed entry."""
        store = self.aspace.pages
        flags = store.flags[head]
        if flags & F_SWAPCACHE and not self.folio_mapped(head):
            # The swap cache held one reference per page of the folio.
            store.flags[head] = flags & ~F_SWAPCACHE
            store.refcount[head] -= 1 << store.order[head]
        ref = store.refcount[head] - refs
        store.refcount[head] = ref
        if ref == 0:
            store.flags[head] |= F_FREED
            self.folios_freed.append(PFN_BASE + head)
        elif ref < 0 and self.report is not None:
            self.report("refcount", f"folio {PFN_BASE + head:#x}: reference count below zero")

    def zap_nonpresent(
        self, ent: int, addr: int, anon_vma: bool, details: ZapDetails | None
    ) -> bool:
        """zap_pte_range() on a non-present entry; True when it is cleared."""
        kind = ent & SWP_KIND
        if kind == SWP_SWAP:
            # A genuine swap entry: a private anon page, freed here, never
            # gathered.
            if details is not None and not details.even_cows:
                return False
            self.free_swap_and_cache(ent >> 8)
            if self.emit is not None:
                self.emit("swap_free", addr=addr, entry=ent >> 8)
        elif kind == SWP_MARKER:
            # uffd-wp markers: anon ones always go, file ones only when the
            # caller asks (ZAP_FLAG_DROP_MARKER).
            return anon_vma or (details is not None and details.drop_marker)
        # Migration and hwpoison entries: the page is not ours any more;
        # only the entry goes.
        return True

    def free_swap_and_cache(self, entry: int) -> None:
        swap_map = self.aspace.swap_map
        count = swap_map.get(entry, 0) - 1
        if count <= 0:
            swap_map.pop(entry, None)
        else:
            swap_map[entry] = count

    # ------------------------------------------------------------------
    # mm/memory.c: zapping
    # ------------------------------------------------------------------

    def zap_pte_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        pmd_i: int,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> int:
        """Clear the PTEs of one table in [addr, end), under its lock."""
        geo = self.geo
        page_size = geo.page_size
        tlb.tlb_change_page_size(page_size)
        if "no-discard-rmaps" not in self.mutants:
            tlb.tlb_discard_rmaps()
        table = self.aspace.pte_tables.get(pmd_i)
        if table is None:
            return addr
        emit = self.emit
        rows = self.rows
        clear = rows.pte_clear if rows is not None else None
        gvma = vma.gvma
        if emit is not None:
            emit("ptl_lock", table=table.id, vma_start=vma.start)
        entries = table.entries
        i = (addr >> geo.page_shift) & (geo.ptrs_per_pte - 1)
        store = self.aspace.pages
        head_of = store.head
        folio_flags = store.flags
        remove_page = tlb.remove_page
        rmap_before_flush = "rmap-before-flush" in self.mutants
        batch_rmap = tlb.batch_rmap and not rmap_before_flush
        rmap_mode = "batched" if batch_rmap else "now"
        anon_vma = vma.is_anon
        force_flush = queue_full = dirty_flush = False
        # tlb_remove_tlb_entry() per cleared PTE only grows [start, end); the
        # gather reads the range only when a page is queued (end must not be
        # 0) or at a flush, so record the first clear at once and the rest of
        # the run [first, last] once, before the flush below.
        first = -1
        last = 0
        freed = 0
        while True:
            ent = entries[i]
            if ent:
                if ent & PTE_PRESENT:
                    entries[i] = 0
                    if first < 0:
                        first = addr
                        tlb.tlb_remove_tlb_entry(addr)
                    last = addr
                    if ent & PTE_SPECIAL:
                        # vm_normal_page() is NULL: no struct page to give back.
                        if clear is not None:
                            clear((addr, None, None, False))
                    else:
                        pfn = ent >> 8
                        head = head_of[pfn - PFN_BASE]
                        flags = folio_flags[head]
                        dirty_file = False
                        if not flags & F_ANON and ent & PTE_DIRTY:
                            folio_flags[head] = flags | F_DIRTY
                            dirty_file = True
                            if batch_rmap:
                                # The TLB flush must come before the rmap
                                # removal: writeback must not find the page
                                # clean while a CPU can still dirty it.
                                force_flush = dirty_flush = True
                        if clear is not None:
                            clear((addr, pfn, rmap_mode, dirty_file))
                        if not batch_rmap:
                            if emit is not None:
                                emit("rmap_remove_now", page=pfn)
                            self.page_remove_rmap(pfn, False)
                        freed += 1
                        if remove_page(pfn, page_size, 0):
                            force_flush = queue_full = True
                            addr += page_size
                            break
                else:
                    # Non-present: swap, migration, marker, hwpoison.
                    if self.zap_nonpresent(ent, addr, anon_vma, details):
                        entries[i] = 0
            i += 1
            addr += page_size
            if addr == end:
                break
        if last > first >= 0:
            tlb.tlb_flush_pte_range(first, last - first + page_size)
        self.rss_freed += freed
        # Do the TLB flush before dropping the lock.
        if force_flush:
            if emit is not None:
                emit("force_flush", dirty=dirty_flush, full=queue_full)
            tlb.tlb_flush_mmu_tlbonly()
        after_unlock = "flush-rmaps-after-unlock" in self.mutants
        # Rmap removal must happen before the lock is dropped.
        if not after_unlock and not rmap_before_flush:
            tlb.tlb_flush_rmaps(gvma)
        if emit is not None:
            emit("ptl_unlock", table=table.id)
        if after_unlock:
            tlb.tlb_flush_rmaps(gvma)
        # Free what a forced flush made freeable; the caller comes back for
        # the rest of the table.
        if force_flush:
            tlb.tlb_flush_mmu()
        if self.progress is not None:
            self.progress(len(entries))
        return addr

    def zap_huge_pmd(self, tlb: MmuGather, vma: MmVma, pmd_i: int, addr: int) -> bool:
        """Unmap a PMD-mapped THP (mm/huge_memory.c)."""
        aspace = self.aspace
        geo = self.geo
        tlb.tlb_change_page_size(geo.pmd_size)
        lock = aspace.pmd_tables.get(addr >> geo.pud_shift, MM_PAGE_TABLE_LOCK)
        emit = self.emit
        if emit is not None:
            emit("ptl_lock", table=lock, vma_start=vma.start)
        orig = aspace.huge_pmds.pop(pmd_i)
        tlb.tlb_remove_pmd_tlb_entry(addr)
        pfn = orig >> 8
        if vma.kind == "pfnmap" or orig & PTE_SPECIAL:
            # Special or huge-zero PMD: nothing to give back but the
            # deposited table.
            if emit is not None:
                emit("pte_clear", addr=addr, page=None, level="pmd", size=geo.pmd_size)
            self.zap_deposited_table(pmd_i)
            if emit is not None:
                emit("ptl_unlock", table=lock)
            return True
        if emit is not None:
            emit("pte_clear", addr=addr, page=pfn, level="pmd", size=geo.pmd_size, rmap="now",
                 dirty_file=False)
            emit("rmap_remove_now", page=pfn)
        self.page_remove_rmap(pfn, True)
        self.zap_deposited_table(pmd_i)
        self.rss_freed += geo.ptrs_per_pte
        if emit is not None:
            emit("ptl_unlock", table=lock)
        tlb.tlb_remove_page_size(pfn, geo.pmd_size)
        return True

    def zap_deposited_table(self, pmd_i: int) -> None:
        """The PTE table deposited for a THP was never reachable: pte_free() now."""
        table = self.aspace.deposited.pop(pmd_i, None)
        if table is not None:
            self.aspace.tables.pop(table, None)
            self.deposited_freed += 1

    def split_huge_pmd(self, vma: MmVma, pmd_i: int) -> None:
        """__split_huge_pmd(): map an anon THP's pages with PTEs from the
        deposited table.  A file THP is not remapped: its PMD is cleared and
        flushed at once (pmdp_huge_clear_flush()), the page cache still has
        the folio and a later fault maps what is needed."""
        aspace = self.aspace
        geo = self.geo
        if not vma.is_anon:
            orig = aspace.huge_pmds.pop(pmd_i)
            pfn = orig >> 8
            if not orig & PTE_SPECIAL:
                self.page_remove_rmap(pfn, True)
                self.put_page(aspace.pages.head[pfn - PFN_BASE])
                self.flush_folio_frees()
            return
        orig = aspace.huge_pmds.pop(pmd_i)
        table_id = aspace.deposited.pop(pmd_i, None)
        addr = pmd_i << geo.pmd_shift
        n = geo.ptrs_per_pte
        if table_id is None:
            table_id = aspace.new_table("pte", addr)
        table = PteTable(table_id, array("q", bytes(8 * n)))
        aspace.pte_tables[pmd_i] = table
        pfn = orig >> 8
        store = aspace.pages
        head = store.head[pfn - PFN_BASE]
        bits = orig & (PTE_DIRTY | 0x4) | PTE_PRESENT
        for k in range(n):
            table.entries[k] = ((pfn + k) << 8) | bits
            store.mapcount[head + k] += 1
        store.nr_mapped[head] += n
        store.refcount[head] += n - 1
        self.page_remove_rmap(pfn, True)

    def zap_pmd_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> int:
        aspace = self.aspace
        geo = self.geo
        pmd_size = geo.pmd_size
        pmd_shift = geo.pmd_shift
        pte_tables = aspace.pte_tables
        huge_pmds = aspace.huge_pmds
        while True:
            nxt = _addr_end(addr, end, pmd_size)
            pmd_i = addr >> pmd_shift
            if pmd_i in huge_pmds:
                if nxt - addr != pmd_size:
                    self.split_huge_pmd(vma, pmd_i)
                elif self.zap_huge_pmd(tlb, vma, pmd_i, addr):
                    addr = nxt
                    if addr == end:
                        break
                    continue
            if pmd_i not in pte_tables:
                addr = nxt
            else:
                addr = self.zap_pte_range(tlb, vma, pmd_i, addr, nxt, details)
                # A full queue ended the table early: the same PMD again.
            if addr == end:
                break
        return addr

    def unmap_page_range(
        self,
        tlb: MmuGather,
        vma: MmVma,
        addr: int,
        end: int,
        details: ZapDetails | None,
    ) -> None:
        aspace = self.aspace
        geo = self.geo
        tlb.tlb_start_vma(vma.gvma)
        pud_size = geo.pud_size
        while True:
            nxt = _addr_end(addr, end, pud_size)
            if (addr >> geo.pud_shift) in aspace.pmd_tables:
                self.zap_pmd_range(tlb, vma, addr, nxt, details)
            addr = nxt
            if addr == end:
                break
        tlb.tlb_end_vma(vma.gvma)

    def unmap_hugepage_range(
        self, tlb: MmuGather, vma: MmVma, start: int, end: int
    ) -> None:
        """__unmap_hugepage_range() (mm/hugetlb.c): one huge entry at a time."""
        aspace = self.aspace
        geo = self.geo
        sz = vma.hpage_size
        emit = self.emit
        tlb.tlb_change_page_size(sz)
        tlb.tlb_start_vma(vma.gvma)
        table = aspace.huge_puds if sz >= geo.pud_size else aspace.huge_pmds
        shift = geo.pud_shift if sz >= geo.pud_size else geo.pmd_shift
        address = start
        while address < end:
            key = address >> shift
            ent = table.get(key)
            if ent is None:
                address += sz
                continue
            # huge_pte_lock(): the PMD's split lock for PMD-sized pages,
            # mm->page_table_lock otherwise.
            lock = (
                aspace.pmd_tables.get(address >> geo.pud_shift, MM_PAGE_TABLE_LOCK)
                if sz == geo.pmd_size
                else MM_PAGE_TABLE_LOCK
            )
            if emit is not None:
                emit("ptl_lock", table=lock, vma_start=vma.start)
            del table[key]
            if not ent & PTE_PRESENT:
                if emit is not None:
                    emit("ptl_unlock", table=lock)
                address += sz
                continue
            tlb.tlb_remove_huge_tlb_entry(address, sz)
            pfn = ent >> 8
            head = aspace.pages.head[pfn - PFN_BASE]
            if ent & PTE_DIRTY:
                aspace.pages.flags[head] |= F_DIRTY
            if emit is not None:
                emit("pte_clear", addr=address, page=pfn, level="huge", size=sz, rmap="now",
                     dirty_file=False)
                emit("rmap_remove_now", page=pfn)
            self.page_remove_rmap(pfn, True)
            if emit is not None:
                emit("ptl_unlock", table=lock)
            tlb.tlb_remove_page_size(pfn, sz)
            address += sz
        tlb.tlb_end_vma(vma.gvma)

    def unmap_single_vma(
        self,
        tlb: MmuGather,
        vma: MmVma,
        start_addr: int,
        end_addr: int,
        details: ZapDetails | None,
    ) -> None:
        start = max(vma.start, start_addr)
        if start >= vma.end:
            return
        end = min(vma.end, end_addr)
        if end <= vma.start:
            return
        if self.emit is not None:
            self.emit("vma_unmap", start=start, end=end, kind=vma.kind, vma_start=vma.start)
        if start != end:
            if vma.is_hugetlb:
                self.unmap_hugepage_range(tlb, vma, start, end)
            else:
                self.unmap_page_range(tlb, vma, start, end, details)

    def unmap_vmas(
        self, tlb: MmuGather, vmas: Sequence[MmVma], start_addr: int, end_addr: int
    ) -> None:
        for vma in vmas:
            self.unmap_single_vma(tlb, vma, start_addr, end_addr, UNMAP_DETAILS)

    # ------------------------------------------------------------------
    # mm/memory.c: freeing page tables
    # ------------------------------------------------------------------

    def _unhook(self, level: str, table: int, addr: int) -> None:
        if self.emit is not None:
            self.emit("table_unhook", table=table, level=level, addr=addr)

    def free_pte_range(self, tlb: MmuGather, pmd_i: int, addr: int) -> None:
        table = self.aspace.pte_tables.pop(pmd_i)
        self._unhook("pte", table.id, addr)
        tlb.pte_free_tlb(table.id, addr)

    def free_pmd_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.geo
        aspace = self.aspace
        start = addr
        while True:
            nxt = _addr_end(addr, end, geo.pmd_size)
            pmd_i = addr >> geo.pmd_shift
            # A leftover huge entry is a "bad" pmd: cleared, nothing to free.
            aspace.huge_pmds.pop(pmd_i, None)
            if pmd_i in aspace.pte_tables:
                self.free_pte_range(tlb, pmd_i, addr)
            addr = nxt
            if addr == end:
                break
        self._free_table_above(tlb, "pmd", start, end, floor, ceiling)

    def free_pud_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.geo
        aspace = self.aspace
        start = addr
        while True:
            nxt = _addr_end(addr, end, geo.pud_size)
            aspace.huge_puds.pop(addr >> geo.pud_shift, None)
            if (addr >> geo.pud_shift) in aspace.pmd_tables:
                self.free_pmd_range(tlb, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break
        self._free_table_above(tlb, "pud", start, end, floor, ceiling)

    def free_p4d_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.geo
        aspace = self.aspace
        start = addr
        while True:
            nxt = _addr_end(addr, end, geo.p4d_size)
            if (addr >> geo.p4d_shift) in aspace.pud_tables:
                self.free_pud_range(tlb, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break
        self._free_table_above(tlb, "p4d", start, end, floor, ceiling)

    def _free_table_above(
        self, tlb: MmuGather, level: str, start: int, end: int, floor: int, ceiling: int
    ) -> None:
        """The tail of free_{pmd,pud,p4d}_range(): once the tables below
        [start, end) are gone, the ``level`` table that held them goes too,
        unless a VMA outside [floor, ceiling) may still use it."""
        geo = self.geo
        aspace = self.aspace
        # The level's table is indexed by the entry one level up that points to it.
        shift, tables, free_tlb = {
            "pmd": (geo.pud_shift, aspace.pmd_tables, tlb.pmd_free_tlb),
            "pud": (geo.p4d_shift, aspace.pud_tables, tlb.pud_free_tlb),
            "p4d": (geo.pgdir_shift, aspace.p4d_tables, tlb.p4d_free_tlb),
        }[level]
        if not self._table_free_allowed(start, end, floor, ceiling, shift):
            return
        start &= ~((1 << shift) - 1) & MASK64
        table = tables.pop(start >> shift, None)
        if table is not None:
            self._unhook(level, table, start)
            free_tlb(table, start)

    @staticmethod
    def _table_free_allowed(start: int, end: int, floor: int, ceiling: int, shift: int) -> bool:
        """May the table above [start, end) go?  Only if no VMA outside
        [floor, ceiling) can still use it (0 as ceiling is the top)."""
        mask = ~((1 << shift) - 1) & MASK64
        start &= mask
        if start < floor:
            return False
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return False
        return not ((end - 1) & MASK64) > ((ceiling - 1) & MASK64)

    def free_pgd_range(
        self, tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int
    ) -> None:
        geo = self.geo
        pmd_mask = ~(geo.pmd_size - 1) & MASK64
        # 0 is both the bottom (addr, floor) and the top (end, ceiling) of
        # the address space; hence the "- 1"s.
        addr &= pmd_mask
        if addr < floor:
            addr = (addr + geo.pmd_size) & MASK64
            if not addr:
                return
        if ceiling:
            ceiling &= pmd_mask
            if not ceiling:
                return
        if ((end - 1) & MASK64) > ((ceiling - 1) & MASK64):
            end = (end - geo.pmd_size) & MASK64
        if addr > ((end - 1) & MASK64):
            return
        # Page-table pages are queued as PAGE_SIZE pages.
        tlb.tlb_change_page_size(geo.page_size)
        aspace = self.aspace
        while True:
            nxt = _addr_end(addr, end, geo.pgdir_size)
            if (addr >> geo.pgdir_shift) in aspace.p4d_tables:
                self.free_p4d_range(tlb, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break

    def free_pgtables(
        self, tlb: MmuGather, vmas: Sequence[MmVma], floor: int, ceiling: int
    ) -> None:
        """Free the tables under ``vmas`` that no VMA outside [floor, ceiling) uses."""
        geo = self.geo
        i = 0
        n = len(vmas)
        while i < n:
            vma = vmas[i]
            addr = vma.start
            i += 1
            if vma.is_hugetlb:
                nxt_start = vmas[i].start if i < n else ceiling
                self.free_pgd_range(tlb, addr, vma.end, floor, nxt_start)
                continue
            # Gather nearby VMAs into one walk down.
            while i < n and vmas[i].start <= vma.end + geo.pmd_size and not vmas[i].is_hugetlb:
                vma = vmas[i]
                i += 1
            nxt_start = vmas[i].start if i < n else ceiling
            self.free_pgd_range(tlb, addr, vma.end, floor, nxt_start)

    # ------------------------------------------------------------------
    # The system calls
    # ------------------------------------------------------------------

    def exit_mmap(self) -> None:
        """The last user of the mm is gone: unmap everything, free every table."""
        vmas = list(self.aspace.vmas)
        # mmput() dropped the last user: no thread runs in the mm any more.
        self.mm.exit()
        if self.machine.hw_emit is not None:
            self.machine.hw_emit("mm_exit")
        if not vmas:
            return
        tlb = tlb_gather_mmu_fullmm(self.machine, self.mm)
        self.unmap_vmas(tlb, vmas, 0, MASK64)
        self.free_pgtables(tlb, vmas, 0, 0)
        tlb.tlb_finish_mmu()
        self.aspace.vmas.clear()

    def munmap(self, start: int, end: int) -> None:
        """do_vmi_align_munmap() + unmap_region(): split the VMAs at the
        edges, unmap the detached ones, free the tables only they used."""
        aspace = self.aspace
        for vma in aspace.vmas:
            # hugetlb_vm_op_split(): a hugetlb VMA splits only on a huge page
            # boundary; otherwise munmap() fails with EINVAL, unmapping nothing.
            for edge in (start, end):
                if vma.is_hugetlb and vma.start < edge < vma.end and edge % vma.hpage_size:
                    return
        self._split_at(start)
        self._split_at(end)
        detached = [v for v in aspace.vmas if v.start >= start and v.end <= end]
        if not detached:
            return
        prev = max((v for v in aspace.vmas if v.end <= start), key=lambda v: v.end, default=None)
        nxt = min((v for v in aspace.vmas if v.start >= end), key=lambda v: v.start, default=None)
        aspace.vmas[:] = [v for v in aspace.vmas if v not in detached]
        tlb = tlb_gather_mmu(self.machine, self.mm)
        self.unmap_vmas(tlb, detached, start, end)
        self.free_pgtables(tlb, detached, prev.end if prev else 0, nxt.start if nxt else 0)
        tlb.tlb_finish_mmu()

    def madvise_dontneed(self, start: int, end: int) -> None:
        """MADV_DONTNEED: zap_page_range_single() per VMA; tables stay."""
        for vma in [v for v in self.aspace.vmas if v.start < end and v.end > start]:
            # madvise_walk_vmas() stops at the first VMA it refuses (EINVAL):
            # VM_PFNMAP, or a hugetlb range not starting on a huge page.
            if vma.kind == "pfnmap":
                return
            lo, hi = max(start, vma.start), min(end, vma.end)
            if vma.is_hugetlb:
                mask = vma.hpage_size - 1
                if lo & mask:
                    return
                hi &= ~mask
                if hi <= lo:
                    continue
            tlb = tlb_gather_mmu(self.machine, self.mm)
            self.unmap_single_vma(tlb, vma, lo, hi, None)
            tlb.tlb_finish_mmu()

    def _split_at(self, addr: int) -> None:
        aspace = self.aspace
        for k, vma in enumerate(aspace.vmas):
            if vma.start < addr < vma.end:
                pages = (addr - vma.start) >> self.geo.page_shift
                low = _clone(vma, vma.start, addr, vma.pgoff)
                high = _clone(vma, addr, vma.end, vma.pgoff + pages)
                aspace.vmas[k : k + 1] = [low, high]
                return


def _clone(vma: MmVma, start: int, end: int, pgoff: int) -> MmVma:
    return MmVma(
        start=start,
        end=end,
        kind=vma.kind,
        exec=vma.exec,
        name=vma.name,
        hpage_size=vma.hpage_size,
        file=vma.file,
        pgoff=pgoff,
    )


def _addr_end(addr: int, end: int, size: int) -> int:
    """p?d_addr_end(): the next boundary of ``size`` after ``addr``, or ``end``."""
    boundary = ((addr + size) & ~(size - 1)) & MASK64
    return boundary if ((boundary - 1) & MASK64) < ((end - 1) & MASK64) else end


def run_ops(teardown: Teardown, ops: Sequence[dict[str, Any]], rcu_at_end: bool = True) -> None:
    """Run scenario operations in order; a grace period ends the run so that
    RCU-freed tables are freed too."""
    for op in ops:
        kind = op["kind"]
        if kind == "exit":
            teardown.exit_mmap()
        elif kind == "munmap":
            teardown.munmap(op["start"], op["end"])
        elif kind == "madvise_dontneed":
            teardown.madvise_dontneed(op["start"], op["end"])
        else:  # pragma: no cover - the scenario validator rejects others
            raise ValueError(f"unknown operation {kind!r}")
    if rcu_at_end:
        teardown.machine.rcu_grace_period()
