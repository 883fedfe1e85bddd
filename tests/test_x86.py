"""The built-in ``x86-64`` arch (``arches/x86_64.py``): v6.5's
``tlb_flush()`` + ``flush_tlb_mm_range()`` event by event, every built-in
scenario without a violation, and the ``x86-pmd-stride`` mutant caught."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from mmugather.arches import x86_64
from mmugather.core import scenario
from mmugather.core.arch import make_machine, registry
from mmugather.core.check import RULES
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.hw import CpuConfig, HwSemantics
from mmugather.core.mm import MmStruct
from mmugather.core.run import run_arch

from mmugather import cli
from mmugather.mutants import MUTANTS

PS = 4096
PMD = 1 << 21
#: a PMD-aligned address in the middle of the user address space
BASE = 0x7E0040000000
#: the fields every tlb_invalidate event carries, in order
INV = ("op", "cpus", "asid", "start", "end", "stride", "leaf", "walk", "level", "page_size",
       "waits")


def spec() -> Any:
    return registry().get("x86-64")


def play(steps: Callable[[MmuGather], None], *, cpus: CpuConfig | None = None,
         fullmm: bool = False, exited: bool = False, nested: bool = False) -> list[Any]:
    """One gather on x86-64: ``steps`` then tlb_finish_mmu(); the flush
    events, ``tlb_flush`` as a dict of its fields and each
    ``tlb_invalidate`` as a tuple of INV."""
    events = Collector()
    emit = make_emit(observers=[events])
    machine = make_machine("x86-64", emit=emit, hw_emit=emit, cpus=cpus)
    mm = MmStruct.on(machine.cpus)
    if exited:
        mm.exit()
    tlb = tlb_gather_mmu_fullmm(machine, mm) if fullmm else tlb_gather_mmu(machine, mm)
    steps(tlb)
    tlb.tlb_finish_mmu(nested=nested)
    out: list[Any] = []
    for e in events.named("tlb_flush", "tlb_invalidate"):
        if e["event"] == "tlb_flush":
            out.append({k: v for k, v in e.items() if k != "event"})
        else:
            out.append(tuple(e[k] for k in INV))
    return out


def ptes(n: int, start: int = BASE) -> Callable[[MmuGather], None]:
    def steps(tlb: MmuGather) -> None:
        for k in range(n):
            tlb.tlb_remove_tlb_entry(start + k * PS)
    return steps


def ranged(start: int, end: int, levels: list[str], freed: bool = False) -> dict[str, Any]:
    return {"scope": "range", "start": start, "end": end, "exec": False, "huge": False,
            "freed_tables": freed, "levels": levels}


def whole(levels: list[str], freed: bool = False) -> dict[str, Any]:
    return {"scope": "mm", "exec": False, "huge": False, "freed_tables": freed,
            "levels": levels}


def invlpg(cpus: list[int], start: int, end: int, stride: int = PS) -> tuple[Any, ...]:
    return ("invlpg", cpus, 1, start, end, stride, True, "asid", None, 0, True)


def cr3(cpus: list[int]) -> tuple[Any, ...]:
    return ("flush_tlb_local (cr3)", cpus, 1, None, None, 0, True, "asid", None, 0, True)


def lazy_switch(cpus: list[int]) -> tuple[Any, ...]:
    return ("switch to init_mm (lazy)", cpus, 1, None, None, 0, True, "asid", None, 0, True)


# ----------------------------------------------------------------------
# The configuration
# ----------------------------------------------------------------------


def test_geometry_is_4_level_with_p4d_folded() -> None:
    geo = make_machine("x86-64").geometry
    assert (geo.page_shift, geo.pmd_shift, geo.pud_shift) == (12, 21, 30)
    assert geo.p4d_shift == geo.pgdir_shift == 39
    assert geo.task_size == 0x7FFFFFFFF000
    assert spec().page_sizes == (4096,)
    assert spec().resolved_features() == ["SMP", "MMU_GATHER_MERGE_VMAS",
                                          "ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH",
                                          "ARCH_WANT_HUGE_PMD_SHARE"]


def test_hw_semantics() -> None:
    assert make_machine("x86-64").hw == HwSemantics(
        lazy_cpus_use_leaf=False, asid_reuse_invalidates=True, flush_waits=True)


# ----------------------------------------------------------------------
# flush_tlb_mm_range(): stride, ceiling, targets
# ----------------------------------------------------------------------


def test_one_page_is_one_invlpg_on_every_cpu_of_the_mm() -> None:
    assert play(ptes(1)) == [ranged(BASE, BASE + PS, ["pte"]), invlpg([0, 1], BASE, BASE + PS)]


def test_33_strides_stay_ranged() -> None:
    end = BASE + 33 * PS
    assert play(ptes(33)) == [ranged(BASE, end, ["pte"]), invlpg([0, 1], BASE, end)]


def test_34_strides_flush_everything() -> None:
    assert play(ptes(34)) == [whole(["pte"]), cr3([0, 1])]


def test_a_huge_pmd_alone_is_flushed_with_the_pmd_stride() -> None:
    def steps(tlb: MmuGather) -> None:
        tlb.tlb_remove_pmd_tlb_entry(BASE)

    assert play(steps) == [ranged(BASE, BASE + PMD, ["pmd"]),
                           invlpg([0, 1], BASE, BASE + PMD, stride=PMD)]


def test_33_pmd_strides_stay_ranged_34_do_not() -> None:
    """The ceiling counts strides, not bytes: 33 INVLPGs cover 66 MiB."""
    def huge(n: int) -> Callable[[MmuGather], None]:
        def steps(tlb: MmuGather) -> None:
            for k in range(n):
                tlb.tlb_remove_pmd_tlb_entry(BASE + k * PMD)
        return steps

    end = BASE + 33 * PMD
    assert play(huge(33)) == [ranged(BASE, end, ["pmd"]), invlpg([0, 1], BASE, end, stride=PMD)]
    assert play(huge(34)) == [whole(["pmd"]), cr3([0, 1])]


def test_a_freed_pte_table_widens_the_range_but_keeps_the_page_stride() -> None:
    """pte_free_tlb() adds PAGE_SIZE at the PMD's start and sets cleared_pmds;
    the stride stays PAGE_SHIFT because PTEs were cleared too."""
    def near(tlb: MmuGather) -> None:
        ptes(16, BASE + 16 * PS)(tlb)
        tlb.pte_free_tlb(0x77, BASE)

    end = BASE + 32 * PS
    assert play(near) == [ranged(BASE, end, ["pte", "pmd"], freed=True),
                          invlpg([0, 1], BASE, end)]

    def far(tlb: MmuGather) -> None:
        ptes(16, BASE + 256 * PS)(tlb)
        tlb.pte_free_tlb(0x77, BASE)

    # [BASE, BASE + 1 MiB + 64 KiB): 272 strides, past the ceiling.
    assert play(far) == [whole(["pte", "pmd"], freed=True), cr3([0, 1])]


LAZY = CpuConfig(nr_cpus=3, threads=(0, 1), lazy=(2,))


def test_a_lazy_cpu_gets_no_ipi_without_freed_tables() -> None:
    assert play(ptes(4), cpus=LAZY) == [ranged(BASE, BASE + 4 * PS, ["pte"]),
                                        invlpg([0, 1], BASE, BASE + 4 * PS)]
    assert play(ptes(40), cpus=LAZY) == [whole(["pte"]), cr3([0, 1])]


def test_a_lazy_cpu_switches_to_init_mm_when_tables_were_freed() -> None:
    def steps(tlb: MmuGather) -> None:
        ptes(4)(tlb)
        tlb.pte_free_tlb(0x77, BASE)

    assert play(steps, cpus=LAZY) == [
        ranged(BASE, BASE + 4 * PS, ["pte", "pmd"], freed=True),
        invlpg([0, 1], BASE, BASE + 4 * PS),
        lazy_switch([2]),
    ]


def test_a_single_cpu_flushes_locally() -> None:
    alone = CpuConfig(nr_cpus=1, threads=(0,))
    assert play(ptes(2), cpus=alone) == [ranged(BASE, BASE + 2 * PS, ["pte"]),
                                         invlpg([0], BASE, BASE + 2 * PS)]


def test_fullmm_flushes_everything() -> None:
    # Exit: every CPU holds the dead mm lazily.  Without a freed table no
    # CPU is sent anything, so nothing is flushed at all.
    assert play(ptes(2), fullmm=True, exited=True) == []

    def with_table(tlb: MmuGather) -> None:
        ptes(2)(tlb)
        tlb.pte_free_tlb(0x77, BASE)

    assert play(with_table, fullmm=True, exited=True) == [
        whole(["pte", "pmd"], freed=True), lazy_switch([0, 1])]
    # Alone in mm_cpumask, the zapping CPU runs flush_tlb_func() itself,
    # which switches it away from the dead mm.
    alone = CpuConfig(nr_cpus=1, threads=(0,))
    assert play(ptes(2), fullmm=True, exited=True, cpus=alone) == [
        whole(["pte"]), lazy_switch([0])]
    # A live mm (the nested case below aside, fullmm means exit): a full flush.
    assert play(ptes(2), fullmm=True) == [whole(["pte"]), cr3([0, 1])]


def test_a_nested_gather_flushes_everything_with_freed_tables() -> None:
    assert play(ptes(2), cpus=LAZY, nested=True) == [
        whole([], freed=True), cr3([0, 1]), lazy_switch([2])]


def test_tlb_flush_carries_the_contract_fields_only() -> None:
    (flush, _inv) = play(ptes(1))
    assert set(flush) == {"scope", "start", "end", "exec", "huge", "freed_tables", "levels"}


# ----------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------


@pytest.mark.parametrize("name", scenario.builtin_names())
def test_every_builtin_scenario_runs_clean(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["run", name, "--arch", "x86-64"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.splitlines()[-1] == "no invariant violations"


@pytest.mark.parametrize("name", scenario.builtin_names())
def test_every_builtin_scenario_runs_clean_with_a_lazy_cpu(name: str) -> None:
    run = run_arch(scenario.load_builtin(name), spec(), cpus=LAZY)
    assert run.violation_counts == {}
    assert run.stats["ptes_zapped"] > 0


def test_run_arch_passes_the_cpus_on() -> None:
    """The lazy CPU is in the hardware model's machine: a freed table
    reaches it (and only then)."""
    events = Collector()
    run_arch(scenario.load_builtin("order0-anon"), spec(), cpus=LAZY, extra_observers=[events])
    (config,) = events.named("hw_config")
    assert (config["nr_cpus"], config["running"], config["lazy"]) == (3, [0, 1], [2])
    switches = [e["cpus"] for e in events.named("tlb_invalidate") if e["op"] == x86_64.OP_LAZY]
    # The munmap frees tables while CPU 2 alone is lazy; exit's last flush
    # finds every CPU lazy.
    assert switches == [[2], [0, 1, 2]]


# ----------------------------------------------------------------------
# The mutant
# ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, m in MUTANTS.items() if m.rule))
def test_every_mutant_is_caught_on_x86(name: str) -> None:
    """x86-64 gathers and batches rmaps: every mutant the checker catches,
    but those of another arch's own steps, applies and is caught."""
    mutant = MUTANTS[name]
    if name.startswith("arm64-"):
        assert not mutant.applies(spec())
        return
    assert mutant.applies(spec())
    run = run_arch(scenario.load_builtin(mutant.scenario), spec(), mutant=name)
    assert run.violation_counts.get(mutant.rule, 0) > 0, run.violation_counts


