"""powerpc radix (``arches/powerpc.py``): v6.5's radix__tlb_flush() branch
by branch, as the tlbie/tlbiel it issues; the page-size filter that makes
MMU_GATHER_PAGE_SIZE necessary; the built-in scenarios pass at 4K and a
64K layout passes at 64K."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from mmugather.core import scenario
from mmugather.core.arch import make_machine, registry
from mmugather.core.constants import Geometry
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.hookspecs import hookimpl
from mmugather.core.hw import CpuConfig, HwSemantics, Invalidate, TlbModel
from mmugather.core.mm import MmStruct
from mmugather.core.run import run_arch

PS = 4096
A = 0x40000000
ALL = 0b11
ONE_THREAD = CpuConfig(nr_cpus=2, threads=(0,))


def gather(*, fullmm: bool = False, page_size: int = PS, cpus: CpuConfig | None = None,
           size: int | None = PS) -> tuple[MmuGather, Collector]:
    """A radix gather; ``size``: the page size tlb_change_page_size() was
    told (None: none yet)."""
    events = Collector()
    emit = make_emit(observers=[events])
    machine = make_machine("powerpc-radix", page_size=page_size, emit=emit, hw_emit=emit,
                           cpus=cpus)
    start = tlb_gather_mmu_fullmm if fullmm else tlb_gather_mmu
    tlb = start(machine, MmStruct.on(machine.cpus))
    if size is not None:
        tlb.tlb_change_page_size(size)
    return tlb, events


def flushed(tlb: MmuGather, events: Collector) -> list[Any]:
    events.events.clear()
    tlb.tlb_flush_mmu_tlbonly()
    return [(e["scope"], e.get("start"), e.get("end"), e["page_size"])
            if e["event"] == "tlb_flush" else Invalidate.from_event(e)
            for e in events.named("tlb_flush", "tlb_invalidate")]


def pid(ric: int, cpus: int = ALL) -> Invalidate:
    insn = "tlbiel" if cpus == 1 else "tlbie"
    return Invalidate(f"{insn} ric={ric}", cpus, leaf=ric != 1,
                      walk="none" if ric == 0 else "asid")


def per_page(start: int, end: int, size: int = PS, cpus: int = ALL) -> Invalidate:
    insn = "tlbiel" if cpus == 1 else "tlbie"
    return Invalidate(f"{insn} ric=0", cpus, start, end, stride=size, walk="none",
                      page_size=size)


# ----------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------


@pytest.mark.parametrize(("page_size", "ptrs", "task_size"), [(4096, 512, 1 << 46),
                                                              (65536, 32, 1 << 52)])
def test_radix_geometry(page_size: int, ptrs: int, task_size: int) -> None:
    geo = make_machine("powerpc-radix", page_size=page_size).geometry
    assert geo.ptrs_per_pte == ptrs
    assert (geo.pmd_size, geo.pud_size, geo.p4d_size, geo.pgdir_size) == (
        1 << 21, 1 << 30, 1 << 39, 1 << 39)  # p4d folded
    assert geo.task_size == task_size


def test_kconfig_and_hardware_promises() -> None:
    spec = registry().get("powerpc-radix")
    assert spec.resolved_features() == ["SMP", "MMU_GATHER_PAGE_SIZE",
                                        "MMU_GATHER_RCU_TABLE_FREE", "MMU_GATHER_TABLE_FREE",
                                        "MMU_GATHER_MERGE_VMAS"]
    machine = make_machine(spec)
    assert machine.hw == HwSemantics(flush_waits=False)
    tlb = tlb_gather_mmu(machine, MmStruct())
    assert machine.hook.tlb_needs_table_invalidate(tlb=tlb) is True


# ----------------------------------------------------------------------
# radix__tlb_flush()
# ----------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "expected"), [(None, pid(2)), (ONE_THREAD, pid(2, cpus=1))])
def test_fullmm_is_a_ric2_pid_flush(cpus: CpuConfig | None, expected: Invalidate) -> None:
    tlb, events = gather(fullmm=True, cpus=cpus)
    tlb.tlb_remove_tlb_entry(A)
    assert flushed(tlb, events) == [("mm", None, None, PS), expected]


@pytest.mark.parametrize(("freed", "ric"), [(False, 0), (True, 2)])
@pytest.mark.parametrize("size", [None, 1 << 24])
def test_a_page_size_radix_cannot_name_flushes_the_pid(size: int | None, freed: bool,
                                                        ric: int) -> None:
    tlb, events = gather(size=size)
    tlb.tlb_remove_tlb_entry(A)
    if freed:
        tlb.pte_free_tlb(1 << 40, A)
    assert flushed(tlb, events) == [("mm", None, None, size or 0), pid(ric)]


def test_up_to_33_pages_are_invalidated_one_by_one_beyond_by_pid() -> None:
    tlb, events = gather()
    tlb.tlb_flush_pte_range(A, 33 * PS)
    assert flushed(tlb, events) == [("range", A, A + 33 * PS, PS), per_page(A, A + 33 * PS)]
    tlb, events = gather()
    tlb.tlb_flush_pte_range(A, 34 * PS)
    assert flushed(tlb, events) == [("mm", None, None, PS), pid(0)]


def test_freed_tables_add_a_pid_wide_page_walk_cache_flush() -> None:
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A)
    tlb.pte_free_tlb(1 << 40, A)
    assert flushed(tlb, events) == [("range", A, A + PS, PS), pid(1), per_page(A, A + PS)]
    # Beyond the ceiling: one RIC=2 flush does both.
    tlb, events = gather()
    tlb.tlb_flush_pte_range(A, 40 * PS)
    tlb.pte_free_tlb(1 << 40, A)
    assert flushed(tlb, events) == [("mm", None, None, PS), pid(2)]


def test_an_mm_on_this_cpu_alone_is_flushed_locally_with_a_higher_ceiling() -> None:
    tlb, events = gather(cpus=ONE_THREAD)
    tlb.tlb_flush_pte_range(A, 256 * PS)
    assert flushed(tlb, events) == [("range", A, A + 256 * PS, PS),
                                    per_page(A, A + 256 * PS, cpus=1)]
    tlb, events = gather(cpus=ONE_THREAD)
    tlb.tlb_flush_pte_range(A, 257 * PS)
    assert flushed(tlb, events) == [("mm", None, None, PS), pid(0, cpus=1)]


def test_a_cpu_holding_the_mm_lazily_makes_the_flush_global() -> None:
    # (The kernel's single-thread trim would IPI it out of mm_cpumask first;
    # not modelled: the tlbie reaches it instead.)
    tlb, events = gather(cpus=CpuConfig(nr_cpus=3, threads=(0,), lazy=(2,)))
    tlb.tlb_remove_tlb_entry(A)
    assert flushed(tlb, events) == [("range", A, A + PS, PS), per_page(A, A + PS, cpus=0b111)]


def test_a_pmd_block_is_invalidated_by_its_own_page_size() -> None:
    tlb, events = gather(size=1 << 21)
    tlb.tlb_remove_pmd_tlb_entry(A)
    tlb.tlb_remove_pmd_tlb_entry(A + (1 << 21))
    assert flushed(tlb, events) == [("range", A, A + (4 << 20), 1 << 21),
                                    per_page(A, A + (4 << 20), size=1 << 21)]


def test_a_change_of_page_size_flushes_what_the_old_size_covers() -> None:
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A + (2 << 20))
    events.events.clear()
    tlb.tlb_change_page_size(1 << 21)
    assert [Invalidate.from_event(e) for e in events.named("tlb_invalidate")] == [
        per_page(A + (2 << 20), A + (2 << 20) + PS)]
    tlb.tlb_remove_pmd_tlb_entry(A)
    assert flushed(tlb, events) == [("range", A, A + (2 << 20), 1 << 21),
                                    per_page(A, A + (2 << 20), size=1 << 21)]


def test_tables_are_invalidated_before_they_go_to_rcu() -> None:
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A)
    tlb.pte_free_tlb(1 << 40, A)
    events.events.clear()
    tlb.tlb_finish_mmu()
    assert [e["event"] for e in events.events
            if e["event"] in ("tlb_flush", "tlb_invalidate", "rcu_queue")] == [
        "tlb_flush", "tlb_invalidate", "tlb_invalidate", "rcu_queue"]


# ----------------------------------------------------------------------
# The page-size filter: why MMU_GATHER_PAGE_SIZE flushes on a change
# ----------------------------------------------------------------------


def test_an_invalidation_of_one_page_size_leaves_entries_of_another() -> None:
    geo = Geometry(page_size=65536, pmd_shift=21, pud_shift=30, p4d_shift=39, pgdir_shift=39)
    tlb = TlbModel(geo, CpuConfig(), HwSemantics(flush_waits=False))
    tlb.entry_cleared(A, 1 << 21, "pmd", 0x2000, False, 1)
    tlb.pte_rows([(A + (2 << 20), 0x3000, "batched", False)], 1)
    tlb.invalidate(per_page(A, A + (2 << 20) + 65536, size=65536))
    assert tlb.page_reach(0x3000, ALL) is None
    reach = tlb.page_reach(0x2000, ALL)
    assert reach is not None and (reach.level, reach.size) == ("pmd", 1 << 21)


@hookimpl(tryfirst=True)
def _size_change_without_flush(tlb: MmuGather, page_size: int) -> bool:
    tlb.page_size = page_size
    return True


def with_pmd_thps(sc: scenario.Scenario, *which: tuple[int, int]) -> scenario.Scenario:
    """``sc`` with populate entries (vma, populate) made PMD-mapped THPs.

    The parser checks folio orders against the x86-64 geometry, whose PMD
    maps 512 MiB at 64K pages; radix's maps 2 MiB, as build() checks."""
    vmas = list(sc.vmas)
    for v, p in which:
        pops = list(vmas[v].populate)
        pops[p] = attrs.evolve(pops[p], folio_order=scenario.PMD_ORDER, pmd_mapped=True)
        vmas[v] = attrs.evolve(vmas[v], populate=tuple(pops))
    return attrs.evolve(sc, vmas=tuple(vmas))


