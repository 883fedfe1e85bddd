"""One focused behaviour test per hookspec (docs/hooks.md).

Each test shows what the hook's built-in implementations do, or that a
plugin implementing the hook changes what the gather does, through the
events the machine emits.
"""

from __future__ import annotations

from typing import Any

import pytest
from mmugather.core import strategies
from mmugather.core.arch import ArchError, ArchRegistry, ArchSpec, make_machine
from mmugather.core.callers import make_callers
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.hookspecs import hookimpl
from mmugather.core.mm import Machine, MmStruct
from mmugather.core.scenario import build
from mmugather.core.table import MmuTableBatch
from mmugather.core.vma import VM_EXEC, VM_PFNMAP, Vma
from teardown_kit import parse

VMA = Vma(0x400000, 0x600000)
PAGE = 4096


def make(arch: str | ArchSpec, *plugins: Any, detail: bool = False) -> tuple[Machine, Collector]:
    collector = Collector()
    emit = make_emit(observers=[collector])
    machine = make_machine(arch, emit=emit, detail=emit if detail else None, extra_plugins=plugins)
    return machine, collector


def names(collector: Collector) -> list[str]:
    return [e["event"] for e in collector.events]


def queue(tlb: MmuGather, *pages: int) -> None:
    """Clear a PTE and hand its page over, for each page (as zap_pte_range())."""
    for page in pages:
        tlb.tlb_remove_tlb_entry(VMA.start + (page % 512) * PAGE)
        assert not tlb.remove_page(page, PAGE, 0)


# ---------------------------------------------------------------------------


def test_mmugather_add_arches_collects_specs_from_plugins() -> None:
    """Hook ``mmugather_add_arches``: specs of all plugins are collected, a name once."""
    toy = ArchSpec(name="toy", description="a test arch", features=("SMP",))

    class ToyArches:
        __name__ = "toy_arches"

        @hookimpl
        def mmugather_add_arches(self) -> list[ArchSpec]:
            return [toy]

    reg = ArchRegistry(entry_points=False, extra=[ToyArches()])
    assert "toy" in reg.names()
    assert {"generic-smp", "up", "s390", "page-size", "rcu-table-free"} <= set(reg.names())
    assert reg.get("toy").origin == "plugin toy_arches"

    class Clash:
        @hookimpl
        def mmugather_add_arches(self) -> list[ArchSpec]:
            return [ArchSpec(name="up", description="again")]

    with pytest.raises(ArchError, match="already provided"):
        ArchRegistry(entry_points=False, extra=[Clash()])


def test_tlb_gather_init_runs_every_implementation_once_per_gather() -> None:
    """Hook ``tlb_gather_init``: not firstresult: every implementation runs, once per gather."""
    calls: list[bool] = []

    class Init:
        @hookimpl
        def tlb_gather_init(self, tlb: MmuGather) -> None:
            calls.append(tlb.fullmm)
            tlb.plugin_state["mine"] = 1

    machine, _ = make("page-size", Init())
    tlb = tlb_gather_mmu(machine, MmStruct())
    # Not firstresult: the page-size feature's implementation ran as well.
    assert tlb.plugin_state == {"mine": 1}
    assert tlb.track_page_size and tlb.page_size == 0
    tlb_gather_mmu_fullmm(machine, MmStruct())
    assert calls == [False, True]

    machine, _ = make("rcu-table-free")
    tlb = tlb_gather_mmu(machine, MmStruct())
    assert tlb.batch is None and not tlb.track_page_size


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("generic-smp", True),
        ("page-size", True),
        ("rcu-table-free", True),
        ("up", False),
        ("s390", False),
    ],
)
def test_tlb_batch_rmap_is_asked_once_and_cached(arch: str, expected: bool) -> None:
    """Hook ``tlb_batch_rmap``: asked once per gather, cached in tlb.batch_rmap."""
    asked: list[int] = []

    class Count:
        @hookimpl(tryfirst=True)
        def tlb_batch_rmap(self, tlb: MmuGather) -> None:
            asked.append(1)  # returns None: falls through to the arch's answer

    machine, _ = make(arch, Count())
    tlb = tlb_gather_mmu(machine, MmStruct())
    assert tlb.batch_rmap is expected
    queue(tlb, 1, 2, 3)
    tlb.tlb_flush_rmaps(VMA)
    tlb.tlb_finish_mmu()
    assert asked == [1]


