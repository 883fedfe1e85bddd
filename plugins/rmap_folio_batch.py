"""The ``folio-batch`` strategy: what upstream did instead of the seed patch,
in v6.9 (David Hildenbrand, "mm/memory: optimize unmap/zap with PTE-mapped
THP", v3, patches 8-10; on top of the v6.5 ``delayed_rmap`` mechanism, which
upstream kept).

* The caller (``FolioBatchMemory``, ``core/callers/memory_v6_9.py``)
  batches the consecutive PTEs that map consecutive pages of one large
  folio (``folio_pte_batch()``) and hands them over at once:
  ``folio_remove_rmap_ptes(folio, page, nr)`` and
  ``__tlb_remove_folio_pages(tlb, page, nr, delay_rmap)``.
* The gather keeps page pointers; a run of ``nr > 1`` pages takes two
  entries, the page with ``ENCODED_PAGE_BIT_NR_PAGES_NEXT`` and then
  ``nr``; so that one always fits, a batch counts as full at ``max - 1``
  entries.
* Rmap removal is delayed only for dirty file pages, as in v6.5:
  ``tlb_delay_rmap()``, the refusal in ``tlb_next_batch()``, and
  ``tlb_flush_rmaps()`` walking ``tlb->local`` and ``tlb->active``, which now
  calls ``folio_remove_rmap_ptes()`` once per flagged entry (with its
  ``nr``).
* Freeing: ``__tlb_batch_free_encoded_pages()`` frees chunks of at most 512
  entries (one more when the last has its ``nr`` after it);
  ``free_pages_and_swap_cache()`` calls ``free_swap_cache()`` once per folio
  entry and ``release_pages()`` drops ``nr`` references at once.
* s390 (MMU_GATHER_NO_GATHER) has its own ``__tlb_remove_folio_pages()``,
  which frees the run at once through ``free_pages_and_swap_cache()``.

Unlike ``legacy`` and ``ranges``, the PTE batching is in ``mm/memory.c`` for
every configuration, so this strategy also changes ``up`` and ``s390``.

Kernel sources: mm/mmu_gather.c and include/asm-generic/tlb.h of v6.9
(``__tlb_remove_folio_pages_size``, ``tlb_flush_rmap_batch``,
``__tlb_batch_free_encoded_pages``), mm/memory.c (``zap_present_ptes``,
``zap_present_folio_ptes``), mm/rmap.c (``__folio_remove_rmap``),
arch/s390/include/asm/tlb.h.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

import attrs
from mmugather.core.batch import MmuGatherBatch
from mmugather.core.constants import FREE_CHUNK, MASK32
from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma
from mmugather.plugins.rmap_legacy import DELAY_RMAP, tlb_delay_rmap
from mmugather.plugins.rmap_legacy import (  # v6.9 kept the batch limit
    tlb_next_batch_allowed as tlb_next_batch_allowed,
)

__all__ = ["DELAY_RMAP", "NR_PAGES_NEXT", "remove_folio_pages", "tlb_delay_rmap"]

#: ENCODED_PAGE_BIT_NR_PAGES_NEXT: the next entry is this page's nr_pages
NR_PAGES_NEXT = 2

KEY = "folio-batch"

#: __tlb_remove_folio_pages(page, nr_pages, delay_rmap) -> queue full?
FolioRemover = Callable[[int, int, int], bool]


class FolioModel(Protocol):
    def folio_head(self, pfn: int) -> int: ...

    def gather_remove_rmap_ptes(self, first: int, nr: int, vma: Vma) -> None: ...

    def release_ranges(self, ranges: Sequence[tuple[int, int]]) -> None: ...


@attrs.define(slots=True)
class FolioBatchState:
    #: __tlb_remove_folio_pages() of this arch
    remove_folio_pages: FolioRemover
    #: the gather queues (the batches hold this strategy's entries)
    gathering: bool = False
    model: FolioModel | None = None


def _folio_model(tlb: MmuGather) -> FolioModel | None:
    model: Any = tlb.model
    return model if hasattr(model, "gather_remove_rmap_ptes") else None


def remove_folio_pages(tlb: MmuGather) -> FolioRemover:
    """``__tlb_remove_folio_pages`` for this gather (the caller binds it once
    per PTE table, as it binds ``tlb.remove_page``)."""
    st: FolioBatchState = tlb.plugin_state[KEY]
    return st.remove_folio_pages


@hookimpl(wrapper=True)
def tlb_page_remover(tlb: MmuGather) -> Generator[None, PageRemover, PageRemover]:
    remover = yield
    model = _folio_model(tlb)
    if remover == tlb.queue_page:
        queue = _queue(tlb)
        tlb.plugin_state[KEY] = FolioBatchState(
            remove_folio_pages=queue, gathering=True, model=model
        )

        def remove_page(page: int, page_size: int, flags: int = 0) -> bool:
            # __tlb_remove_page_size(): a run of one page of page_size.
            return queue(page, 1, flags & DELAY_RMAP, page_size)

        return remove_page
    # MMU_GATHER_NO_GATHER (s390; or a mutant that frees at once): pages
    # come one by one to the arch's remover; a run of PTEs goes at once to
    # free_pages_and_swap_cache(), as s390's __tlb_remove_folio_pages() does.
    tlb.plugin_state[KEY] = FolioBatchState(
        remove_folio_pages=_free_at_once(tlb, model), model=model
    )
    return remover


def _free_at_once(tlb: MmuGather, model: FolioModel | None) -> FolioRemover:
    def free(page: int, nr_pages: int, delay_rmap: int) -> bool:
        if delay_rmap:
            tlb.vm_warn("delay_rmap")
        # free_pages_and_swap_cache() on {page | NR_PAGES_NEXT, nr_pages}
        if tlb.emit is not None:
            tlb.emit("free_ranges", ranges=[[page, nr_pages]])
        if model is not None:
            model.release_ranges([(page, nr_pages)])
        return False

    return free


def _queue(tlb: MmuGather) -> Callable[..., bool]:
    """__tlb_remove_folio_pages_size() of v6.9."""
    detail = tlb.detail
    track = tlb.track_page_size
    batch_rmap = tlb.batch_rmap

    def queue(page: int, nr_pages: int, delay_rmap: int, page_size: int = 0) -> bool:
        if not page_size:
            page_size = tlb.geometry.page_size
        if not tlb.end:
            tlb.vm_bug("!tlb->end")
        if track and tlb.page_size != page_size & MASK32:
            tlb.vm_warn("tlb->page_size != page_size")
        if delay_rmap and batch_rmap:
            # The caller's tlb_delay_rmap() (a replay records only the flag).
            tlb.delayed_rmap = True
        batch = tlb.active
        nr = batch.nr
        flags = DELAY_RMAP if delay_rmap else 0
        if nr_pages == 1:
            if nr >= batch.max:
                tlb.vm_bug("batch->nr > batch->max - 1")
            batch.pages[nr] = page
            batch.flags[nr] = flags
            nr += 1
        else:
            if nr + 1 >= batch.max:
                tlb.vm_bug("batch->nr > batch->max - 1")
            batch.pages[nr] = page
            batch.flags[nr] = flags | NR_PAGES_NEXT
            batch.pages[nr + 1] = nr_pages  # encode_nr_pages(nr_pages)
            batch.flags[nr + 1] = 0
            nr += 2
        batch.nr = nr
        if detail is not None:
            detail("page_queued", page=page, batch=batch.index, nr=nr)
        # Make sure that another page + nr_pages (two entries) always fits.
        if nr >= batch.max - 1:
            if not tlb.tlb_next_batch():
                return True
            batch = tlb.active
        if batch.nr > batch.max - 1:
            tlb.vm_bug("batch->nr > batch->max - 1")
        return False

    return queue


def _entries(batch: MmuGatherBatch, start: int, stop: int) -> list[tuple[int, int, int]]:
    """(page, nr_pages, flags) of the entries in [start, stop)."""
    out = []
    pages, flags = batch.pages, batch.flags
    i = start
    while i < stop:
        f = flags[i]
        if f & NR_PAGES_NEXT:
            out.append((pages[i], pages[i + 1], f))
            i += 2
        else:
            out.append((pages[i], 1, f))
            i += 1
    return out


@hookimpl
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool | None:
    if not tlb.batch_rmap:
        return None
    st: FolioBatchState = tlb.plugin_state[KEY]
    model = st.model
    emit = tlb.emit
    walked = removed = 0
    if tlb.delayed_rmap:
        batches = [tlb.local] if tlb.active is tlb.local else [tlb.local, tlb.active]
        for batch in batches:
            walked += batch.nr
            for page, nr_pages, flags in _entries(batch, 0, batch.nr):
                if not flags & DELAY_RMAP:
                    continue
                # folio_remove_rmap_ptes(page_folio(page), page, nr_pages, vma)
                if emit is not None:
                    if nr_pages == 1:
                        emit("rmap_remove", page=page)
                    else:
                        folio = model.folio_head(page) if model is not None else page
                        emit("rmap_remove_range", folio=folio, first=page, nr=nr_pages)
                if model is not None:
                    model.gather_remove_rmap_ptes(page, nr_pages, vma)
                removed += nr_pages
        tlb.delayed_rmap = False
    if emit is not None:
        emit("rmap_walk", walked=walked, removed=removed)
    return True


@hookimpl
def tlb_discard_rmaps(tlb: MmuGather) -> bool | None:
    # v6.9 has no tlb_discard_rmaps() either.
    return True if tlb.batch_rmap else None


@hookimpl
def tlb_free_batch(tlb: MmuGather, batch: MmuGatherBatch) -> bool | None:
    st: FolioBatchState | None = tlb.plugin_state.get(KEY)
    if st is None or not st.gathering:
        return None
    emit = tlb.emit
    model = st.model
    offset = 0
    while batch.nr:
        nr = min(FREE_CHUNK, batch.nr)
        # Cover page + nr_pages: never leave nr_pages behind.
        if batch.flags[offset + nr - 1] & NR_PAGES_NEXT:
            nr += 1
        entries = _entries(batch, offset, offset + nr)
        if all(n == 1 for _p, n, _f in entries):
            tlb.free_pages_and_swap_cache([p for p, _n, _f in entries])
        else:
            if emit is not None:
                emit("free_ranges", ranges=[[p, n] for p, n, _f in entries])
            if model is not None:
                model.release_ranges([(p, n) for p, n, _f in entries])
        offset += nr
        batch.nr -= nr
    return True