#: a THP mapped by a PMD and one 64K page after it, unmapped together: 33
#: base pages, so the final flush is per page, of the last size recorded
THP_AND_A_PAGE = {
    "vma": [{"name": "thp", "start": 0x40000000, "end": 0x40400000, "kind": "anon",
             "populate": [{"pages": 32, "folio_order": 4, "dirty": True},
                          {"offset": 0x200000, "pages": 1, "dirty": True}]}],
    "op": [{"kind": "munmap", "start": 0x40000000, "end": 0x40210000}, {"kind": "exit"}],
}


def test_without_the_size_change_flush_a_pmd_entry_survives_at_64k() -> None:
    sc = with_pmd_thps(scenario.parse(THP_AND_A_PAGE, "t.toml", 65536), (0, 0))
    spec = registry().get("powerpc-radix")
    assert run_arch(sc, spec, page_size=65536).violation_counts == {}
    broken = run_arch(sc, spec, page_size=65536,
                      extra_plugins=[SimpleNamespace(tlb_change_page_size=
                                                     _size_change_without_flush)])
    # The THP goes to the gather as one page of 2 MiB.
    assert broken.violation_counts == {"page-reachable": 1, "stale-after-unmap": 1}
    assert broken.violations[0].message.startswith(
        "page 0x100000 is released while CPUs 0,1 may still use a stale pmd TLB entry for "
        "0x40000000 (ASID 1)")