def test_tlb_batch_rmap_false_from_a_plugin_stops_the_chain() -> None:
    """Hook ``tlb_batch_rmap``: False is an answer and stops the chain."""

    class Never:
        @hookimpl
        def tlb_batch_rmap(self, tlb: MmuGather) -> bool:
            return False

    machine, _ = make("generic-smp", Never())
    assert tlb_gather_mmu(machine, MmStruct()).batch_rmap is False


def test_tlb_page_remover_is_asked_once_and_used_for_every_page() -> None:
    """Hook ``tlb_page_remover``: asked once; its function removes every page."""
    asked: list[int] = []
    seen: list[tuple[int, int, int]] = []

    class Remover:
        @hookimpl
        def tlb_page_remover(self, tlb: MmuGather) -> Any:
            asked.append(1)

            def remove(page: int, page_size: int, flags: int) -> bool:
                seen.append((page, page_size, flags))
                return page == 3

            return remove

    machine, collector = make("generic-smp", Remover())
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_remove_tlb_entry(VMA.start)
    assert [tlb.remove_page(p, PAGE, 1) for p in (1, 2, 3)] == [False, False, True]
    assert asked == [1]
    assert seen == [(1, PAGE, 1), (2, PAGE, 1), (3, PAGE, 1)]
    assert tlb.local.nr == 0  # nothing reached the generic queue

    # The built-ins: s390 frees at once, the others queue.
    machine, collector = make("s390")
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 7)
    assert collector.named("free_page") == [{"page": 7, "event": "free_page"}]
    machine, collector = make("up")
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 7)
    assert tlb.local.nr == 1 and not collector.named("free_page")


def test_tlb_flush_plugin_decides_what_is_invalidated() -> None:
    """Hook ``tlb_flush``: an implementation that issues nothing emits no tlb_flush."""

    class Nothing:
        @hookimpl
        def tlb_flush(self, tlb: MmuGather) -> bool:
            return True  # handled: no invalidate issued

    machine, collector = make("generic-smp", Nothing())
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 1)
    tlb.tlb_flush_mmu()
    # No invalidate; the notifiers are told anyway, and the page is freed.
    assert names(collector) == ["gather_begin", "mmu_notifier_invalidate", "free_pages"]
    assert collector.named("free_pages")[0]["pages"] == [1]


def test_tlb_flush_generic_range_and_mm_and_s390_lazy() -> None:
    """Hook ``tlb_flush``: generic range/mm flush; s390 flushes the mm only when marked."""
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 1)
    tlb.tlb_flush_mmu()
    (flush,) = collector.named("tlb_flush")
    assert (flush["scope"], flush["start"], flush["end"]) == (
        "range",
        VMA.start + PAGE,
        VMA.start + 2 * PAGE,
    )
    tlb.need_flush_all = True
    queue(tlb, 2)
    tlb.tlb_flush_mmu()
    assert collector.named("tlb_flush")[-1]["scope"] == "mm"

    machine, collector = make("s390")
    mm = MmStruct()
    tlb = tlb_gather_mmu(machine, mm)
    queue(tlb, 1)
    tlb.tlb_flush_mmu_tlbonly()
    assert not collector.named("tlb_flush")  # PTE clears were flushed by IPTE
    assert collector.named("mmu_notifier_invalidate")
    tlb.pte_free_tlb(99, VMA.start)  # marks the mm
    tlb.tlb_finish_mmu()
    assert [f["scope"] for f in collector.named("tlb_flush")] == ["mm"]
    assert mm.context["flush_mm"] is False


