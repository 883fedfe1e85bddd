"""arm64 (``arches/arm64.py``): v6.5's tlb_flush() and __flush_tlb_range()
branch by branch, as the TLBIs they issue; the built-in scenarios pass on
``arm64`` and ``arm64-tlbirange``; each arm64 mutant is caught, with a
report that names the entry left reachable."""

from __future__ import annotations

from typing import Any

import pytest
from mmugather.arches import arm64
from mmugather.core import scenario
from mmugather.core.arch import make_machine, registry
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.hw import CpuConfig, HwSemantics, Invalidate
from mmugather.core.mm import MmStruct
from mmugather.core.run import run_arch
from mmugather.core.vma import Vma

from mmugather.mutants import MUTANTS

PS = 4096
A = 0x40000000  # 1 GiB aligned
ALL = 0b11  # both CPUs of the default machine
ARM64 = ("arm64", "arm64-tlbirange")
MUTANT_NAMES = sorted(n for n in MUTANTS if n.startswith("arm64-"))


def gather(arch: str = "arm64", *, fullmm: bool = False, page_size: int | None = None,
           cpus: CpuConfig | None = None) -> tuple[MmuGather, Collector]:
    events = Collector()
    emit = make_emit(observers=[events])
    machine = make_machine(arch, page_size=page_size, emit=emit, hw_emit=emit, cpus=cpus)
    start = tlb_gather_mmu_fullmm if fullmm else tlb_gather_mmu
    return start(machine, MmStruct.on(machine.cpus)), events


def flushed(tlb: MmuGather, events: Collector) -> list[Any]:
    """What one tlb_flush_mmu_tlbonly() reports: the contract event (as
    scope, start, end) and the invalidations, in order."""
    events.events.clear()
    tlb.tlb_flush_mmu_tlbonly()
    out: list[Any] = []
    for e in events.events:
        if e["event"] == "tlb_flush":
            out.append((e["scope"], e.get("start"), e.get("end")))
        elif e["event"] == "tlb_invalidate":
            out.append(Invalidate.from_event(e))
    return out


def vale1is(start: int, end: int, stride: int = PS, level: str | None = "pte") -> Invalidate:
    return Invalidate("tlbi vale1is", ALL, start, end, stride=stride, walk="none", level=level)


def vae1is(start: int, end: int, stride: int) -> Invalidate:
    return Invalidate("tlbi vae1is", ALL, start, end, stride=stride, walk="va")


def rvale1is(start: int, end: int, level: str | None = "pte") -> Invalidate:
    return Invalidate("tlbi rvale1is", ALL, start, end, walk="none", level=level)


ASIDE1IS = Invalidate("tlbi aside1is", ALL, walk="asid")


# ----------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------


@pytest.mark.parametrize(("page_size", "shifts", "ptrs"), [
    (4096, (21, 30, 39, 39), 512),
    (16384, (25, 36, 47, 47), 2048),
    (65536, (29, 42, 42, 42), 8192),
])
def test_geometry_is_va_bits_48(page_size: int, shifts: tuple[int, ...], ptrs: int) -> None:
    geo = make_machine("arm64", page_size=page_size).geometry
    assert (geo.pmd_shift, geo.pud_shift, geo.p4d_shift, geo.pgdir_shift) == shifts
    assert geo.ptrs_per_pte == ptrs  # MAX_TLBI_OPS
    assert geo.task_size == 1 << 48
    # A folded level maps what the level above maps.
    sizes = {"pmd": geo.pmd_size, "pud": geo.pud_size, "p4d": geo.p4d_size}
    above = {"pmd": geo.pud_size, "pud": geo.p4d_size, "p4d": geo.pgdir_size}
    assert [lvl for lvl in sizes if sizes[lvl] == above[lvl]] == list(arm64.FOLDED[page_size])


def test_kconfig_and_hardware_promises() -> None:
    for name in ARM64:
        spec = registry().get(name)
        assert spec.resolved_features() == ["SMP", "MMU_GATHER_RCU_TABLE_FREE",
                                            "MMU_GATHER_TABLE_FREE", "ARCH_WANT_HUGE_PMD_SHARE"]
        assert make_machine(name).hw == HwSemantics(asid_reuse_invalidates=True,
                                                    flush_waits=False)
    assert arm64.MAX_TLBI_RANGE_PAGES == 1 << 21


# ----------------------------------------------------------------------
# tlb_flush(): fullmm
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARM64)
def test_fullmm_without_freed_tables_issues_no_tlbi(arch: str) -> None:
    tlb, events = gather(arch, fullmm=True)
    tlb.tlb_remove_tlb_entry(A)
    tlb.tlb_remove_pmd_tlb_entry(A + 0x200000)
    assert flushed(tlb, events) == []
    # Nothing was invalidated, so no contract tlb_flush either; secondary
    # TLBs are still told (mmu_notifier_invalidate_range()).
    assert [e["event"] for e in events.events] == ["mmu_notifier_invalidate"]


