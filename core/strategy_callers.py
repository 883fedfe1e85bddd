"""Callers of the strategies other than the seed patch's: ``zap_pte_range()``
as the kernel code each strategy models has it.

:class:`Teardown` (``core/callers.py``) is the seed patch's caller, used by
``pointer``; :class:`RangesTeardown` is the same caller under the rest of
Ryan Roberts' series, for ``ranges``.  :class:`LegacyTeardown` is v6.5
before the seed patch (``mm/memory.c``), for ``legacy``;
:class:`FolioBatchTeardown` is v6.9's (PTE batching of large folios), for
``folio-batch``.  Everything but the per-PTE-table loop (or, for ``ranges``,
``page_remove_rmap()``) is inherited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from mmugather.core.aspace import (
    F_ANON,
    F_DIRTY,
    F_HUGETLB,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    AddressSpace,
    MmVma,
)
from mmugather.core.callers import Teardown, ZapDetails
from mmugather.core.gather import MmuGather
from mmugather.core.mm import Machine
from mmugather.plugins.rmap_legacy import DELAY_RMAP, tlb_delay_rmap


class RangesTeardown(Teardown):
    """The seed patch's callers on the series' ``mm/rmap.c``.

    Its patch 1 (unchanged from "Optimize large folio interaction with
    deferred split" v4 2/3) makes ``page_remove_rmap()`` of a PTE mapping a
    wrapper of ``folio_remove_rmap_range(folio, page, 1, vma)``: so where a
    rmap goes at once (``up``, ``s390``), any large anonymous folio left
    partly mapped is queued for a deferred split, not only PMD-sized ones
    as in v6.5.  PMD and hugetlb mappings keep v6.5's path.
    """

    def page_remove_rmap(self, pfn: int, compound: bool) -> None:
        store = self.aspace.pages
        if compound or store.flags[store.head[pfn - PFN_BASE]] & F_HUGETLB:
            super().page_remove_rmap(pfn, compound)
        else:
            self._remove_pte_rmaps(pfn, 1, per_range=True)


class LegacyTeardown(Teardown):
    """The v6.5 ``zap_pte_range()`` before the seed patch.

    * no ``tlb_discard_rmaps()``;
    * only a dirty file page has its rmap removal delayed, when
      ``tlb_delay_rmap()`` says so (CONFIG_SMP with gathering); it forces
      the flush; every other page's rmap is removed at once;
    * the page is queued with the delay flag encoded beside it;
    * ``tlb_flush_mmu_tlbonly()`` and ``tlb_flush_rmaps()`` only when the
      flush is forced, then ``tlb_flush_mmu()`` after the unlock.
    """

    def __init__(
        self,
        aspace: AddressSpace,
        machine: Machine,
        *,
        mutants: Sequence[str] = (),
        report: Callable[[str, str], None] | None = None,
        rmap_observer: Callable[[Iterable[int], int], None] | None = None,
    ) -> None:
        if mutants:
            raise ValueError(
                "caller mutants break the seed patch's zap_pte_range(); the legacy caller "
                "has none"
            )
        super().__init__(aspace, machine, report=report, rmap_observer=rmap_observer)

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
        table = self.aspace.pte_tables.get(pmd_i)
        if table is None:
            return addr
        emit = self.emit
        clear = self.rows.pte_clear if self.rows is not None else None
        gvma = vma.gvma
        if emit is not None:
            emit("ptl_lock", table=table.id, vma_start=vma.start)
        entries = table.entries
        i = (addr >> geo.page_shift) & (geo.ptrs_per_pte - 1)
        store = self.aspace.pages
        head_of = store.head
        folio_flags = store.flags
        remove_page = tlb.remove_page
        anon_vma = vma.is_anon
        force_flush = queue_full = dirty_flush = False
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
                        if clear is not None:
                            clear((addr, None, None, False))
                    else:
                        pfn = ent >> 8
                        head = head_of[pfn - PFN_BASE]
                        flags = folio_flags[head]
                        delay_rmap = 0
                        dirty_file = False
                        if not flags & F_ANON and ent & PTE_DIRTY:
                            folio_flags[head] = flags | F_DIRTY
                            dirty_file = True
                            if tlb_delay_rmap(tlb):
                                delay_rmap = DELAY_RMAP
                                force_flush = dirty_flush = True
                        if clear is not None:
                            clear((addr, pfn, "batched" if delay_rmap else "now", dirty_file))
                        if not delay_rmap:
                            if emit is not None:
                                emit("rmap_remove_now", page=pfn)
                            self.page_remove_rmap(pfn, False)
                        freed += 1
                        if remove_page(pfn, page_size, delay_rmap):
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
        # Do the actual TLB flush before dropping ptl.
        if force_flush:
            if emit is not None:
                emit("force_flush", dirty=dirty_flush, full=queue_full)
            tlb.tlb_flush_mmu_tlbonly()
            tlb.tlb_flush_rmaps(gvma)
        if emit is not None:
            emit("ptl_unlock", table=table.id)
        # If we forced a TLB flush (either due to running out of batch
        # buffers or because we needed to flush dirty TLB entries before
        # releasing the ptl), free the batched memory too.
        if force_flush:
            tlb.tlb_flush_mmu()
        if self.progress is not None:
            self.progress(len(entries))
        return addr


class FolioBatchTeardown(LegacyTeardown):
    """The v6.9 ``zap_pte_range()`` (``zap_present_ptes()``,
    ``zap_present_folio_ptes()``), for the ``folio-batch`` strategy.

    As ``legacy`` (only dirty file pages delayed, no discard, rmaps flushed
    only with a forced flush), but the consecutive PTEs that map consecutive
    pages of one large folio are handled as one run (``folio_pte_batch()``:
    dirty and young bits may differ): one ``folio_remove_rmap_ptes()`` and
    one ``__tlb_remove_folio_pages()`` for the run; the folio is dirtied, and
    the run's rmap removal delayed, if any of its PTEs was dirty.
    """

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
        from mmugather.plugins.rmap_folio_batch import remove_folio_pages

        geo = self.geo
        page_size = geo.page_size
        page_shift = geo.page_shift
        tlb.tlb_change_page_size(page_size)
        table = self.aspace.pte_tables.get(pmd_i)
        if table is None:
            return addr
        emit = self.emit
        clear = self.rows.pte_clear if self.rows is not None else None
        gvma = vma.gvma
        if emit is not None:
            emit("ptl_lock", table=table.id, vma_start=vma.start)
        entries = table.entries
        i = (addr >> page_shift) & (geo.ptrs_per_pte - 1)
        store = self.aspace.pages
        head_of = store.head
        order_of = store.order
        folio_flags = store.flags
        remove_folio = remove_folio_pages(tlb)
        anon_vma = vma.is_anon
        force_flush = queue_full = dirty_flush = False
        first = -1
        last = 0
        freed = 0
        while True:
            ent = entries[i]
            nr = 1
            if ent:
                if ent & PTE_PRESENT:
                    if first < 0:
                        first = addr
                        tlb.tlb_remove_tlb_entry(addr)
                    if ent & PTE_SPECIAL:
                        entries[i] = 0
                        last = addr
                        if clear is not None:
                            clear((addr, None, None, False))
                    else:
                        pfn = ent >> 8
                        head = head_of[pfn - PFN_BASE]
                        flags = folio_flags[head]
                        order = order_of[head]
                        if order and end - addr > page_size:
                            # folio_pte_batch(): the next present PTEs that
                            # map the next pages of this folio.
                            max_nr = min((end - addr) >> page_shift,
                                         PFN_BASE + head + (1 << order) - pfn)
                            while nr < max_nr:
                                e = entries[i + nr]
                                if (not e & PTE_PRESENT or e & PTE_SPECIAL
                                        or e >> 8 != pfn + nr):
                                    break
                                nr += 1
                        anon = flags & F_ANON
                        dirty = [bool(entries[i + k] & PTE_DIRTY) for k in range(nr)]
                        for k in range(nr):
                            entries[i + k] = 0
                        last = addr + (nr - 1) * page_size
                        delay_rmap = 0
                        if not anon and any(dirty):
                            folio_flags[head] = flags | F_DIRTY
                            if tlb_delay_rmap(tlb):
                                delay_rmap = DELAY_RMAP
                                force_flush = dirty_flush = True
                        if clear is not None:
                            rmap = "batched" if delay_rmap else "now"
                            for k in range(nr):
                                clear((addr + k * page_size, pfn + k, rmap,
                                       not anon and dirty[k]))
                        if not delay_rmap:
                            if emit is not None:
                                if nr == 1:
                                    emit("rmap_remove_now", page=pfn)
                                else:
                                    emit("rmap_remove_ptes", folio=PFN_BASE + head, first=pfn,
                                         nr=nr)
                            self.folio_remove_rmap_ptes(pfn, nr)
                        freed += nr
                        if remove_folio(pfn, nr, delay_rmap):
                            force_flush = queue_full = True
                            addr += nr * page_size
                            break
                else:
                    # Non-present: swap, migration, marker, hwpoison.
                    if self.zap_nonpresent(ent, addr, anon_vma, details):
                        entries[i] = 0
            i += nr
            addr += nr * page_size
            if addr == end:
                break
        if last > first >= 0:
            tlb.tlb_flush_pte_range(first, last - first + page_size)
        self.rss_freed += freed
        if force_flush:
            if emit is not None:
                emit("force_flush", dirty=dirty_flush, full=queue_full)
            tlb.tlb_flush_mmu_tlbonly()
            tlb.tlb_flush_rmaps(gvma)
        if emit is not None:
            emit("ptl_unlock", table=table.id)
        if force_flush:
            tlb.tlb_flush_mmu()
        if self.progress is not None:
            self.progress(len(entries))
        return addr