def test_tlb_change_page_size_flushes_on_a_change_with_page_size_only() -> None:
    """Hook ``tlb_change_page_size``: MMU_GATHER_PAGE_SIZE flushes on a change of size."""
    machine, collector = make("page-size")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_change_page_size(PAGE)
    queue(tlb, 1)
    tlb.tlb_change_page_size(PAGE)  # same size: nothing
    assert not collector.named("tlb_flush")
    tlb.tlb_change_page_size(2 << 20)  # another size: flush what was gathered
    assert collector.named("tlb_flush")[0]["page_size"] == PAGE
    assert collector.named("free_pages")[0]["pages"] == [1]
    assert tlb.page_size == 2 << 20

    # fullmm flushes every size at the end anyway.
    machine, collector = make("page-size")
    tlb = tlb_gather_mmu_fullmm(machine, MmStruct())
    tlb.tlb_change_page_size(PAGE)
    queue(tlb, 1)
    tlb.tlb_change_page_size(2 << 20)
    assert not collector.named("tlb_flush")

    # Without the feature the hook does nothing.
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_change_page_size(PAGE)
    queue(tlb, 1)
    tlb.tlb_change_page_size(2 << 20)
    assert not collector.named("tlb_flush") and tlb.page_size == 0


def test_tlb_flush_rmaps_walks_from_the_pointer_to_the_end() -> None:
    """Hook ``tlb_flush_rmaps``: SMP walks from the rmap pointer; up and s390 do nothing."""
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_discard_rmaps()
    queue(tlb, *range(1, 13))  # bundle of 8, then a batch page
    tlb.tlb_flush_rmaps(VMA)
    assert [e["page"] for e in collector.named("rmap_remove")] == list(range(1, 13))
    assert (tlb.rmap_pend, tlb.rmap_pend_first) == (tlb.active, 4)
    tlb.tlb_flush_rmaps(VMA)  # nothing pending any more
    assert len(collector.named("rmap_remove")) == 12

    for arch in ("up", "s390"):
        machine, collector = make(arch)
        tlb = tlb_gather_mmu(machine, MmStruct())
        tlb.tlb_discard_rmaps()
        queue(tlb, 1, 2)
        tlb.tlb_flush_rmaps(VMA)
        assert not collector.named("rmap_remove"), arch


def test_tlb_discard_rmaps_forgets_what_was_queued_before() -> None:
    """Hook ``tlb_discard_rmaps``: the pointer moves to the end of the queue."""
    machine, collector = make("generic-smp", detail=True)
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 1, 2, 3)
    tlb.tlb_discard_rmaps()
    assert collector.named("rmap_pend")[-1] == {"batch": 0, "first": 3, "event": "rmap_pend"}
    queue(tlb, 4)
    tlb.tlb_flush_rmaps(VMA)
    assert [e["page"] for e in collector.named("rmap_remove")] == [4]
    # Freeing the queue discards too.
    queue(tlb, 5)
    tlb.tlb_flush_mmu()
    assert (tlb.rmap_pend, tlb.rmap_pend_first) == (tlb.local, 0)
    tlb.tlb_flush_rmaps(VMA)
    assert [e["page"] for e in collector.named("rmap_remove")] == [4]


def test_tlb_start_vma_records_flags_and_flushes_the_cache() -> None:
    """Hook ``tlb_start_vma``: generic records flags, flushes the cache."""
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_start_vma(Vma(0x1000, 0x3000, VM_EXEC | VM_PFNMAP))
    assert (tlb.vma_exec, tlb.vma_huge, tlb.vma_pfn) == (True, False, True)
    assert collector.named("flush_cache_range") == [
        {"start": 0x1000, "end": 0x3000, "event": "flush_cache_range"}
    ]
    tlb = tlb_gather_mmu_fullmm(machine, MmStruct())
    tlb.tlb_start_vma(VMA)
    assert len(collector.named("flush_cache_range")) == 1

    class NoFlushCache:  # an MMU_GATHER_NO_FLUSH_CACHE arch
        @hookimpl
        def tlb_start_vma(self, tlb: MmuGather, vma: Vma) -> bool:
            if not tlb.fullmm:
                tlb.tlb_update_vma_flags(vma)
            return True

    machine, collector = make("generic-smp", NoFlushCache())
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_start_vma(Vma(0x1000, 0x3000, VM_EXEC))
    assert tlb.vma_exec and not collector.named("flush_cache_range")