@pytest.mark.parametrize("arch", ARM64)
def test_fullmm_with_freed_tables_invalidates_the_whole_asid(arch: str) -> None:
    tlb, events = gather(arch, fullmm=True)
    tlb.tlb_remove_tlb_entry(A)
    tlb.pte_free_tlb(1 << 40, A)
    assert flushed(tlb, events) == [("mm", None, None), ASIDE1IS]


def test_a_nested_gather_flushes_the_whole_asid() -> None:
    """mm_tlb_flush_nested(): fullmm with freed_tables, whatever this
    gather recorded (7a30df49f63a)."""
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A)
    events.events.clear()
    tlb.tlb_finish_mmu(nested=True)
    assert [Invalidate.from_event(e) for e in events.named("tlb_invalidate")] == [ASIDE1IS]
    assert events.named("tlb_flush")[0]["scope"] == "mm"


# ----------------------------------------------------------------------
# tlb_flush(): ranges, last_level, the TTL hint
# ----------------------------------------------------------------------


def test_cleared_ptes_get_leaf_only_tlbis_hinted_level_3() -> None:
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A + PS)
    tlb.tlb_remove_tlb_entry(A + 3 * PS)
    assert flushed(tlb, events) == [("range", A + PS, A + 4 * PS),
                                    vale1is(A + PS, A + 4 * PS)]


@pytest.mark.parametrize(("clear", "stride", "level"), [
    ("pmd", 1 << 21, "pmd"),          # only PMD blocks cleared: TTL 2
    ("pud", 1 << 30, "pud"),          # only PUD blocks: TTL 1
])
def test_ttl_hint_names_the_one_level_cleared(clear: str, stride: int, level: str | None) -> None:
    tlb, events = gather()
    {"pmd": tlb.tlb_remove_pmd_tlb_entry, "pud": tlb.tlb_remove_pud_tlb_entry}[clear](A)
    assert flushed(tlb, events) == [("range", A, A + stride),
                                    vale1is(A, A + stride, stride=stride, level=level)]


def test_a_p4d_stride_is_too_many_pages_for_tlbis() -> None:
    # One 512 GiB stride is 2^27 pages, beyond MAX_TLBI_RANGE_PAGES (checked
    # with or without range TLBIs); arm64 would hint no p4d level anyway.
    tlb, events = gather()
    tlb.tlb_flush_p4d_range(A, PS)
    assert tlb.levels() == ["p4d"] and arm64.ARM64.tlb_get_level(tlb) == 0
    assert flushed(tlb, events) == [("mm", None, None), ASIDE1IS]


def test_two_levels_cleared_get_no_hint_and_the_smaller_stride() -> None:
    # Without range TLBIs a PMD block alone is MAX_TLBI_OPS pages: ASIDE1IS.
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A + 0x200000)
    tlb.tlb_remove_pmd_tlb_entry(A)
    assert flushed(tlb, events) == [("mm", None, None), ASIDE1IS]
    tlb, events = gather("arm64-tlbirange")
    tlb.tlb_remove_tlb_entry(A + 0x200000)
    tlb.tlb_remove_pmd_tlb_entry(A)
    end = A + 0x201000
    assert flushed(tlb, events) == [("range", A, end), vale1is(A, A + PS, level=None),
                                    rvale1is(A + PS, end, level=None)]


def test_freed_tables_get_tlbis_that_drop_walk_caches_unhinted() -> None:
    tlb, events = gather()
    tlb.tlb_remove_tlb_entry(A)
    tlb.pte_free_tlb(1 << 40, A)
    assert flushed(tlb, events) == [("range", A, A + PS), vae1is(A, A + PS, PS)]


def test_a_table_free_range_is_rounded_out_to_the_stride() -> None:
    # pte_free_tlb() records one page at the address it is given; the
    # stride is then PMD_SIZE (only cleared_pmds), and the TLBI names the
    # 2 MiB the table mapped.
    tlb, events = gather()
    tlb.pte_free_tlb(1 << 40, A + 0x5000)
    tlb.pte_free_tlb((1 << 40) + 1, A + 0x200000)
    assert flushed(tlb, events) == [("range", A + 0x5000, A + 0x201000),
                                    vae1is(A, A + 0x400000, 1 << 21)]


