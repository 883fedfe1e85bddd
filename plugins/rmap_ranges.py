"""The ``ranges`` strategy: the rest of Ryan Roberts' series on top of the
seed patch ("mm/mmu_gather: Store and process pages in contig ranges",
v2 5/5 of "Optimize mmap_exit for large folios", with "mm: Implement
folio_remove_rmap_range()").

The gather stores ``struct pfn_range`` entries, ``[start, end)`` runs of
contiguous pages of one folio, instead of page pointers:

* ``__tlb_remove_page_size()`` extends the last range when the page is the
  next pfn and the range has not reached its folio's end
  (``tlb->range_limit``), else starts a new range; ``range_limit`` is reset
  (``ULONG_MAX``) when a range reaches its folio's end, when
  ``tlb_next_batch()`` moves on, after ``tlb_flush_rmaps()`` and after
  ``tlb_batch_pages_flush()``;
* a batch page holds ``(PAGE_SIZE - 16) / 16`` ranges (255 with 4 KiB pages,
  so ``MAX_GATHER_BATCH_COUNT`` is 10000 / 255 = 39);
* ``tlb_flush_rmaps()`` walks from the seed patch's rmap pointer (which now
  points at ranges) and calls ``folio_remove_rmap_range()`` once per range;
* ``tlb_batch_pages_flush()`` hands chunks of at most 512 ranges to
  ``free_folios_and_swap_cache()``: ``free_swap_cache()`` once per range,
  then ``folios_put_refs()``, one reference per page, dropped at once.

The caller is the seed patch's ``zap_pte_range()``, unchanged, over the
series' ``mm/rmap.c`` (``SeriesRmap``).  Folio boundaries come from the
address-space model (``GatherModel.folio_end()``, ``core/callers/model.py``);
without one every page is a folio of its own.

Registered over the arch's plugins it changes only gathering CONFIG_SMP
arches (``tlb.batch_rmap``): on ``up`` and ``s390`` every hook here defers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

import attrs
from mmugather.core.batch import MmuGatherBatch
from mmugather.core.constants import FREE_CHUNK, MASK32, MASK64, Geometry
from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl
from mmugather.core.vma import Vma
from mmugather.plugins import rmap_pointer

#: tlb->range_limit when no range is being accumulated
ULONG_MAX = MASK64
#: sizeof(struct pfn_range): two unsigned longs
PFN_RANGE_BYTES = 16

KEY = "ranges"


class FolioModel(Protocol):
    """What the strategy needs from an address-space model (``GatherModel``)."""

    def folio_head(self, pfn: int) -> int: ...

    def folio_end(self, pfn: int) -> int: ...

    def gather_remove_rmap_range(self, first: int, nr: int, vma: Vma) -> None: ...

    def release_ranges(self, ranges: Sequence[tuple[int, int]]) -> None: ...


@attrs.define(slots=True)
class RangeState:
    """The series' additions to struct mmu_gather."""

    range_limit: int = ULONG_MAX
    model: FolioModel | None = None


@functools.cache
def range_geometry(geo: Geometry) -> Geometry:
    """The arch's geometry with batch pages holding struct pfn_range entries."""
    return attrs.evolve(geo, gather_entry_bytes=PFN_RANGE_BYTES)


def _state(tlb: MmuGather) -> RangeState:
    st: RangeState = tlb.plugin_state[KEY]
    return st


def _folio_model(tlb: MmuGather) -> FolioModel | None:
    model: Any = tlb.model
    return model if hasattr(model, "release_ranges") else None


def _gathering_ranges(tlb: MmuGather) -> bool:
    """Does this gather queue pfn ranges?  Not where rmaps are not batched,
    nor where another plugin's page remover took the place of the queue
    (one that frees each page at once): then the rmap pointer's own hooks
    (which find nothing queued) apply."""
    return tlb.batch_rmap and KEY in tlb.plugin_state


@hookimpl(wrapper=True)
def tlb_page_remover(tlb: MmuGather) -> Generator[None, PageRemover, PageRemover]:
    remover = yield
    if not tlb.batch_rmap or remover != tlb.queue_page:
        return remover
    st = tlb.plugin_state[KEY] = RangeState(model=_folio_model(tlb))
    return _range_remover(tlb, st)