def test_tlb_end_vma_generic_flushes_merge_vmas_only_for_pfnmap() -> None:
    """Hook ``tlb_end_vma``: generic flushes per VMA; MERGE_VMAS only for PFN maps."""
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_start_vma(VMA)
    queue(tlb, 1)
    tlb.tlb_end_vma(VMA)
    assert len(collector.named("tlb_flush")) == 1

    machine, collector = make("s390")  # MMU_GATHER_MERGE_VMAS
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_start_vma(VMA)
    queue(tlb, 1)
    tlb.tlb_end_vma(VMA)
    assert not collector.named("mmu_notifier_invalidate")
    pfn = Vma(0x800000, 0x900000, VM_PFNMAP)
    tlb.tlb_start_vma(pfn)
    tlb.tlb_remove_tlb_entry(pfn.start)
    tlb.tlb_end_vma(pfn)
    assert len(collector.named("mmu_notifier_invalidate")) == 1


def test_tlb_free_pgtable_generic_and_s390_bookkeeping() -> None:
    """Hook ``tlb_free_pgtable``: range one level up (generic); s390's own bookkeeping."""
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, 0x400000)
    assert (tlb.start, tlb.end) == (0x400000, 0x400000 + PAGE)
    assert tlb.levels() == ["pmd"] and tlb.freed_tables
    tlb.p4d_free_tlb(98, 0x8000000000)  # not folded: freed, no level bit
    assert tlb.levels() == ["pmd"]
    tlb.tlb_finish_mmu()
    assert collector.named("free_pages")[0]["pages"] == [99, 98]

    machine, collector = make("s390")
    mm = MmStruct()
    tlb = tlb_gather_mmu(machine, mm)
    tlb.pud_free_tlb(97, 0x80000000)
    assert tlb.end == 0 and tlb.levels() == ["p4d"] and mm.context["flush_mm"]


def test_tlb_remove_table_as_page_or_in_a_table_batch() -> None:
    """Hook ``tlb_remove_table``: generic queues the table as a page; TABLE_FREE batches it."""
    machine, collector = make("up")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_remove_tlb_entry(VMA.start)
    tlb.tlb_remove_table(99)
    assert tlb.local.pages[: tlb.local.nr] == [99]

    machine, collector = make("rcu-table-free")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    assert tlb.local.nr == 0 and tlb.batch is not None and tlb.batch.tables == [99]
    assert collector.named("batch_alloc") == [
        {"what": "table_batch", "ok": True, "event": "batch_alloc"}
    ]


def test_tlb_table_flush_hands_the_batch_over_at_flush_or_when_full() -> None:
    """Hook ``tlb_table_flush``: the batch goes at a flush or when full."""
    machine, collector = make("rcu-table-free")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    tlb.tlb_flush_mmu()
    assert tlb.batch is None
    assert names(collector)[-3:] == ["tlb_flush", "mmu_notifier_invalidate", "rcu_queue"]

    machine, collector = make("rcu-table-free")
    tlb = tlb_gather_mmu(machine, MmStruct())
    full = machine.geometry.max_table_batch
    for table in range(full):
        tlb.pte_free_tlb(1000 + table, VMA.start)
    (handed,) = collector.named("rcu_queue")
    assert len(handed["tables"]) == full == 509 and tlb.batch is None