@pytest.mark.parametrize(("page_size", "stride_pages"), [(4096, 1), (4096, 512), (65536, 1)])
def test_max_tlbi_ops_strides_fall_back_to_the_asid(page_size: int, stride_pages: int) -> None:
    """Without range TLBIs, PTRS_PER_PTE strides or more are one ASIDE1IS."""
    geo = make_machine("arm64", page_size=page_size).geometry
    stride = page_size * stride_pages
    flush = (lambda tlb, a, n: tlb.tlb_flush_pte_range(a, n)) if stride_pages == 1 \
        else (lambda tlb, a, n: tlb.tlb_flush_pmd_range(a, n))
    below = (geo.ptrs_per_pte - 1) * stride
    tlb, events = gather(page_size=page_size)
    flush(tlb, A, below)
    assert flushed(tlb, events) == [
        ("range", A, A + below),
        vale1is(A, A + below, stride=stride, level="pte" if stride_pages == 1 else "pmd")]
    tlb, events = gather(page_size=page_size)
    flush(tlb, A, below + stride)
    assert flushed(tlb, events) == [("mm", None, None), ASIDE1IS]


# ----------------------------------------------------------------------
# FEAT_TLBIRANGE
# ----------------------------------------------------------------------


@pytest.mark.parametrize(("pages", "expected"), [
    (1, [vale1is(A, A + PS)]),
    # An odd count: one page by VALE1IS, the rest by range.
    (3, [vale1is(A, A + PS), rvale1is(A + PS, A + 3 * PS)]),
    # 512 pages: SCALE 1, NUM 7; MAX_TLBI_OPS does not apply.
    (512, [rvale1is(A, A + 512 * PS)]),
    # 4099 = 1 + 2 (SCALE 0, NUM 0) + 4096 (SCALE 2, NUM 1)
    (4099, [vale1is(A, A + PS), rvale1is(A + PS, A + 3 * PS),
            rvale1is(A + 3 * PS, A + 4099 * PS)]),
])
def test_range_tlbis_decompose_the_page_count(pages: int, expected: list[Invalidate]) -> None:
    tlb, events = gather("arm64-tlbirange")
    tlb.tlb_flush_pte_range(A, pages * PS)
    assert flushed(tlb, events) == [("range", A, A + pages * PS), *expected]


def test_range_tlbis_after_a_table_free_drop_walk_caches() -> None:
    tlb, events = gather("arm64-tlbirange")
    tlb.tlb_flush_pte_range(A, 64 * PS)
    tlb.pte_free_tlb(1 << 40, A)
    assert flushed(tlb, events) == [
        ("range", A, A + 64 * PS),
        Invalidate("tlbi rvae1is", ALL, A, A + 64 * PS, walk="va")]


def test_max_tlbi_range_pages_falls_back_to_the_asid() -> None:
    tlb, events = gather("arm64-tlbirange")
    tlb.tlb_flush_pte_range(A, (arm64.MAX_TLBI_RANGE_PAGES - 2) * PS)
    assert [type(x) for x in flushed(tlb, events)] == [tuple, Invalidate, Invalidate,
                                                        Invalidate, Invalidate]
    tlb, events = gather("arm64-tlbirange")
    # (One adjust takes an unsigned int size: two make the 8 GiB range.)
    tlb.tlb_flush_pte_range(A, PS)
    tlb.tlb_flush_pte_range(A + (arm64.MAX_TLBI_RANGE_PAGES - 1) * PS, PS)
    assert flushed(tlb, events) == [("mm", None, None), ASIDE1IS]


# ----------------------------------------------------------------------
# The gather around it
# ----------------------------------------------------------------------


def test_every_vma_end_flushes_without_merge_vmas() -> None:
    tlb, events = gather()
    for start in (A, A + 0x100000):
        vma = Vma(start, start + 0x10000)
        tlb.tlb_start_vma(vma)
        tlb.tlb_remove_tlb_entry(start)
        tlb.tlb_end_vma(vma)
    assert [(e["start"], e["end"]) for e in events.named("tlb_flush")] == [
        (A, A + PS), (A + 0x100000, A + 0x100000 + PS)]


def test_every_tlbi_reaches_every_cpu_and_waits_for_none() -> None:
    tlb, events = gather(cpus=CpuConfig(nr_cpus=4, threads=(0,), lazy=(3,)))
    tlb.tlb_remove_tlb_entry(A)
    (inv,) = flushed(tlb, events)[1:]
    assert inv.cpus == 0b1111 and not inv.waits


# ----------------------------------------------------------------------
# Runs: the built-in scenarios, other page sizes
# ----------------------------------------------------------------------

SMALL = [n for n in scenario.builtin_names() if n != "exit-4g"]


@pytest.mark.parametrize("arch", ARM64)
@pytest.mark.parametrize("name", SMALL)
def test_builtin_scenarios_have_no_violation(name: str, arch: str) -> None:
    run = run_arch(scenario.load_builtin(name), registry().get(arch))
    assert run.violation_counts == {}
    assert run.stats["ptes_zapped"] > 0


