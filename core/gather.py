"""struct mmu_gather and its API: asm-generic/tlb.h plus mm/mmu_gather.c.

The order the whole machinery exists to keep:

  1) unhook the page (clear the PTE),
  2) invalidate the TLB entries that could still reach it,
  3) free the page.

Callers clear PTEs and hand pages to the gather; the gather records the
range that needs invalidating and queues the pages, and frees them only after
``tlb_flush_mmu_tlbonly()``.  Where an arch does something else the engine
asks a hook (:mod:`mmugather.core.hookspecs`); this module knows no arch.

Methods are named as the kernel names its functions.  The kernel's
double-underscore primitives are ``queue_page()`` (``__tlb_remove_page_size``)
and ``adjust_range()`` (``__tlb_adjust_range``); :mod:`mmugather.core.api`
also offers every function under its exact kernel name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from mmugather.core.batch import MmuGatherBatch
from mmugather.core.constants import MASK32, MASK64, MMU_GATHER_BUNDLE, Geometry
from mmugather.core.events import Emit, PageRows, page_rows
from mmugather.core.hw.flush import flush_tlb_mm, flush_tlb_range
from mmugather.core.hw.invalidate import Invalidate
from mmugather.core.mm import Machine, MmModel, MmStruct
from mmugather.core.table import MmuTableBatch
from mmugather.core.vma import Vma

#: __tlb_remove_page_size() for one page: (page, page_size, flags) -> queue full?
PageRemover = Callable[[int, int, int], bool]

LEVELS = ("pte", "pmd", "pud", "p4d")


class KernelBug(Exception):
    """A VM_BUG_ON() fired: the model stops, as the kernel would."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class GatherError(Exception):
    """The API was used in a way the kernel's types rule out (a gather
    finished twice)."""


