"""The mm_struct state the gather reads and writes, and the machine around it.

``MmStruct`` keeps what outlives one gather: the count of gathers in flight
(``tlb_flush_pending``) and the arch's private ``context`` (s390's
"flush the mm" mark).  ``Machine`` holds what is global to the kernel being
modelled: the arch and its hooks, the page allocator's injected failures, the
RCU callback queue and the event stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from mmugather.core.constants import Geometry
from mmugather.core.events import Emit, PageRows
from mmugather.core.hw.cpus import DEFAULT_CPUS, CpuConfig, cpus_of
from mmugather.core.hw.invalidate import HwSemantics, Invalidate
from mmugather.core.vma import Vma

if TYPE_CHECKING:
    from mmugather.core.arch import ArchSpec
    from mmugather.core.gather import MmuGather

ALLOC_KINDS = ("page_batch", "table_batch")


class MmModel(Protocol):
    """What the gather tells an address-space model (``mmugather run``).

    The replay has no model; the callers of :mod:`mmugather.core.callers`
    do, and keep page, folio and table state in step with the gather here.
    """

    def gather_remove_rmaps(self, pages: Sequence[int], vma: Vma) -> None:
        """tlb_flush_rmaps() removed the rmap of ``pages`` (in order) for ``vma``."""

    def release_pages(self, pages: Sequence[int]) -> None:
        """Queued pages (or one page at once) were freed."""

    def free_tables(self, tables: Sequence[int]) -> None:
        """Page-table pages were freed (table batch, RCU or single)."""


@attrs.define(slots=True, eq=False)
class MmStruct:
    #: inc_tlb_flush_pending()/dec_tlb_flush_pending()
    tlb_flush_pending: int = 0
    #: mm->context: arch-private state, keyed by the arch plugin
    context: dict[str, Any] = attrs.Factory(dict)
    #: mm_cpumask(): the CPUs that run the mm or hold it lazily (bit N: CPU N)
    cpumask: int = DEFAULT_CPUS.running | DEFAULT_CPUS.lazy_mask
    #: of those, the ones holding it lazily (x86's cpu_tlbstate_shared.is_lazy)
    lazy_cpus: int = DEFAULT_CPUS.lazy_mask
    #: mm_users > 0: threads of the process may still run user code in it
    live: bool = True
    #: the ASID (PCID, PID) its TLB entries are tagged with
    asid: int = DEFAULT_CPUS.asid
    #: mm->tlb_flush_batched: reclaim cleared PTEs of this mm with their
    #: flush deferred (try_to_unmap() with TTU_BATCH_FLUSH) this many times
    #: since flush_tlb_batched_pending() last settled them
    tlb_flush_batched: int = 0

    @classmethod
    def on(cls, cpus: CpuConfig) -> MmStruct:
        """The mm of a process whose threads and lazy users ``cpus`` says."""
        return cls(cpumask=cpus.running | cpus.lazy_mask, lazy_cpus=cpus.lazy_mask,
                   asid=cpus.asid)

    @property
    def running_cpus(self) -> int:
        return self.cpumask & ~self.lazy_cpus if self.live else 0

    def exit(self) -> None:
        """mm_users dropped to 0 (exit_mmap()): the CPUs that ran the mm keep
        it loaded lazily until they switch."""
        self.live = False
        self.lazy_cpus = self.cpumask


@attrs.define(slots=True, eq=False)
class Machine:
    """One modelled kernel: an arch configuration plus global state."""

    arch: ArchSpec
    geometry: Geometry
    hook: Any
    #: contract and caller events, or None when nobody listens
    emit: Emit | None = None
    #: the reader's extra events (page queued, pointer moved...), or None
    detail: Emit | None = None
    #: the per-page events in bulk form, built with ``emit``
    #: (``events.make_stream``); None: each is emitted through ``emit``
    rows: PageRows | None = None
    #: the address-space model the gather keeps in step, if any
    model: MmModel | None = None
    #: the class tlb_gather_mmu() makes (None: MmuGather); a mutant may put
    #: a subclass that overrides one step here
    gather_class: type[MmuGather] | None = None
    #: GFP_NOWAIT allocations still to fail, per kind
    alloc_failures: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(ALLOC_KINDS, 0))
    #: optional deterministic failure source, asked after alloc_failures
    fail_policy: Callable[[str], bool] | None = None
    #: call_rcu() callbacks not yet run, in queue order
    rcu_callbacks: list[Callable[[], None]] = attrs.Factory(list)
    #: vma_exec/vma_huge/vma_pfn as the last finished gather left them (the
    #: kernel does not initialise them; see MmuGather._gather_mmu)
    stale_vma_flags: tuple[bool, bool, bool] = (False, False, False)
    #: allocations attempted/failed, by kind (for reports)
    alloc_stats: dict[str, list[int]] = attrs.Factory(
        lambda: {k: [0, 0] for k in ALLOC_KINDS}
    )
    #: the CPUs and who runs the mm when a teardown starts
    cpus: CpuConfig = DEFAULT_CPUS
    #: what the arch's hardware promises (the ``mmu_hw_semantics`` hook)
    hw: HwSemantics = attrs.Factory(HwSemantics)
    #: the hardware events (``tlb_invalidate``, ``hw_config``...), or None
    #: when no hardware model listens (a replay keeps the contract's events)
    hw_emit: Emit | None = None

    def invalidate(self, inv: Invalidate, mm: MmStruct) -> None:
        """Report an invalidation the arch issued for ``mm`` (``tlb_invalidate``)."""
        if self.hw_emit is not None:
            self.hw_emit("tlb_invalidate", **inv.fields(mm.asid))

    def hw_config(self, mm: MmStruct) -> None:
        """Announce the machine to the hardware model: the CPUs, who runs
        ``mm``, the page-table sizes and the arch's promises."""
        if self.hw_emit is None:
            return
        geo = self.geometry
        self.hw_emit(
            "hw_config", nr_cpus=self.cpus.nr_cpus,
            running=cpus_of(mm.running_cpus), lazy=cpus_of(mm.lazy_cpus), asid=mm.asid,
            page_size=geo.page_size, pmd_size=geo.pmd_size, pud_size=geo.pud_size,
            p4d_size=geo.p4d_size, pgdir_size=geo.pgdir_size,
            lazy_cpus_use_leaf=self.hw.lazy_cpus_use_leaf,
            asid_reuse_invalidates=self.hw.asid_reuse_invalidates,
        )

    def fail_alloc(self, what: str, count: int = 1) -> None:
        """Make the next ``count`` allocations of ``what`` fail.

        A pending count is not added to: the larger one stays.
        """
        if what not in self.alloc_failures:
            raise ValueError(f"unknown allocation kind {what!r}")
        if count > self.alloc_failures[what]:
            self.alloc_failures[what] = count

    def get_free_page(self, what: str) -> bool:
        """__get_free_page(GFP_NOWAIT | __GFP_NOWARN): may fail, never sleeps."""
        pending = self.alloc_failures[what]
        if pending:
            self.alloc_failures[what] = pending - 1
            ok = False
        elif self.fail_policy is not None:
            ok = not self.fail_policy(what)
        else:
            ok = True
        stats = self.alloc_stats[what]
        stats[0] += 1
        if not ok:
            stats[1] += 1
        if self.emit is not None:
            self.emit("batch_alloc", what=what, ok=ok)
        return ok

    def call_rcu(self, callback: Callable[[], None]) -> None:
        self.rcu_callbacks.append(callback)

    def rcu_grace_period(self) -> None:
        """A grace period ends: every callback queued before it runs, in order."""
        callbacks, self.rcu_callbacks = self.rcu_callbacks, []
        if self.emit is not None:
            self.emit("rcu_grace_period", callbacks=len(callbacks))
        for callback in callbacks:
            callback()