def test_exit_4g_has_no_violation_and_no_tlbi_before_the_tables_go() -> None:
    events = Collector()

    def keep(logger: Any, method: str, ev: Any) -> Any:
        if ev["event"] in ("tlb_invalidate", "table_unhook"):
            events(logger, method, ev)
        return ev

    run = run_arch(scenario.load_builtin("exit-4g"), registry().get("arm64"),
                   extra_observers=[keep])
    assert run.violation_counts == {}
    names = [e["event"] for e in events.events]
    # The exit's 1M PTEs are zapped with no TLBI at all: the first comes
    # once page tables were freed, and it is ASIDE1IS.
    first = names.index("tlb_invalidate")
    assert first > names.index("table_unhook")
    assert {e["op"] for e in events.named("tlb_invalidate")} == {"tlbi aside1is"}


def scaled(page_size: int) -> scenario.Scenario:
    """A layout whose munmap frees PTE tables (and arm64 4K's PMD table)
    at every page size: 1 GiB-aligned, populated in pages of ``page_size``."""
    return scenario.parse({
        "vma": [
            {"name": "heap", "start": 0x40000000, "end": 0xC0000000, "kind": "anon",
             "populate": [{"pages": 1024, "dirty": True},
                          {"offset": 0x20000000, "pages": 1024, "folio_order": 4,
                           "dirty": True},
                          {"offset": 0x60000000, "pages": 512, "dirty": True}]},
            {"name": "db", "start": 0x100000000, "end": 0x140000000, "kind": "file-shared",
             "file": "db", "populate": [{"pages": 256, "dirty": True}]},
        ],
        "op": [{"kind": "munmap", "start": 0x40000000, "end": 0x80000000},
               {"kind": "madvise_dontneed", "start": 0x100000000, "end": 0x100100000},
               {"kind": "exit"}],
    }, f"<scaled {page_size}>", page_size)


@pytest.mark.parametrize("arch", ARM64)
@pytest.mark.parametrize("page_size", [4096, 16384, 65536])
def test_every_page_size_has_no_violation(page_size: int, arch: str) -> None:
    events = Collector()
    run = run_arch(scaled(page_size), registry().get(arch), page_size=page_size,
                   extra_observers=[events])
    assert run.violation_counts == {}
    unhooked = {e["level"] for e in events.named("table_unhook")}
    assert "pte" in unhooked


# ----------------------------------------------------------------------
# The arm64 mutants
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARM64)
@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_each_arm64_mutant_is_caught(name: str, arch: str) -> None:
    mutant = MUTANTS[name]
    run = run_arch(scenario.load_builtin(mutant.scenario), registry().get(arch), mutant=name)
    assert run.mutant_applies
    assert run.violation_counts.get(mutant.rule, 0) > 0, run.violation_counts
    text = next(v for v in run.violations if v.rule == mutant.rule).render()
    assert "CPUs 0,1" in text or "CPU 1" in text
    assert "(ASID 1)" in text or ", ASID 1)" in text
    assert text.startswith(f"[{mutant.rule}] ")


def test_mutant_reports_name_the_entry_left_reachable() -> None:
    def first(name: str, arch: str = "arm64") -> str:
        run = run_arch(scenario.load_builtin(MUTANTS[name].scenario), registry().get(arch),
                       mutant=name)
        return run.violations[0].message

    # The last freed PTE table's stride fell out of the range.  (Table ids
    # count from the first table built: with 4K pages the p4d level is
    # folded, so a PUD table comes first.)
    assert first("arm64-range-round-down") == (
        "pte table 0x10000000009 is handed to RCU while CPUs 0,1 may still walk a stale pmd "
        "walk-cache entry for 0x10e00000 (ASID 1) -> table 0x10000000009: the grace period "
        "can end before any later invalidation, and the walker then reads whatever the page "
        "holds next")
    assert first("arm64-last-level").startswith(
        "pte table 0x10000000002 is handed to RCU while CPUs 0,1 may still walk a stale pmd "
        "walk-cache entry for 0x10000000 (ASID 1)")
    assert first("arm64-ttl-off") == (
        "page 0x100554 is released while CPUs 0,1 may still use a stale pte TLB entry for "
        "0x1400000 (ASID 1) -> page 0x100554: a load or store there reaches a page the mm no "
        "longer owns")
    assert first("arm64-no-rcu-table-free").startswith(
        "pte table 0x10000000002 (for [0x10000000, 0x10200000), ASID 1) is freed while a "
        "lockless walker (gup_fast, IRQs off) on CPU 1 may still be inside")


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_arm64_mutants_leave_other_arches_alone(name: str) -> None:
    run = run_arch(scenario.load_builtin(MUTANTS[name].scenario),
                   registry().get("powerpc-radix"), mutant=name)
    assert not run.mutant_applies and run.violation_counts == {}