def test_tlb_remove_table_free_now_without_rcu_or_through_a_plugin() -> None:
    """Hook ``tlb_remove_table_free``: TABLE_FREE frees now; a plugin can take over."""
    plain = ArchSpec(name="table-free", description="", features=("SMP", "MMU_GATHER_TABLE_FREE"))
    machine, collector = make(plain)
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    tlb.tlb_flush_mmu()
    assert collector.named("table_free") == [{"tables": [99], "event": "table_free"}]
    assert not collector.named("rcu_queue")

    got: list[list[int]] = []

    class Keep:
        @hookimpl
        def tlb_remove_table_free(self, tlb: MmuGather, batch: MmuTableBatch) -> bool:
            got.append(list(batch.tables))
            return True

    machine, collector = make("rcu-table-free", Keep())
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    tlb.tlb_finish_mmu()
    machine.rcu_grace_period()
    assert got == [[99]]
    assert not collector.named("rcu_queue") and not collector.named("table_free")


def test_rcu_tables_are_freed_after_the_grace_period() -> None:
    """Hook ``tlb_remove_table_free``: RCU table free: freed at the grace period."""
    machine, collector = make("rcu-table-free")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    tlb.tlb_finish_mmu()
    assert not collector.named("table_free")
    machine.rcu_grace_period()
    assert names(collector)[-2:] == ["rcu_grace_period", "table_free"]


def test_tlb_needs_table_invalidate_false_skips_the_table_flush() -> None:
    """Hook ``tlb_needs_table_invalidate``: False skips the invalidate before the batch goes."""

    class NoHardwareWalker:
        @hookimpl
        def tlb_needs_table_invalidate(self, tlb: MmuGather) -> bool:
            return False

    machine, collector = make("rcu-table-free", NoHardwareWalker())
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    tlb.tlb_flush_mmu_free()  # tlb_table_flush() without tlb_flush_mmu_tlbonly()
    assert "tlb_flush" not in names(collector)
    assert collector.named("rcu_queue")

    machine, collector = make("rcu-table-free")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    tlb.tlb_flush_mmu_free()
    assert names(collector)[-3:] == ["tlb_flush", "mmu_notifier_invalidate", "rcu_queue"]


def test_tlb_remove_table_sync_one_in_the_single_table_fallback() -> None:
    """Hook ``tlb_remove_table_sync_one``: the IPI of the single-table fallback (RCU only)."""
    machine, collector = make("rcu-table-free")
    machine.fail_alloc("table_batch")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    assert names(collector)[-5:] == [
        "batch_alloc",
        "tlb_flush",
        "mmu_notifier_invalidate",
        "ipi_sync",
        "table_free",
    ]
    assert collector.named("table_free") == [{"tables": [99], "event": "table_free"}]

    # MMU_GATHER_TABLE_FREE without RCU: the flush IPI was enough.
    plain = ArchSpec(name="table-free", description="", features=("SMP", "MMU_GATHER_TABLE_FREE"))
    machine, collector = make(plain)
    machine.fail_alloc("table_batch")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(99, VMA.start)
    assert "ipi_sync" not in names(collector)
    assert collector.named("table_free") == [{"tables": [99], "event": "table_free"}]


def test_tlb_next_batch_allowed_false_reports_a_full_bundle() -> None:
    """Hook ``tlb_next_batch_allowed``: generic allows; ``False`` makes the
    queue full when the bundle fills; the legacy strategy refuses only
    beyond the bundle, while delayed rmaps are pending."""
    machine, collector = make("generic-smp", detail=True)
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, *range(1, 9))  # the bundle (8) fills: a batch page follows
    assert collector.named("batch_next")[-1]["allocated"] is True

    class Refuse:
        @hookimpl
        def tlb_next_batch_allowed(self, tlb: MmuGather) -> bool:
            return False

    machine, collector = make("generic-smp", Refuse())
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, *range(1, 8))
    tlb.tlb_remove_tlb_entry(VMA.start)
    assert tlb.remove_page(8, PAGE, 0) is True  # full: no batch page asked for
    assert not collector.named("batch_alloc")

    from mmugather.plugins import rmap_legacy

    machine, collector = make("generic-smp", rmap_legacy)
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_remove_tlb_entry(VMA.start)
    assert rmap_legacy.tlb_delay_rmap(tlb) and tlb.delayed_rmap
    assert not tlb.remove_page(1, PAGE, rmap_legacy.DELAY_RMAP)
    queue(tlb, *range(2, 9))  # the bundle may still move on to a batch page
    assert tlb.active is not tlb.local
    tlb.tlb_remove_tlb_entry(VMA.start)
    fills = [tlb.remove_page(p, PAGE, 0) for p in range(9, 9 + tlb.active.max)]
    assert fills[-1] is True and not any(fills[:-1])  # ... but no further


