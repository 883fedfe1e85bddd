"""The teardown's fast paths: a PTE table's common entries, a batch's rmaps
and a batch's references, a step at a time, over numpy views of the
page-table and page-state arrays.

The per-PTE loop of ``zap_pte_range()`` (:mod:`.memory`) and the per-page
loops of ``tlb_flush_rmaps()`` (:mod:`.model`) and
``free_pages_and_swap_cache()`` (:mod:`.swap`) stay as they are: they are
the reference, and each hands its leading common stretch to a function here
first (only under ``ZapContext.fast``: ``mmugather run``), then goes on the
usual way from where it stopped.  What counts as common is what those loops
treat without a call, an event or a report:

* an entry: present, not special, a page of the page store whose folio is
  order-0, anonymous or clean (a dirty file page forces a flush and may
  delay its rmap); a pte_none entry is skipped as the loop skips it.  Swap,
  migration and marker entries, special PTEs, large folios and dirty file
  pages end the stretch;
* a zap under the seed patch's ``zap_pte_range()`` (not a subclass: another
  kernel's loop or a mutant's step), with the arch's page remover the
  gather's own ``queue_page()``, no detail events, the gather's page size;
  where rmaps are removed at once (``up``), only with no events and no
  reports (each removal would be an event);
* a batch's rmap removal: pages of order-0 folios still mapped; its
  release: pages of order-0 folios, no swap cache, holding a reference; in
  both, distinct pages in ascending order (a page twice sees its own first
  update), and at least :data:`MIN_PAGES` of them.

A table's stretch is cleared, reported (one :class:`~mmugather.core.clearrun.ClearRun`
per step) and queued in steps that end where the active batch fills, so
that ``tlb_next_batch()`` runs, and a full queue stops the table, exactly
where the per-PTE loop would.  ``tests/test_fast_paths.py`` proves both
give the same events, state, statistics and reports.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

import numpy as np
from mmugather.core.aspace import (
    F_ANON,
    F_FREED,
    F_SWAPCACHE,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    PteTable,
)
from mmugather.core.callers.rmap import Rmap
from mmugather.core.clearrun import ClearRun
from mmugather.core.constants import MASK32, MASK64
from mmugather.core.gather import MmuGather

if TYPE_CHECKING:
    from mmugather.core.callers.context import ZapContext
    from mmugather.core.callers.memory import Memory
    from mmugather.core.callers.swap import Swap

#: Fewer pages than this go the per-page way: numpy's cost per call (about
#: a microsecond) would outweigh what it saves.
MIN_PAGES = 32

#: Addresses (and page ids) as numpy handles them: signed 64-bit.
_I64_LIMIT = 1 << 63

#: (i, addr, first, last, freed, anon, queue_full): where zap_pte_range()'s
#: loop goes on, and what the stretch did (see zap_pte_run()).
ZapState = tuple[int, int, int, int, int, int, bool]


def _view(arr: Any, dtype: Any) -> Any:
    return np.frombuffer(arr, dtype)


def _leading(ok: Any) -> int:
    """How many leading elements of the boolean array ``ok`` are true."""
    k = int(ok.argmin())
    return len(ok) if ok[k] else k


def _in_store(idx: Any, store: Any) -> Any:
    """Which page-store indexes of ``idx`` are in the store (one unsigned
    comparison: a negative index is a huge one)."""
    return idx.view(np.uint64) < len(store)


def _ascending(idx: Any) -> bool:
    """Distinct and in ascending order (a cheap test for no repeats)."""
    return len(idx) < 2 or _leading(idx[1:] > idx[:-1]) == len(idx) - 1


def _page_index(ctx: ZapContext, pages: Any, release: bool = False) -> tuple[Any, bool]:
    """``pages`` (ints) as page-store indexes, a numpy int64 array, and
    whether all of them came from remembered steps (so are in the store:
    zap_pte_run() checked them, and the store never shrinks).

    The steps zap_pte_run() queued are remembered with their indexes
    (``ctx.fast_steps``, keyed by the identity of their first page's int):
    a batch's rmap walk or release that meets them again reuses those
    instead of converting each int, and a release forgets them.  A cache
    only: a step is used only when its pages equal the ones given.
    """
    steps = ctx.fast_steps
    n = len(pages)
    parts = []
    pos = 0
    while pos < n:
        key = id(pages[pos])
        step = steps.get(key)
        if step is None:
            break
        page_list, idx = step
        m = len(page_list)
        if pages[pos:pos + m] != page_list:
            break
        if release:
            del steps[key]
            ctx.fast_step_pages -= m
        parts.append(idx)
        pos += m
    cached = pos == n
    if not cached:
        parts.append(np.fromiter(pages[pos:] if pos else pages, np.int64, n - pos) - PFN_BASE)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), cached


def _remember_step(ctx: ZapContext, page_list: list[int], idx: Any) -> None:
    steps = ctx.fast_steps
    steps[id(page_list[0])] = (page_list, idx)
    ctx.fast_step_pages += len(page_list)
    if ctx.fast_step_pages > ctx.fast_step_limit:
        # Steps whose release never met them (freed another way, or in
        # parts): the oldest go.
        while ctx.fast_step_pages > ctx.fast_step_limit // 2:
            oldest = next(iter(steps))
            ctx.fast_step_pages -= len(steps.pop(oldest)[0])


def _queues_plainly(tlb: MmuGather, page_size: int) -> bool:
    """Is __tlb_remove_page_size() the gather's own queue_page(), with no
    per-page event and no page-size warning?"""
    remover = tlb.remove_page
    return (type(tlb) is MmuGather
            and getattr(remover, "__func__", None) is MmuGather.queue_page
            and getattr(remover, "__self__", None) is tlb
            and tlb.detail is None
            and (not tlb.track_page_size or tlb.page_size == page_size & MASK32))


def zap_pte_run(mem: Memory, tlb: MmuGather, table: PteTable, i: int, addr: int, end: int,
                batch_rmap: bool) -> ZapState:
    """zap_pte_range()'s loop over the leading common stretch of entries
    ``i``... of ``table`` ([addr, end)), a step at a time.

    Returns where the per-PTE loop goes on (entry ``i`` at ``addr``: the
    first uncommon entry, or ``end``), the first and last address it
    cleared (-1, 0: none), the pages it gave to the gather and how many of
    them are anonymous (the rss counters), and whether the queue filled
    (the loop must then stop, as after the page that filled it).  Returns
    ``i``, ``addr`` unchanged when it cannot help.
    """
    nothing: ZapState = (i, addr, -1, 0, 0, 0, False)
    ctx = mem.ctx
    entries = table.entries
    store = ctx.aspace.pages
    geo = ctx.geo
    page_size = geo.page_size
    span = end - addr
    if (type(entries) is not array or entries.typecode != "q" or span <= 0
            or span & (page_size - 1) or end >= _I64_LIMIT
            or not _queues_plainly(tlb, page_size)):
        return nothing
    if not batch_rmap and (ctx.emit is not None or ctx.report is not None
                           or type(mem.rmap) is not Rmap):
        return nothing
    n = span >> geo.page_shift
    if i + n > len(entries):
        return nothing
    ents = _view(entries, np.int64)[i:i + n]
    pos = ents.nonzero()[0]
    if not len(pos):
        return i + n, end, -1, 0, 0, 0, False
    e = ents[pos]
    pidx = (e >> 8) - PFN_BASE
    ok = ((e & (PTE_PRESENT | PTE_SPECIAL)) == PTE_PRESENT) & _in_store(pidx, store)
    k = _leading(ok)
    if k:
        e = e[:k]
        pidx = pidx[:k]
        head = _view(store.head, np.int64)[pidx]
        anon = (_view(store.flags, np.int32)[pidx] & F_ANON) != 0
        ok = ((head == pidx) & (_view(store.order, np.int8)[pidx] == 0)
              & (anon | ((e & PTE_DIRTY) == 0)))
        k = _leading(ok)
        pidx = pidx[:k]
    # The per-PTE loop takes over at the first uncommon entry.
    stop = int(pos[k]) if k < len(pos) else n
    if not k:
        return i + stop, addr + stop * page_size, -1, 0, 0, 0, False
    pos = pos[:k]
    anon_at = anon[:k]
    if not tlb.end and not (addr + int(pos[0]) * page_size + page_size) & MASK64:
        return nothing  # queue_page() would find no range: the loop says so
    pages = pidx + PFN_BASE
    mapcount = None if batch_rmap else _view(store.mapcount, np.int32)
    rows = ctx.rows
    # The addresses only for those who read the clears.
    addrs = addr + pos * page_size if rows is not None else None
    rmap = "batched" if batch_rmap else "now"
    first = -1
    last = 0
    batch = tlb.active
    done = 0
    while done < k:
        nr = batch.nr
        room = batch.max - nr
        if room <= 0:
            break  # queue_page() would hit its VM_BUG_ON: the loop does it
        m = min(room, k - done)
        step = pos[done:done + m]
        lo = int(step[0])
        hi = int(step[-1])
        # Every entry of [lo, hi] is this step's or pte_none.
        ents[lo:hi + 1] = 0
        if first < 0:
            first = addr + lo * page_size
            tlb.tlb_remove_tlb_entry(first)
        last = addr + hi * page_size
        step_pages = pages[done:done + m]
        page_list = step_pages.tolist()
        idx = pidx[done:done + m]
        _remember_step(ctx, page_list, idx)
        if addrs is not None and rows is not None:
            rows.pte_clear_run(ClearRun(addrs[done:done + m], step_pages, page_list, rmap))
        if mapcount is not None:
            # page_remove_rmap() of each page, at once (no events, no reports).
            if _ascending(idx):
                mapcount[idx] -= 1
            else:
                np.subtract.at(mapcount, idx, 1)
        top = nr + m
        batch.pages[nr:top] = page_list
        batch.flags[nr:top] = [0] * m
        batch.nr = top
        done += m
        if top == batch.max:
            if not tlb.tlb_next_batch():
                # The queue is full: the loop stops after this page.
                nxt = hi + 1
                return (i + nxt, addr + nxt * page_size, first, last, done,
                        int(anon_at[:done].sum()), True)
            batch = tlb.active
    if done < k:
        stop = int(pos[done])
    return (i + stop, addr + stop * page_size, first, last, done,
            int(anon_at[:done].sum()), False)


def remove_rmaps(ctx: ZapContext, pages: Any) -> int:
    """tlb_flush_rmap_batch()'s common case over the leading pages of
    ``pages``: order-0 folios still mapped lose one mapping each.  Returns
    how many it did (0: the per-page loop does them all)."""
    n = len(pages)
    if n < MIN_PAGES:
        return 0
    store = ctx.aspace.pages
    idx, cached = _page_index(ctx, pages)
    k = n if cached else _leading(_in_store(idx, store))
    if k < MIN_PAGES:
        return 0
    idx = idx[:k]
    mapcount = _view(store.mapcount, np.int32)
    left = mapcount[idx]
    k = _leading((_view(store.order, np.int8)[_view(store.head, np.int64)[idx]] == 0)
                 & (left > 0))
    if k < MIN_PAGES:
        return 0
    idx = idx[:k]
    left = left[:k]
    if not _ascending(idx):
        return 0
    mapcount[idx] = left - 1
    return k


def release_pages(swap: Swap, pages: Any) -> int:
    """free_pages_and_swap_cache()'s common case over the leading pages of
    ``pages``: order-0 folios with no swap cache drop one reference, and
    those whose last it was are freed.  Returns how many it did."""
    n = len(pages)
    if n < MIN_PAGES:
        return 0
    ctx = swap.ctx
    store = ctx.aspace.pages
    # Page-table pages (ids from TABLE_ID_BASE on) are past the store.
    idx, cached = _page_index(ctx, pages, release=True)
    k = n if cached else _leading(_in_store(idx, store))
    if k < MIN_PAGES:
        return 0
    idx = idx[:k]
    head = _view(store.head, np.int64)[idx]
    flags_view = _view(store.flags, np.int32)
    refcount = _view(store.refcount, np.int32)
    flags = flags_view[head]
    ref = refcount[head]
    k = _leading((_view(store.order, np.int8)[head] == 0) & ((flags & F_SWAPCACHE) == 0)
                 & (ref >= 1))
    if k < MIN_PAGES:
        return 0
    head, flags, ref = head[:k], flags[:k], ref[:k]
    # An order-0 folio is its own head: distinct pages, distinct folios.
    if not _ascending(head):
        return 0
    refcount[head] = ref - 1
    last = ref == 1
    if last.any():
        gone = head[last]
        flags_view[gone] = flags[last] | F_FREED
        if ctx.emit is not None:
            # Reported in one folio_free event (swap.flush_folio_frees()).
            swap.folios_freed.extend((gone + PFN_BASE).tolist())
    return k
