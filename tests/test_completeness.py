"""The completeness rules (``core/check/complete.py``): what a teardown
must leave behind, in the spirit of the kernel's ``check_mm()``.  Each test
plants a gap the model itself had, or a caller that skips part of its work
(throwaway subclasses: the registered mutants are ``mmugather.mutants``'),
and checks the exact report.
"""

from __future__ import annotations

from typing import Any

import pytest
from mmugather.core import scenario, strategies
from mmugather.core.arch import make_machine
from mmugather.core.aspace import PFN_BASE, SWP_SWAP
from mmugather.core.callers import make_callers, run_ops
from mmugather.core.callers.memory import Memory
from mmugather.core.check import Checker
from mmugather.core.check.complete import Completeness
from mmugather.core.events import make_emit
from teardown_kit import ARCHES, MIB, PS, parse, spec
from test_model_corrections import HIGH_TO_LOW, run

from mmugather.mutants import caller_classes


def _teardown(vmas: list[dict[str, Any]], ops: list[dict[str, Any]], *, arch: str = "generic-smp",
              reverse: bool = False, classes: dict[str, type] | None = None) -> Checker:
    """The run's teardown by hand (checker and completeness rules on), with
    the address space's VMAs reversed (as the model built them before the
    fix) or the callers' classes replaced."""
    arch_spec = spec(arch)
    checker = Checker(arch_spec, PS)
    emit = make_emit(observers=[checker])
    checker.emit = emit
    machine = make_machine(arch_spec, emit=emit)
    aspace = scenario.build(parse(vmas, ops), machine.geometry)
    if reverse:
        aspace.vmas.reverse()
    callers = make_callers(aspace, machine, classes=classes, report=checker.report,
                           rmap_observer=checker.rmap_vma)
    callers.ctx.complete = Completeness(aspace, checker.report)
    run_ops(callers, ops)
    checker.finish()
    return checker


def test_completeness_catches_vmas_out_of_order() -> None:
    """What the rules say of the model before the fix: every page was
    zapped, no page table freed, so the mm is freed with 7 tables and their
    bytes still accounted."""
    checker = _teardown(HIGH_TO_LOW, [{"kind": "exit"}], reverse=True)
    assert [(v.rule, v.message) for v in checker.violations] == [
        ("pgtables-bytes", "after exit 7 page tables are still hooked in the mm (2 pte, 2 pmd, "
         "2 pud, 1 p4d): pgtables_bytes is 24,576, not 0 (check_mm(): \"non-zero "
         "pgtables_bytes on freeing mm\")")]


class NoRevisit(Memory):
    """zap_pmd_range() that moves on to the next PMD after a full queue
    stopped zap_pte_range() (the kernel's ``pmd--`` left out)."""

    def zap_pmd_resume(self, addr: int, nxt: int) -> int:
        return nxt


def test_a_zap_that_skips_entries_leaves_them_mapped() -> None:
    """munmap() of more pages than the queue holds, with the walk not
    coming back to the PMD the full queue stopped in: the rest of that
    table stays mapped, and free_pgtables() frees the table with them (the
    range itself is left empty); the mm exits with those pages mapped and
    counted."""
    vmas = [{"start": 0x100000000, "end": 0x105000000, "populate": [{"pages": 20480}]}]
    ops = [{"kind": "munmap", "start": 0x100000000, "end": 0x105000000}, {"kind": "exit"}]
    classes = caller_classes(None, strategies.get("pointer"))
    classes["memory"] = NoRevisit
    checker = _teardown(vmas, ops, classes=classes)
    # 9,698 pages fill the queue: the rest of the table the 9,699th is in
    # (30 pages) is skipped, twice.
    first = 0x100000000 + 9698 * PS
    assert [v.rule for v in checker.violations] == [
        "table-not-empty", "table-not-empty", "rss-counter", "mapped-at-exit"]
    table, _rest = checker.violations[0].message.split(" of ", 1)
    assert table.startswith("PTE table ")
    assert [v.message for v in checker.violations] == [
        f"{table} of [0x102400000, 0x102600000) is freed with 30 entries still in it (first: "
        f"a present PTE at {first:#x} -> page {PFN_BASE + 9698:#x}): what they map is never "
        "unmapped",
        checker.violations[1].message,
        "after exit MM_ANONPAGES is 60, not 0 (check_mm(): \"Bad rss-counter state\"): a "
        "mapping was never zapped",
        f"after exit page {PFN_BASE + 9698:#x} has mapcount 1, not 0 (and 59 more pages): a "
        "mapping of it was never removed",
    ]
    assert "[0x104a00000, 0x104c00000) is freed with 30 entries" in checker.violations[1].message


def test_a_madvise_that_skips_entries_leaves_them_in_its_range() -> None:
    """The same walk under MADV_DONTNEED, which frees no table: the entries
    it skipped are still in its range when it returns (exit zaps them)."""
    vmas = [{"start": 0x100000000, "end": 0x105000000, "populate": [{"pages": 20480}]}]
    ops = [{"kind": "madvise_dontneed", "start": 0x100000000, "end": 0x105000000},
           {"kind": "exit"}]
    classes = caller_classes(None, strategies.get("pointer"))
    classes["memory"] = NoRevisit
    checker = _teardown(vmas, ops, classes=classes)
    first = 0x100000000 + 9698 * PS
    assert [(v.rule, v.message) for v in checker.violations] == [
        ("left-mapped", "madvise(0x100000000, 0x105000000, MADV_DONTNEED) returns with a "
         f"present PTE at {first:#x} -> page {PFN_BASE + 9698:#x} (and 59 more entries) left "
         "in the range it unmapped: the page stays mapped and accounted")]