def test_tlb_free_batch_generic_chunks_and_ranges_frees_ranges() -> None:
    """Hook ``tlb_free_batch``: generic frees each batch's pages in
    ``free_pages`` chunks; a plugin can take over; the ranges strategy's
    entries go to ``free_ranges``."""
    machine, collector = make("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, *range(1, 12))
    tlb.tlb_flush_mmu()
    assert [e["pages"] for e in collector.named("free_pages")] == [
        list(range(1, 9)),
        list(range(9, 12)),
    ]

    freed: list[int] = []

    class Mine:
        @hookimpl
        def tlb_free_batch(self, tlb: MmuGather, batch: Any) -> bool:
            freed.extend(batch.pages[: batch.nr])
            batch.nr = 0
            return True

    machine, collector = make("generic-smp", Mine())
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 5, 6, 7)
    tlb.tlb_flush_mmu()
    assert freed == [5, 6, 7] and not collector.named("free_pages")
    assert tlb.local.nr == 0

    # ranges without a folio model: every page is a folio (a range) of its own
    machine, collector = make("generic-smp", *strategies.get("ranges").plugins)
    tlb = tlb_gather_mmu(machine, MmStruct())
    queue(tlb, 5, 6, 7)
    tlb.tlb_flush_mmu()
    assert collector.named("free_ranges") == [
        {"ranges": [[5, 1], [6, 1], [7, 1]], "event": "free_ranges"}
    ]
    assert not collector.named("free_pages")


def test_flush_tlb_batched_pending_settles_reclaims_flush() -> None:
    """Hook ``flush_tlb_batched_pending``: nothing where the arch does not
    batch reclaim's flushes; ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH flushes the
    whole mm once and clears the debt; x86-64 with its own flush_tlb_mm();
    zap_pte_range() asks right after taking each table's lock."""
    def machine_of(arch: str | ArchSpec) -> tuple[Machine, Collector]:
        collector = Collector()
        emit = make_emit(observers=[collector])
        return make_machine(arch, emit=emit, hw_emit=emit), collector

    machine, collector = machine_of("generic-smp")
    mm = MmStruct(tlb_flush_batched=2)
    tlb_gather_mmu(machine, mm).flush_tlb_batched_pending()
    assert mm.tlb_flush_batched == 2 and collector.events[-1]["event"] == "gather_begin"

    toy = ArchSpec(name="toy", description="", features=("SMP",
                                                          "ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH"))
    machine, collector = machine_of(toy)
    mm = MmStruct(tlb_flush_batched=2)
    tlb = tlb_gather_mmu(machine, mm)
    tlb.flush_tlb_batched_pending()
    tlb.flush_tlb_batched_pending()
    assert mm.tlb_flush_batched == 0
    assert [(e["event"], e.get("batched"), e.get("op")) for e in collector.events[1:]] == [
        ("flush_tlb_batched_pending", 2, None), ("tlb_invalidate", None, "flush_tlb_mm")]

    machine, collector = machine_of("x86-64")
    mm = MmStruct.on(machine.cpus)
    mm.tlb_flush_batched = 1
    tlb = tlb_gather_mmu(machine, mm)
    tlb.flush_tlb_batched_pending()
    inv = collector.named("tlb_invalidate")
    assert [(e["op"], e["cpus"], e["walk"], e["waits"]) for e in inv] == [
        ("flush_tlb_local (cr3)", [0, 1], "asid", True)]
    assert mm.tlb_flush_batched == 0 and not collector.named("tlb_flush")

    # In zap_pte_range(), under the table's lock, before the first PTE.
    machine, collector = machine_of("x86-64")
    sc = parse([{"start": 0x400000, "end": 0x402000, "populate": [{"pages": 2}]}],
               [{"kind": "munmap", "start": 0x400000, "end": 0x402000}])
    callers = make_callers(build(sc, machine.geometry), machine)
    callers.ctx.mm.tlb_flush_batched = 1
    callers.mmap.munmap(0x400000, 0x402000)
    seq = names(collector)
    lock = seq.index("ptl_lock")
    assert seq[lock + 1:lock + 3] == ["flush_tlb_batched_pending", "tlb_invalidate"]
    assert seq.index("pte_clear") > lock + 2 and seq.count("flush_tlb_batched_pending") == 1