# ----------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------

SMALL = [n for n in scenario.builtin_names() if n != "exit-4g"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("cpus", [None, ONE_THREAD])
def test_builtin_scenarios_have_no_violation(name: str, cpus: CpuConfig | None) -> None:
    events = Collector()

    def ops(logger: Any, method: str, ev: Any) -> Any:
        if ev["event"] == "tlb_invalidate":
            events(logger, method, ev)
        return ev

    run = run_arch(scenario.load_builtin(name), registry().get("powerpc-radix"),
                   extra_observers=[ops], cpus=cpus)
    assert run.violation_counts == {}
    insns = {e["op"].split()[0] for e in events.events}
    assert insns == ({"tlbiel"} if cpus else {"tlbie"})


def test_a_64k_layout_has_no_violation() -> None:
    sc = scenario.parse({
        "vma": [
            {"name": "heap", "start": 0x40000000, "end": 0x48000000, "kind": "anon",
             "populate": [{"pages": 1024, "dirty": True},
                          {"offset": 0x4000000, "pages": 512, "folio_order": 4,
                           "dirty": True}]},
            {"name": "db", "start": 0x50000000, "end": 0x52000000, "kind": "file-shared",
             "file": "db", "populate": [{"pages": 20, "dirty": True}]},
            {"name": "small", "start": 0x60000000, "end": 0x60200000, "kind": "anon",
             "populate": [{"pages": 10, "dirty": True}]},
        ],
        # Tables freed with many pages (RIC=2 by PID) and with few (RIC=1,
        # then RIC=0 per page); no table freed (RIC=0 per page).
        "op": [{"kind": "munmap", "start": 0x40000000, "end": 0x44000000},
               {"kind": "munmap", "start": 0x60000000, "end": 0x60200000},
               {"kind": "munmap", "start": 0x50000000, "end": 0x50140000},
               {"kind": "exit"}],
    }, "<64k>", 65536)
    sc = with_pmd_thps(sc, (0, 1))
    events = Collector()
    run = run_arch(sc, registry().get("powerpc-radix"), page_size=65536,
                   extra_observers=[events])
    assert run.violation_counts == {}
    ops = {e["op"] for e in events.named("tlb_invalidate")}
    assert ops == {"tlbie ric=0", "tlbie ric=1", "tlbie ric=2"}
    sizes = {e["page_size"] for e in events.named("tlb_invalidate") if e["stride"]}
    assert sizes == {65536}
