"""mm/swap.c, mm/swap_state.c and mm/swapfile.c of v6.5: dropping folio
references, the swap cache, and swap entries.

:class:`Swap` frees what the gather frees: ``free_pages_and_swap_cache()``
(``release_pages()`` after ``free_swap_cache()``) for queued pages, the
series' ``free_folios_and_swap_cache()`` for page ranges, and
``free_swap_and_cache()`` for a swap entry zapped from a PTE.  A folio
whose last reference goes is marked freed; the folios one release freed
are reported together, in one ``folio_free`` event.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from mmugather.core.aspace import F_FREED, F_SWAPCACHE, PFN_BASE, TABLE_ID_BASE
from mmugather.core.callers.context import ZapContext
from mmugather.core.callers.memory_fast import release_pages
from mmugather.core.callers.rmap import Rmap


@attrs.define(slots=True, eq=False)
class Swap:
    """Folio references and the swap cache."""

    ctx: ZapContext
    #: free_swap_cache() asks folio_mapped()
    rmap: Rmap
    #: folios whose last reference went, not yet reported
    folios_freed: list[int] = attrs.Factory(list)

    def free_pages_and_swap_cache(self, pages: Sequence[int]) -> None:
        """free_pages_and_swap_cache(): drop swap cache of unmapped folios,
        then one reference per entry (release_pages())."""
        if self.ctx.fast:
            done = release_pages(self, pages)
            if done:
                pages = pages[done:]
        aspace = self.ctx.aspace
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

    def free_folios_and_swap_cache(self, ranges: Sequence[tuple[int, int]]) -> None:
        """free_folios_and_swap_cache() of the series (and v6.9's
        free_pages_and_swap_cache() on page + nr_pages entries):
        free_swap_cache() once per range, then folios_put_refs(): one
        reference per page of the range, dropped at once."""
        aspace = self.ctx.aspace
        head_of = aspace.pages.head
        for start, nr in ranges:
            if start >= TABLE_ID_BASE:
                aspace.tables.pop(start, None)
                continue
            self.put_page(head_of[start - PFN_BASE], nr)
        self.flush_folio_frees()

    def flush_folio_frees(self) -> None:
        """One ``folio_free`` event per release, listing the folios it freed."""
        if self.folios_freed:
            emit = self.ctx.emit
            if emit is not None:
                emit("folio_free", folios=self.folios_freed)
            self.folios_freed = []

    def put_page(self, head: int, refs: int = 1) -> None:
        """free_swap_cache() then put_page() (folio_put_refs() for ``refs``
        references) on the folio of a freed entry."""
        ctx = self.ctx
        store = ctx.aspace.pages
        flags = store.flags[head]
        if flags & F_SWAPCACHE and not self.rmap.folio_mapped(head):
            # The swap cache held one reference per page of the folio.
            store.flags[head] = flags & ~F_SWAPCACHE
            store.refcount[head] -= 1 << store.order[head]
        ref = store.refcount[head] - refs
        store.refcount[head] = ref
        if ref == 0:
            store.flags[head] |= F_FREED
            self.folios_freed.append(PFN_BASE + head)
        elif ref < 0 and ctx.report is not None:
            ctx.report("refcount", f"folio {PFN_BASE + head:#x}: reference count below zero")

    def free_swap_and_cache(self, entry: int) -> None:
        """free_swap_and_cache(): drop one use of swap ``entry``."""
        swap_map = self.ctx.aspace.swap_map
        count = swap_map.get(entry, 0) - 1
        if count <= 0:
            swap_map.pop(entry, None)
        else:
            swap_map[entry] = count