class DropSwap(Memory):
    """zap_pte_range() that clears swap entries without freeing them."""

    def zap_nonpresent(self, ent: int, addr: int, anon_vma: bool, details: Any) -> bool:
        return True if ent & 0xF0 == SWP_SWAP else super().zap_nonpresent(
            ent, addr, anon_vma, details)


def test_a_swap_entry_cleared_without_its_accounting_is_an_rss_counter() -> None:
    vmas = [{"start": 2 * MIB, "end": 4 * MIB, "populate": [{"pages": 8, "state": "swap"}]}]
    classes = caller_classes(None, strategies.get("pointer"))
    classes["memory"] = DropSwap
    checker = _teardown(vmas, [{"kind": "exit"}], classes=classes)
    assert [(v.rule, v.message) for v in checker.violations] == [
        ("rss-counter", "after exit MM_SWAPENTS is 8, not 0 (check_mm(): \"Bad rss-counter "
         "state\"): a mapping was never zapped")]


def test_madvise_is_checked_in_the_ranges_it_zapped() -> None:
    """MADV_DONTNEED over an anon VMA and a PFN map: madvise stops at the PFN
    map (EINVAL), whose entries stay; the anon range is empty after."""
    vmas = [{"start": 2 * MIB, "end": 4 * MIB, "populate": [{"pages": 16}]},
            {"start": 4 * MIB, "end": 6 * MIB, "kind": "pfnmap", "populate": [{"pages": 16}]}]
    ops = [{"kind": "madvise_dontneed", "start": 2 * MIB, "end": 6 * MIB}, {"kind": "exit"}]
    checker = _teardown(vmas, ops)
    assert checker.violations == []


@pytest.mark.parametrize("arch", ARCHES)
def test_splitting_a_file_thp_takes_its_pages_off_the_rss(arch: str) -> None:
    """The file THP a munmap splits is unmapped whole (add_mm_counter(mm,
    mm_counter_file(page), -HPAGE_PMD_NR)): exit finds every rss counter
    back at 0."""
    result, _events = run(arch, [{"start": 2 * MIB, "end": 4 * MIB, "kind": "file",
                                  "populate": [{"pages": 512, "folio_order": "pmd",
                                                "pmd_mapped": True}]}],
                          [{"kind": "munmap", "start": 2 * MIB, "end": 2 * MIB + 64 * PS},
                           {"kind": "exit"}])
    assert result.violation_counts == {}




def test_mmugather_run_judges_by_the_completeness_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmugather run`` (run_arch with the checker on) asks them: an exit
    whose free_pgtables() frees nothing leaves every page table hooked."""
    from mmugather.core.callers.memory_pgtables import FreePgtables

    monkeypatch.setattr(FreePgtables, "free_pgtables", lambda self, *args: None)
    result, _events = run("generic-smp", [{"start": 2 * MIB, "end": 4 * MIB,
                                           "populate": [{"pages": 4}]}], [{"kind": "exit"}])
    assert result.violation_counts == {"pgtables-bytes": 1}
    assert result.violations[0].message == (
        "after exit 4 page tables are still hooked in the mm (1 pte, 1 pmd, 1 pud, 1 p4d): "
        "pgtables_bytes is 12,288, not 0 (check_mm(): \"non-zero pgtables_bytes on freeing mm\")")


SHARED = [{"start": 0x40000000, "end": 0x80000000, "kind": "hugetlb", "hugepage_size": "pmd",
           "file": "shm", "shared_pmd": True, "populate": [{"pages": 1024}]}]


def test_folios_a_shared_pmd_table_still_maps_are_not_mapped_at_exit() -> None:
    """munmap() of a hugetlb range whose PMD table another process shares
    (x86-64 shares them): huge_pmd_unshare() hands the table, and the two
    folios it maps, to the other process; their mapcount stays 1 after
    this mm exits, and that is not a leak."""
    ops = [{"kind": "munmap", "start": 0x40000000, "end": 0x80000000}, {"kind": "exit"}]
    checker = _teardown(SHARED, ops, arch="x86-64")
    assert checker.violations == []


def test_a_shared_table_does_not_hide_this_mms_own_mapping() -> None:
    """Only a table this mm really unshared excuses what it maps: exit
    with a hugetlb zap that does nothing (no unshare, no unmap) leaves the
    two folios mapped by this mm, and the rule says so."""
    from mmugather.core.callers.hugetlb import Hugetlb

    class SkipHugetlb(Hugetlb):
        def unmap_hugepage_range(self, *args: Any, **kwargs: Any) -> None:
            return None

    classes = caller_classes(None, strategies.get("pointer"))
    classes["hugetlb"] = SkipHugetlb
    checker = _teardown(SHARED, [{"kind": "exit"}], arch="x86-64", classes=classes)
    assert [(v.rule, v.message) for v in checker.violations] == [
        ("mapped-at-exit", f"after exit folio {PFN_BASE:#x} has entire mapcount 1, not 0 (and 1 "
         "more folios): a PMD or hugetlb mapping of it was never removed")]
