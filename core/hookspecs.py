"""Hook specifications: every point where an architecture's mmu_gather differs.

The engine (:mod:`mmugather.core.gather`) is asm-generic/tlb.h and
mm/mmu_gather.c with every ``#ifdef`` and every arch override turned into a
hook.  The generic behaviour is itself a plugin,
:mod:`mmugather.plugins.generic`, registered ``trylast``; feature plugins
(what Kconfig ``select``\\ s) and arch plugins override it the way pytest
plugins override pytest's defaults.

Conventions:

* Hooks marked *firstresult* stop at the first implementation that returns
  something other than ``None``.  Implementations that act return ``True``;
  one that wants to fall through to the next returns ``None``.
* Hooks fire per gather, per flush, per VMA, per page table or per PTE
  table; never per page or per PTE.  Where the kernel's per-page path
  differs between arches (queue the page or free it at once), the hook is
  asked once, when the gather is set up, for the function to use.
* ``tlb`` is the :class:`~mmugather.core.gather.MmuGather`; plugins read and
  write its kernel-named fields (``tlb.fullmm``, ``tlb.start``,
  ``tlb.cleared_ptes`` ...) and call its kernel-named methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from mmugather.core.arch import ArchSpec
    from mmugather.core.batch import MmuGatherBatch
    from mmugather.core.gather import MmuGather, PageRemover
    from mmugather.core.hw.invalidate import HwSemantics
    from mmugather.core.table import MmuTableBatch
    from mmugather.core.vma import Vma

PROJECT = "mmugather"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------


@hookspec
def mmugather_add_arches() -> list[ArchSpec]:
    """Return the arch configurations this plugin provides.

    Called once on the registry's plugin manager, which holds the built-in
    :mod:`mmugather.arches` and every module found in the ``mmugather.arches``
    entry-point group.  Results from all plugins are concatenated; a name may
    be provided once.

    **Overridden by**: every arch package.
    """


# --------------------------------------------------------------------------
# Gather set-up: asked once per tlb_gather_mmu()
# --------------------------------------------------------------------------


@hookspec
def tlb_gather_init(tlb: MmuGather) -> None:
    """Initialise plugin-owned gather state (kernel: ``tlb_table_init()``, the
    ``page_size = 0`` of MMU_GATHER_PAGE_SIZE).

    Called from ``__tlb_gather_mmu()`` after the generic fields are set and
    before the range is reset.  Every implementation runs; no result.

    **Overridden by**: MMU_GATHER_TABLE_FREE (``tlb->batch = NULL``),
    MMU_GATHER_PAGE_SIZE.
    """


@hookspec(firstresult=True)
def tlb_batch_rmap(tlb: MmuGather) -> bool:
    """Whether rmap removal is batched in the gather (the seed patch's
    ``tlb_batch_rmap()``).

    In the kernel this is a compile-time constant, so it is asked once per
    gather and cached in ``tlb.batch_rmap``; callers read the field.  When it
    is false the caller removes each rmap itself, at once, and
    ``tlb_flush_rmaps()``/``tlb_discard_rmaps()`` do nothing.

    *firstresult*.  Generic: ``False``.  **Overridden by**: CONFIG_SMP without
    MMU_GATHER_NO_GATHER (``True``).
    """


@hookspec(firstresult=True)
def tlb_page_remover(tlb: MmuGather) -> PageRemover:
    """Return the function that does ``__tlb_remove_page_size()`` for one page.

    Asked once per gather.  The function takes ``(page, page_size, flags)``
    and returns the kernel's bool: true when the queue is full and the caller
    must ``tlb_flush_mmu()`` before queueing more.

    *firstresult*.  Generic: ``tlb.queue_page`` (queue into the batches).
    **Overridden by**: MMU_GATHER_NO_GATHER (s390: free the page at once).
    The ``ranges`` strategy wraps the gathering remover to store runs of
    contiguous pages of one folio (``plugins/rmap_ranges.py``); ``legacy``
    wraps it to note delayed rmaps (``plugins/rmap_legacy.py``);
    ``folio-batch`` to queue runs as page + nr_pages entries
    (``plugins/rmap_folio_batch.py``).
    """


# --------------------------------------------------------------------------
# The queue: per batch page
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def tlb_next_batch_allowed(tlb: MmuGather) -> bool:
    """Whether ``tlb_next_batch()`` may move on to another batch page at all.

    Asked at the top of ``tlb_next_batch()``, i.e. once per batch page that
    fills up, before a kept batch page is reused or a new one allocated.
    ``False`` makes ``tlb_next_batch()`` fail, so ``__tlb_remove_page_size()``
    reports a full queue and the caller must flush.

    *firstresult*.  Generic: ``True``.  **Overridden by**: the ``legacy``
    strategy (v6.5 before the seed patch): ``False`` while
    ``tlb.delayed_rmap`` is set and the active batch is not the bundle
    ("limit batching if we have delayed rmaps pending"), which is what lets
    its ``tlb_flush_rmaps()`` walk only ``tlb->local`` and ``tlb->active``;
    ``folio-batch`` (upstream kept it) likewise.
    """


@hookspec(firstresult=True)
def tlb_free_batch(tlb: MmuGather, batch: MmuGatherBatch) -> bool:
    """Free everything queued in one batch and leave it empty
    (``batch.nr == 0``): the loop body of ``tlb_batch_pages_flush()``.

    Called by ``tlb_batch_pages_flush()`` once per non-empty batch, in chain
    order, after the TLB invalidate.

    *firstresult*; return ``True``.  Generic: ``free_pages_and_swap_cache()``
    on chunks of at most 512 entries (``FREE_CHUNK``).  **Overridden by**:
    the ``ranges`` strategy, whose entries are page ranges of one folio
    (``free_folios_and_swap_cache()`` per chunk of ranges); ``folio-batch``
    (chunks never separate a page from its nr_pages entry).
    """


# --------------------------------------------------------------------------
# Per flush
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def tlb_flush(tlb: MmuGather) -> bool:
    """Issue the architecture's TLB invalidate for what the gather recorded.

    Called from ``tlb_flush_mmu_tlbonly()`` when at least one ``cleared_*``
    bit or ``freed_tables`` is set, before the MMU notifiers are told and the
    range is reset.  Emit a ``tlb_flush`` event (``tlb.emit_tlb_flush()``)
    for each invalidate actually issued.

    *firstresult*; return ``True``.  Generic: ``flush_tlb_mm()`` for fullmm or
    ``need_flush_all``, else ``flush_tlb_range()`` when ``tlb.end`` is not 0.
    **Overridden by**: s390 (lazy: flush the whole mm only when a page-table
    free marked it); third-party arches with their own invalidate (x86's
    ``flush_tlb_mm_range()``, arm64's range TLBI).
    """


@hookspec(firstresult=True)
def tlb_change_page_size(tlb: MmuGather, page_size: int) -> bool:
    """The caller is about to queue pages of ``page_size`` bytes.

    *firstresult*; return ``True``.  Generic: nothing.
    **Overridden by**: MMU_GATHER_PAGE_SIZE (flush on a change of size,
    unless fullmm or ``need_flush_all``; remember the size).
    """


# --------------------------------------------------------------------------
# Rmap removal (per PTE table)
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> bool:
    """Remove the rmap of every page queued since the last
    ``tlb_discard_rmaps()`` or ``tlb_flush_rmaps()``; all of them were mapped
    by ``vma``.

    Must run after the PTEs are cleared and before the page-table lock that
    guarded them is dropped.  Emit ``rmap_remove`` per page.

    *firstresult*; return ``True``.  Generic: nothing (the caller removed
    each rmap itself).  **Overridden by**: CONFIG_SMP batched rmaps (the
    ``rmap_pend`` pointer walk).
    """


@hookspec(firstresult=True)
def tlb_discard_rmaps(tlb: MmuGather) -> bool:
    """Forget pending rmap removals: move the rmap pointer to the end of the
    queue.  Called by the caller at the start of each PTE table and by the
    engine whenever the queued pages are freed.

    *firstresult*; return ``True``.  Generic: nothing.  **Overridden by**:
    CONFIG_SMP batched rmaps.
    """


# --------------------------------------------------------------------------
# Per PTE table, under its lock
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def flush_tlb_batched_pending(tlb: MmuGather) -> bool:
    """Settle a TLB flush that reclaim still owes ``tlb.mm``
    (``flush_tlb_batched_pending()`` of mm/rmap.c).

    Reclaim's batched unmap (``try_to_unmap()`` with TTU_BATCH_FLUSH)
    clears PTEs under the page-table lock and defers their flush; it counts
    the deferral in ``tlb.mm.tlb_flush_batched``.  A zap that then finds
    those PTEs already clear has nothing of its own to flush, yet must not
    return while a CPU may still use the entries reclaim cleared
    (3ea277194daa).  So ``zap_pte_range()`` calls this right after it takes
    the PTE table's lock (the lock reclaim held): if a flush is owed, flush
    the whole mm and clear the count.  Once per PTE table.

    *firstresult*; return ``True``.  Generic: nothing (no arch batches
    reclaim's flushes).  **Overridden by**: ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH
    (``flush_tlb_mm()`` and clear the count); x86-64, the one arch that
    selects it in v6.5, with its own ``flush_tlb_mm()``.
    """


@hookspec(firstresult=True)
def huge_pmd_unshare_sync(tlb: MmuGather) -> bool:
    """``huge_pmd_unshare()`` cleared this mm's PUD entry to a hugetlb PMD
    table shared with another process and is about to drop its reference
    on the table (``mm/hugetlb.c``): the last moment to make sure no
    lockless walker (gup_fast, interrupts off) that read the old PUD entry
    is still inside the table, which the other process may own, change or
    free as soon as the reference is gone.

    *firstresult*; return ``True``.  Generic (v6.5): nothing.
    **Overridden by**: the fix 1013af4f585f (``core/fixes.py``):
    ``tlb_remove_table_sync_one()``.
    """


# --------------------------------------------------------------------------
# VMA boundaries
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def tlb_start_vma(tlb: MmuGather, vma: Vma) -> bool:
    """The gather moves on to ``vma``.

    *firstresult*; return ``True``.  Generic: nothing for fullmm; else record
    ``vma_exec``/``vma_huge``/``vma_pfn`` and ``flush_cache_range()`` over the
    VMA.  No built-in arch overrides it; an MMU_GATHER_NO_FLUSH_CACHE arch
    (sparc64) would, to skip the cache flush.
    """


@hookspec(firstresult=True)
def tlb_end_vma(tlb: MmuGather, vma: Vma) -> bool:
    """The gather leaves ``vma``.

    *firstresult*; return ``True``.  Generic: nothing for fullmm; else
    ``tlb_flush_mmu_tlbonly()`` so ranges do not grow over the gaps between
    VMAs.  **Overridden by**: MMU_GATHER_MERGE_VMAS (flush only for a
    VM_PFNMAP/VM_MIXEDMAP VMA, whose PFNs may have no struct page).
    """


# --------------------------------------------------------------------------
# Page tables (per table)
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def tlb_free_pgtable(tlb: MmuGather, level: str, table: int, addr: int) -> bool:
    """``pte_free_tlb()``/``pmd_free_tlb()``/``pud_free_tlb()``/``p4d_free_tlb()``:
    the table of ``level`` ("pte", "pmd", "pud", "p4d") that mapped ``addr``
    is unhooked and must be freed once no walker can reach it.

    *firstresult*; return ``True``.  Generic: record the range one level up
    (``PAGE_SIZE`` wide; for a p4d table no level bit), set ``freed_tables``
    and hand the table to ``tlb_remove_table()``.
    **Overridden by**: s390 (its own macros: mark the mm for a flush, a
    different range bookkeeping).
    """


@hookspec(firstresult=True)
def tlb_remove_table(tlb: MmuGather, table: int) -> bool:
    """Queue a page-table page for freeing.

    *firstresult*; return ``True``.  Generic: ``tlb_remove_page()``, the
    table goes into the page queue.  **Overridden by**: MMU_GATHER_TABLE_FREE
    (the table batch, with the single-table fallback).
    """


@hookspec(firstresult=True)
def tlb_table_flush(tlb: MmuGather) -> bool:
    """Free (or hand to RCU) the table batch; first step of
    ``tlb_flush_mmu_free()``.

    *firstresult*; return ``True``.  Generic: nothing.
    **Overridden by**: MMU_GATHER_TABLE_FREE.
    """


@hookspec(firstresult=True)
def tlb_remove_table_free(tlb: MmuGather, batch: MmuTableBatch) -> bool:
    """Dispose of a full or flushed table batch.

    *firstresult*; return ``True``.  MMU_GATHER_TABLE_FREE: free the tables
    now.  **Overridden by**: MMU_GATHER_RCU_TABLE_FREE (``call_rcu()``;
    the tables are freed after the next grace period).
    """


@hookspec(firstresult=True)
def tlb_needs_table_invalidate(tlb: MmuGather) -> bool:
    """Whether freeing page tables implies a TLB invalidate first
    (``tlb_needs_table_invalidate()``).

    *firstresult*.  MMU_GATHER_RCU_TABLE_FREE: ``True``.  Arches whose
    hardware does not walk the Linux page tables may say ``False``.
    """


@hookspec(firstresult=True)
def tlb_remove_table_sync_one(tlb: MmuGather) -> bool:
    """Make sure no lockless walker still sees a table freed without a
    batch (the single-table fallback).

    *firstresult*; return ``True``.  MMU_GATHER_RCU_TABLE_FREE: a
    synchronising IPI to every CPU (``ipi_sync``).  Without RCU table free
    the TLB flush IPI already did it: nothing.
    """


# --------------------------------------------------------------------------
# The hardware (asked once per machine)
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def mmu_hw_semantics(arch: ArchSpec) -> HwSemantics:
    """What the arch's hardware and ASID management promise beyond each
    invalidation its flushes report (``core/hw/invalidate.py``): whether
    CPUs holding the mm lazily may use stale entries, whether a dead mm's
    ASID is reused only after an invalidation, whether the arch's TLB flush
    waits for the CPUs it reaches (an IPI).

    Asked once by ``make_machine()``; the machine keeps it as
    ``machine.hw``.  *firstresult*.  Generic: the conservative answers
    (lazy CPUs count as users, ASIDs may be reused without an
    invalidation, the flush is an IPI that waits).
    **Overridden by**: MMU_GATHER_RCU_TABLE_FREE (the flush does not wait:
    the reason to free tables through RCU); every real arch (``arches/``).
    """


def hook_names() -> list[str]:
    """Every hookspec defined here, in file order."""
    return [name for name, value in globals().items() if hasattr(value, PROJECT + "_spec")]