@attrs.define(slots=True, eq=False, repr=False)
class MmuGather:
    """One on-stack ``struct mmu_gather``, from tlb_gather_mmu() to tlb_finish_mmu()."""

    machine: Machine
    mm: MmStruct
    fullmm: bool = False
    #: an arch asked for a flush of everything (x86 PAE top-level changes)
    need_flush_all: bool = False
    #: page-table pages were freed since the last flush
    freed_tables: bool = False
    #: levels at which entries were cleared since the last flush
    cleared_ptes: bool = False
    cleared_pmds: bool = False
    cleared_puds: bool = False
    cleared_p4ds: bool = False
    #: VM_EXEC / VM_HUGETLB / VM_PFNMAP of the VMA in tlb_start_vma()
    vma_exec: bool = False
    vma_huge: bool = False
    vma_pfn: bool = False
    #: the range to invalidate: [start, end), unsigned 64-bit
    start: int = 0
    end: int = 0
    #: batch pages allocated behind the bundle (MAX_GATHER_BATCH_COUNT bounds it)
    batch_count: int = 0
    #: the on-stack bundle and the batch being filled
    local: MmuGatherBatch = attrs.field(init=False)
    active: MmuGatherBatch = attrs.field(init=False)
    #: the rmap pointer: first queued page whose rmap is still to be removed
    rmap_pend: MmuGatherBatch = attrs.field(init=False)
    rmap_pend_first: int = 0
    #: MMU_GATHER_PAGE_SIZE: size of the pages being queued (0: none yet)
    page_size: int = 0
    #: MMU_GATHER_PAGE_SIZE is configured: tlb_flush() sees page_size and a
    #: page of another size is warned about
    track_page_size: bool = False
    #: MMU_GATHER_TABLE_FREE: the table batch (tlb->batch), or None
    batch: MmuTableBatch | None = None
    #: tlb_batch_rmap(), a compile-time constant in the kernel: cached per gather
    batch_rmap: bool = False
    #: v6.5 before the seed patch: delayed rmap removals are pending (set by
    #: tlb_delay_rmap(), cleared by tlb_flush_rmaps()); only the ``legacy``
    #: strategy reads it
    delayed_rmap: bool = False
    #: gather finished (tlb_finish_mmu() ran)
    finished: bool = False
    #: plugin-owned per-gather state
    plugin_state: dict[str, Any] = attrs.Factory(dict)
    geometry: Geometry = attrs.field(init=False)
    hook: Any = attrs.field(init=False)
    emit: Emit | None = attrs.field(init=False)
    detail: Emit | None = attrs.field(init=False)
    #: the per-page events of the stream (``rmap_remove``)
    rows: PageRows | None = attrs.field(init=False)
    #: the address-space model behind the pages, when callers model one
    model: MmModel | None = attrs.field(init=False)
    _remove: PageRemover = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        machine = self.machine
        self.geometry = machine.geometry
        self.hook = machine.hook
        self.emit = machine.emit
        self.detail = machine.detail
        self.rows = page_rows(machine.emit, machine.rows)
        self.model = machine.model
        self.local = MmuGatherBatch(max=MMU_GATHER_BUNDLE)
        self.active = self.rmap_pend = self.local

    def __repr__(self) -> str:
        return (
            f"<MmuGather fullmm={int(self.fullmm)} range=[{self.start:#x},{self.end:#x}) "
            f"levels={self.levels()} freed_tables={int(self.freed_tables)} "
            f"active={self.active!r} batch_count={self.batch_count}>"
        )

    # ------------------------------------------------------------------
    # Start and finish
    # ------------------------------------------------------------------

    def _gather_mmu(self) -> None:
        """__tlb_gather_mmu(): the fields as a fresh on-stack gather has them."""
        # __tlb_gather_mmu() leaves vma_* alone: an on-stack struct keeps
        # what the last user of that stack slot left.  Model a reused struct:
        # carry over the machine's previous gather's values.
        self.vma_exec, self.vma_huge, self.vma_pfn = self.machine.stale_vma_flags
        self.batch_rmap = bool(self.hook.tlb_batch_rmap(tlb=self))
        self._remove = self.hook.tlb_page_remover(tlb=self)
        self.hook.tlb_gather_init(tlb=self)
        self.__tlb_reset_range()
        self.mm.tlb_flush_pending += 1
        if self.emit is not None:
            self.emit("gather_begin", fullmm=self.fullmm)

    def tlb_finish_mmu(self, nested: bool | None = None) -> None:
        """Final flush, free what is queued, drop the batch pages.

        ``nested`` is mm_tlb_flush_nested(): another thread batches PTE
        changes on this mm under a shared lock, so its deferred flush may
        leave stale entries this gather cannot see; flush everything.
        None (the callers): ask the mm, as the kernel does (another gather
        in flight on it); a replay says which.
        """
        if self.finished:
            raise GatherError("tlb_finish_mmu() on a finished gather")
        if nested is None:
            nested = self.mm_tlb_flush_nested()
        if nested:
            self.tlb_finish_nested()
        self.tlb_flush_mmu()
        self.tlb_batch_list_free()
        self.mm.tlb_flush_pending -= 1
        self.finished = True
        self.machine.stale_vma_flags = (self.vma_exec, self.vma_huge, self.vma_pfn)
        if self.emit is not None:
            self.emit("gather_end", nested=nested)

    def mm_tlb_flush_nested(self) -> bool:
        """mm_tlb_flush_nested(): another gather is in flight on this mm
        (its tlb_flush_pending count is above this gather's own 1)."""
        return self.mm.tlb_flush_pending > 1

    def tlb_finish_nested(self) -> None:
        """tlb_finish_mmu() when mm_tlb_flush_nested(): the final flush
        covers the whole mm and its paging-structure caches, whatever this
        gather recorded."""
        self.fullmm = True
        self.__tlb_reset_range()
        self.freed_tables = True

    # ------------------------------------------------------------------
    # The range to invalidate
    # ------------------------------------------------------------------

    def __tlb_reset_range(self) -> None:
        if self.fullmm:
            self.start = self.end = MASK64
        else:
            self.start = self.geometry.task_size
            self.end = 0
        self.freed_tables = False
        self.cleared_ptes = self.cleared_pmds = self.cleared_puds = self.cleared_p4ds = False
        # The vma_* fields stay: tlb_start_vma() is not called again after
        # an intermediate flush.

    reset_range = __tlb_reset_range

    def adjust_range(self, address: int, range_size: int) -> None:
        """__tlb_adjust_range(): the size is an unsigned int, the end wraps."""
        if address < self.start:
            self.start = address
        end = (address + (range_size & MASK32)) & MASK64
        if end > self.end:
            self.end = end

    def tlb_flush_pte_range(self, address: int, size: int) -> None:
        self.adjust_range(address, size)
        self.cleared_ptes = True

    def tlb_flush_pmd_range(self, address: int, size: int) -> None:
        self.adjust_range(address, size)
        self.cleared_pmds = True

    def tlb_flush_pud_range(self, address: int, size: int) -> None:
        self.adjust_range(address, size)
        self.cleared_puds = True

    def tlb_flush_p4d_range(self, address: int, size: int) -> None:
        self.adjust_range(address, size)
        self.cleared_p4ds = True

    def tlb_remove_tlb_entry(self, address: int) -> None:
        """A PTE was cleared: remember its page for the invalidate."""
        if address < self.start:
            self.start = address
        end = (address + self.geometry.page_size) & MASK64
        if end > self.end:
            self.end = end
        self.cleared_ptes = True

    def tlb_remove_pmd_tlb_entry(self, address: int) -> None:
        self.tlb_flush_pmd_range(address, self.geometry.pmd_size)

    def tlb_remove_pud_tlb_entry(self, address: int) -> None:
        self.tlb_flush_pud_range(address, self.geometry.pud_size)

    def tlb_remove_huge_tlb_entry(self, address: int, size: int) -> None:
        """A hugetlb entry of ``size`` bytes was cleared; its level follows its size."""
        geo = self.geometry
        if size >= geo.p4d_size:
            self.tlb_flush_p4d_range(address, size)
        elif size >= geo.pud_size:
            self.tlb_flush_pud_range(address, size)
        elif size >= geo.pmd_size:
            self.tlb_flush_pmd_range(address, size)
        else:
            self.tlb_flush_pte_range(address, size)

    def levels(self) -> list[str]:
        """The cleared levels, as the ``levels`` event field lists them."""
        bits = (self.cleared_ptes, self.cleared_pmds, self.cleared_puds, self.cleared_p4ds)
        return [name for name, bit in zip(LEVELS, bits, strict=False) if bit]

    def tlb_get_unmap_shift(self) -> int:
        """The smallest entry size cleared, as a shift (x86's flush stride)."""
        geo = self.geometry
        if self.cleared_ptes:
            return geo.page_shift
        if self.cleared_pmds:
            return geo.pmd_shift
        if self.cleared_puds:
            return geo.pud_shift
        if self.cleared_p4ds:
            return geo.p4d_shift
        return geo.page_shift

    def tlb_get_unmap_size(self) -> int:
        return 1 << self.tlb_get_unmap_shift()

    # ------------------------------------------------------------------
    # VMAs
    # ------------------------------------------------------------------

    def tlb_update_vma_flags(self, vma: Vma) -> None:
        self.vma_huge = vma.is_hugetlb
        self.vma_exec = vma.is_exec
        self.vma_pfn = vma.is_pfnmap

    def tlb_start_vma(self, vma: Vma) -> None:
        self.hook.tlb_start_vma(tlb=self, vma=vma)

    def tlb_end_vma(self, vma: Vma) -> None:
        self.hook.tlb_end_vma(tlb=self, vma=vma)
        hw_emit = self.machine.hw_emit
        if hw_emit is not None:
            hw_emit("vma_end", start=vma.start, end=vma.end, pfnmap=vma.is_pfnmap)

    def flush_cache_range(self, vma: Vma, start: int, end: int) -> None:
        """Virtually indexed caches are written back before the unmap."""
        if self.emit is not None:
            self.emit("flush_cache_range", start=start, end=end)

    # ------------------------------------------------------------------
    # TLB invalidation
    # ------------------------------------------------------------------

    def tlb_flush_mmu_tlbonly(self) -> None:
        """Invalidate what was recorded, tell secondary TLBs, reset the range."""
        # Everything that adjusts the range also sets one of these bits, so
        # with none set there is nothing to invalidate.
        if not (
            self.freed_tables
            or self.cleared_ptes
            or self.cleared_pmds
            or self.cleared_puds
            or self.cleared_p4ds
        ):
            return
        self.hook.tlb_flush(tlb=self)
        self.mmu_notifier_invalidate_range(self.start, self.end)
        self.__tlb_reset_range()

    def mmu_notifier_invalidate_range(self, start: int, end: int) -> None:
        if self.emit is not None:
            self.emit("mmu_notifier_invalidate", start=start, end=end)

    def emit_tlb_flush(
        self,
        scope: str,
        start: int | None = None,
        end: int | None = None,
        *,
        hw: Sequence[Invalidate] | None = None,
        **extra: Any,
    ) -> None:
        """Report one arch TLB flush: ``flush_tlb_mm()`` ("mm") or
        ``flush_tlb_range()`` ("range"), the contract's ``tlb_flush`` event.

        ``hw`` is what the flush does to the hardware, one
        :class:`~mmugather.core.hw.invalidate.Invalidate` per primitive it
        issues (``tlb_invalidate`` events).  None: the generic
        ``flush_tlb_mm()``/``flush_tlb_range()``, every level on every CPU of
        the mm.  ``extra`` fields are the arch's own, after the standard ones;
        prefer ``hw``, whose fields every reader knows.
        """
        if self.emit is not None:
            self._emit_tlb_flush(scope, start, end, extra)
        machine = self.machine
        if machine.hw_emit is not None:
            if hw is None:
                hw = [flush_tlb_mm(machine, self.mm) if scope == "mm"
                      else flush_tlb_range(machine, self.mm, start or 0, end or 0)]
            for inv in hw:
                machine.invalidate(inv, self.mm)

    def _emit_tlb_flush(self, scope: str, start: int | None, end: int | None,
                        extra: dict[str, Any]) -> None:
        assert self.emit is not None
        fields: dict[str, Any] = {"scope": scope}
        if scope == "range":
            fields["start"] = start
            fields["end"] = end
        fields["exec"] = self.vma_exec
        fields["huge"] = self.vma_huge
        fields["freed_tables"] = self.freed_tables
        fields["levels"] = self.levels()
        if self.track_page_size:
            fields["page_size"] = self.page_size
        if extra:
            fields.update(extra)
        self.emit("tlb_flush", **fields)

    def tlb_flush_mmu(self) -> None:
        """Invalidate, then free everything queued."""
        self.tlb_flush_mmu_tlbonly()
        self.tlb_flush_mmu_free()

    def tlb_flush_mmu_free(self) -> None:
        self.hook.tlb_table_flush(tlb=self)
        self.tlb_batch_pages_flush()

    # ------------------------------------------------------------------
    # Queueing pages
    # ------------------------------------------------------------------

    def queue_page(self, page: int, page_size: int, flags: int = 0) -> bool:
        """__tlb_remove_page_size() for a gathering arch: queue ``page``.

        Returns True when the queue is full: the caller must tlb_flush_mmu()
        before it queues another page.
        """
        if not self.end:
            self.vm_bug("!tlb->end")
        if self.track_page_size and self.page_size != page_size & MASK32:
            self.vm_warn("tlb->page_size != page_size")
        batch = self.active
        nr = batch.nr
        size = batch.max
        if nr >= size:
            # The kernel writes past the array first; the VM_BUG_ON that
            # follows is what a developer sees.
            self.vm_bug("batch->nr > batch->max")
        batch.pages[nr] = page
        batch.flags[nr] = flags
        batch.nr = nr = nr + 1
        if self.detail is not None:
            self.detail("page_queued", page=page, batch=batch.index, nr=nr)
        if nr < size:
            return False
        return not self.tlb_next_batch()

    def tlb_next_batch(self) -> bool:
        """Move on to the next batch page, allocating one if allowed and possible."""
        if not self.hook.tlb_next_batch_allowed(tlb=self):
            return False
        batch = self.active
        if batch.next is not None:
            self.active = batch.next
            if self.detail is not None:
                self.detail("batch_next", batch=self.active.index, allocated=False)
            return True
        geo = self.geometry
        if self.batch_count == geo.max_gather_batch_count:
            return False
        if not self.machine.get_free_page("page_batch"):
            return False
        self.batch_count += 1
        new = MmuGatherBatch(max=geo.max_gather_batch, index=self.batch_count)
        batch.next = new
        self.active = new
        if self.detail is not None:
            self.detail("batch_next", batch=new.index, allocated=True)
        return True

    @property
    def remove_page(self) -> PageRemover:
        """__tlb_remove_page_size() as the arch implements it (queue or free):
        ``remove_page(page, page_size, flags) -> queue full?``.  The function
        itself, so that per-page loops call it with no extra layer."""
        return self._remove

    def tlb_remove_page_size(self, page: int, page_size: int) -> None:
        """Queue a page, flushing at once if that filled the queue."""
        if self._remove(page, page_size, 0):
            self.tlb_flush_mmu()

    def tlb_remove_page(self, page: int) -> None:
        self.tlb_remove_page_size(page, self.geometry.page_size)

    def tlb_change_page_size(self, page_size: int) -> None:
        self.hook.tlb_change_page_size(tlb=self, page_size=page_size & MASK32)

    # ------------------------------------------------------------------
    # Freeing what was queued
    # ------------------------------------------------------------------

    def tlb_batch_pages_flush(self) -> None:
        """Free every queued page (each batch through the ``tlb_free_batch``
        hook: at most FREE_CHUNK per call), then reuse the batches from the
        bundle on."""
        batch: MmuGatherBatch | None = self.local
        free_batch = self.hook.tlb_free_batch
        while batch is not None and batch.nr:
            free_batch(tlb=self, batch=batch)
            batch = batch.next
        self.active = self.local
        # Freed pages can have no rmap removal pending.
        self.hook.tlb_discard_rmaps(tlb=self)

    def free_pages_and_swap_cache(self, pages: list[int]) -> None:
        if self.emit is not None:
            self.emit("free_pages", pages=pages)
        if self.model is not None:
            self.model.release_pages(pages)

    def free_page_and_swap_cache(self, page: int) -> None:
        """One page freed at once, no gathering (MMU_GATHER_NO_GATHER)."""
        if self.emit is not None:
            self.emit("free_page", page=page)
        if self.model is not None:
            self.model.release_pages((page,))

    def tlb_batch_list_free(self) -> None:
        """Give the batch pages back to the page allocator."""
        freed = self.batch_count
        self.local.next = None
        if freed and self.detail is not None:
            self.detail("batch_list_free", batches=freed)

    # ------------------------------------------------------------------
    # Rmap removal
    # ------------------------------------------------------------------

    def tlb_flush_rmaps(self, vma: Vma) -> None:
        self.hook.tlb_flush_rmaps(tlb=self, vma=vma)

    def tlb_discard_rmaps(self) -> None:
        self.hook.tlb_discard_rmaps(tlb=self)

    def page_remove_rmap(self, page: int, vma: Vma) -> None:
        """The gather removes ``page``'s rmap (called from tlb_flush_rmaps())."""
        if self.rows is not None:
            self.rows.rmap_remove((page,), vma.start)
        if self.model is not None:
            self.model.gather_remove_rmaps((page,), vma)

    def page_remove_rmaps(self, pages: list[int], vma: Vma) -> None:
        """page_remove_rmap() on a run of queued pages, in order (one batch's
        share of a tlb_flush_rmaps() walk)."""
        if self.rows is not None:
            self.rows.rmap_remove(pages, vma.start)
        if self.model is not None:
            self.model.gather_remove_rmaps(pages, vma)

    def flush_tlb_batched_pending(self) -> None:
        """flush_tlb_batched_pending(tlb->mm): called with a PTE table's lock
        held, settle any TLB flush reclaim deferred for this mm (the hook of
        that name; nothing where the arch does not batch them)."""
        self.hook.flush_tlb_batched_pending(tlb=self)

    # ------------------------------------------------------------------
    # Page tables
    # ------------------------------------------------------------------

    def pte_free_tlb(self, table: int, address: int) -> None:
        self.hook.tlb_free_pgtable(tlb=self, level="pte", table=table, addr=address)

    def pmd_free_tlb(self, table: int, address: int) -> None:
        self.hook.tlb_free_pgtable(tlb=self, level="pmd", table=table, addr=address)

    def pud_free_tlb(self, table: int, address: int) -> None:
        self.hook.tlb_free_pgtable(tlb=self, level="pud", table=table, addr=address)

    def p4d_free_tlb(self, table: int, address: int) -> None:
        self.hook.tlb_free_pgtable(tlb=self, level="p4d", table=table, addr=address)

    def tlb_remove_table(self, table: int) -> None:
        self.hook.tlb_remove_table(tlb=self, table=table)

    def tlb_remove_table_free_now(self, tables: list[int]) -> None:
        """__tlb_remove_table() on each table of a batch (or a single one)."""
        if self.emit is not None:
            self.emit("table_free", tables=tables)
        if self.model is not None:
            self.model.free_tables(tables)

    # ------------------------------------------------------------------
    # Kernel assertions
    # ------------------------------------------------------------------

    def vm_warn(self, what: str) -> None:
        if self.emit is not None:
            self.emit("warning", what=what)

    def vm_bug(self, what: str) -> None:
        if self.emit is not None:
            self.emit("bug", what=what)
        raise KernelBug(what)


def tlb_gather_mmu(machine: Machine, mm: MmStruct) -> MmuGather:
    """Start a gather for tearing down part of ``mm`` (munmap, madvise...)."""
    tlb: MmuGather = (machine.gather_class or MmuGather)(machine, mm, fullmm=False)
    tlb._gather_mmu()
    return tlb


def tlb_gather_mmu_fullmm(machine: Machine, mm: MmStruct) -> MmuGather:
    """Start a gather for tearing down all of ``mm`` (exit, execve): no user
    is left, so ranges and VMA boundaries no longer matter."""
    tlb: MmuGather = (machine.gather_class or MmuGather)(machine, mm, fullmm=True)
    tlb._gather_mmu()
    return tlb