def test_pmd_stride_mutant_is_caught_with_a_readable_report() -> None:
    mutant = MUTANTS["x86-pmd-stride"]
    assert mutant.applies(spec())
    run = run_arch(scenario.load_builtin(mutant.scenario), spec(), mutant=mutant.name)
    assert run.mutant_applies
    assert run.violation_counts["page-reachable"] > 0
    v = run.violations[0]
    lines = v.render().splitlines()
    assert lines[0] == (
        "[page-reachable] page 0x100001 is released while CPUs 0,1 may still use a stale pte "
        "TLB entry for 0x10001000 (ASID 1) -> page 0x100001: a load or store there reaches a "
        "page the mm no longer owns")
    assert lines[1] == f"  rule: {RULES['page-reachable']}"
    # The trail shows the flush at the wrong stride: one INVLPG per 2 MiB.
    (inv,) = [e for e in v.trail if e["event"] == "tlb_invalidate"]
    assert (inv["op"], inv["stride"]) == ("invlpg", PMD)
    flush = next(e for e in v.trail if e["event"] == "tlb_flush")
    assert flush["levels"] == ["pte", "pmd"]


def test_pmd_stride_mutant_exits_1_from_the_command_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["run", "order0-anon", "--arch", "x86-64", "--mutant", "x86-pmd-stride",
                       "--show", "1"])
    out = capsys.readouterr().out
    assert status == 1
    assert out.splitlines()[0] == "scenario: order0-anon   mutant: x86-pmd-stride"
    assert "\nx86-64: " in out and "page-reachable: " in out


def test_pmd_stride_mutant_changes_nothing_without_a_pmd_level() -> None:
    """Without a PMD-level clear the stride is the kernel's: same events."""
    def steps(tlb: MmuGather) -> None:
        ptes(3)(tlb)

    good = play(steps)
    events = Collector()
    emit = make_emit(observers=[events])
    machine = make_machine("x86-64", emit=emit, hw_emit=emit,
                           extra_plugins=[MUTANTS["x86-pmd-stride"].plugin])
    tlb = tlb_gather_mmu(machine, MmStruct.on(machine.cpus))
    steps(tlb)
    tlb.tlb_finish_mmu()
    bad = [{k: v for k, v in e.items() if k != "event"} if e["event"] == "tlb_flush"
           else tuple(e[k] for k in INV) for e in events.named("tlb_flush", "tlb_invalidate")]
    assert bad == good