@hookimpl
def tlb_gather_init(tlb: MmuGather) -> None:
    if KEY in tlb.plugin_state:
        tlb.geometry = range_geometry(tlb.geometry)


def _range_remover(tlb: MmuGather, st: RangeState) -> PageRemover:
    """__tlb_remove_page_size() of the series: accumulate pfn ranges."""
    folio_end: Callable[[int], int] = (
        st.model.folio_end if st.model is not None else (lambda pfn: pfn + 1)
    )
    detail = tlb.detail
    track = tlb.track_page_size

    def remove(page: int, page_size: int, flags: int = 0) -> bool:
        if not tlb.end:
            tlb.vm_bug("!tlb->end")
        if track and tlb.page_size != page_size & MASK32:
            tlb.vm_warn("tlb->page_size != page_size")
        batch = tlb.active
        nr = batch.nr
        ends = batch.ends
        if ends is None:
            ends = batch.ends = [0] * batch.max
        # range_limit is ULONG_MAX whenever the batch is empty.
        if st.range_limit != ULONG_MAX and nr and page == ends[nr - 1]:
            # Contiguous with the range being accumulated: extend it.
            end = ends[nr - 1] = page + 1
        else:
            if nr >= batch.max:
                tlb.vm_bug("batch->nr > batch->max")
            batch.pages[nr] = page
            end = ends[nr] = page + 1
            batch.nr = nr = nr + 1
            st.range_limit = folio_end(page)
        # Never span two folios in one range.
        if end == st.range_limit:
            st.range_limit = ULONG_MAX
        if detail is not None:
            detail("page_queued", page=page, batch=batch.index, nr=nr)
        if nr == batch.max:
            if not tlb.tlb_next_batch():
                return True
            # tlb_next_batch() of the series resets range_limit.
            st.range_limit = ULONG_MAX
        return False

    return remove


@hookimpl
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool | None:
    if not _gathering_ranges(tlb):
        return None
    st = _state(tlb)
    model = st.model
    emit = tlb.emit
    batch = tlb.rmap_pend
    first = tlb.rmap_pend_first
    walked = removed = 0
    while True:
        nr = batch.nr
        ends = batch.ends
        if nr > first and ends is not None:
            pages = batch.pages
            for i in range(first, nr):
                start = pages[i]
                count = ends[i] - start
                if emit is not None:
                    folio = model.folio_head(start) if model is not None else start
                    emit("rmap_remove_range", folio=folio, first=start, nr=count)
                if model is not None:
                    model.gather_remove_rmap_range(start, count, vma)
                removed += count
            walked += nr - first
        nxt = batch.next
        if nxt is None or not nxt.nr:
            break
        batch, first = nxt, 0
    if emit is not None:
        emit("rmap_walk", walked=walked, removed=removed)
    # Move to the next range on the next insertion: no page added later may
    # join a range whose rmap is gone.
    st.range_limit = ULONG_MAX
    rmap_pointer.tlb_discard_rmaps(tlb)
    return True


@hookimpl
def tlb_discard_rmaps(tlb: MmuGather) -> bool | None:
    if not _gathering_ranges(tlb):
        return None
    if tlb.active is tlb.local and not tlb.local.nr:
        # After tlb_batch_pages_flush(), which resets range_limit first.
        _state(tlb).range_limit = ULONG_MAX
    return rmap_pointer.tlb_discard_rmaps(tlb)


@hookimpl
def tlb_free_batch(tlb: MmuGather, batch: MmuGatherBatch) -> bool | None:
    ends = batch.ends
    if ends is None or KEY not in tlb.plugin_state:
        return None
    model = _state(tlb).model
    emit = tlb.emit
    pages = batch.pages
    offset = 0
    while batch.nr:
        nr = min(FREE_CHUNK, batch.nr)
        ranges = [(pages[i], ends[i] - pages[i]) for i in range(offset, offset + nr)]
        # free_folios_and_swap_cache()
        if emit is not None:
            emit("free_ranges", ranges=[[start, count] for start, count in ranges])
        if model is not None:
            model.release_ranges(ranges)
        offset += nr
        batch.nr -= nr
    return True