SHARED = [{"start": 0x40000000, "end": 0x80000000, "kind": "hugetlb", "hugepage_size": "pmd",
           "file": "shm", "shared_pmd": True, "populate": [{"pages": 1024}]},
          {"start": 0x10000000, "end": 0x10001000, "populate": [{"pages": 1}]}]


def test_huge_pmd_unshare_sync_runs_between_the_clear_and_the_put() -> None:
    """Hook ``huge_pmd_unshare_sync``: v6.5 does nothing between clearing the
    PUD entry and dropping the reference on a shared PMD table; the fix
    1013af4f585f waits for interrupts-off walkers there (an ``ipi_sync``
    where tables are freed through RCU, nothing where the flush IPI waits)."""
    from mmugather.core import fixes

    def unshare(arch: str, *plugins: Any) -> tuple[list[str], Any]:
        machine, collector = make(arch, *plugins)
        sc = parse(SHARED, [{"kind": "munmap", "start": 0x40000000, "end": 0x80000000}])
        aspace = build(sc, machine.geometry, pmd_share=True)
        table = aspace.pmd_tables[1]
        assert aspace.pmd_share == {table: 2}
        make_callers(aspace, machine).mmap.munmap(0x40000000, 0x80000000)
        assert aspace.pmd_share == {} and 1 not in aspace.pmd_tables
        assert table not in aspace.tables
        seq = names(collector)
        return seq[seq.index("pmd_unshare"):seq.index("pmd_unshare") + 3], collector

    assert unshare("arm64")[0] == ["pmd_unshare", "ptl_unlock", "tlb_flush"]
    fix = fixes.get("1013af4f585f").plugin
    assert unshare("arm64", fix)[0] == ["pmd_unshare", "ipi_sync", "ptl_unlock"]
    assert unshare("x86-64", fix)[0] == ["pmd_unshare", "ptl_unlock", "tlb_flush"]

    seen: list[tuple[bool, int]] = []

    class Spy:
        @hookimpl
        def huge_pmd_unshare_sync(self, tlb: MmuGather) -> bool:
            aspace = spied.ctx.aspace
            seen.append((1 in aspace.pmd_tables, sum(aspace.pmd_share.values())))
            return True

    machine, collector = make("x86-64", Spy())
    sc = parse(SHARED, [{"kind": "munmap", "start": 0x40000000, "end": 0x80000000}])
    spied = make_callers(build(sc, machine.geometry, pmd_share=True), machine)
    spied.mmap.munmap(0x40000000, 0x80000000)
    # Called once, after the PUD entry is cleared, before the reference goes.
    assert seen == [(False, 2)]
    (ev,) = collector.named("pmd_unshare")
    assert ev["users"] == 2 and ev["addr"] == ev["size"] == 0x40000000
    assert [a for a, _page in ev["entries"]] == [0x40000000, 0x40200000]
    assert not collector.named("pte_clear") or all(
        e["level"] != "huge" for e in collector.named("pte_clear"))
