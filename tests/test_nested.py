"""``nested = true`` on a scenario operation: the operation's gather runs
while another thread's gather is in flight on the mm, so its
tlb_finish_mmu() finds mm_tlb_flush_nested() true and flushes the whole mm
with its page-walk caches (v6.5 mm/mmu_gather.c: fullmm, the range reset,
freed_tables).  The built-in ``nested-unmap`` is the scenario that shows a
nested gather losing ``freed_tables`` (7a30df49f63a) on arm64.
"""

from __future__ import annotations

from typing import Any

import pytest
from mmugather.arches import BUILTIN
from mmugather.core import scenario
from mmugather.core.arch import registry
from mmugather.core.callers import run_ops
from mmugather.core.gather import MmuGather
from mmugather.core.run import run_arch
from mmugather.core.scenario import ScenarioError
from teardown_kit import MIB, parse, rig

from mmugather.mutants import MUTANTS
from mmugather.mutants.base import Mutant, always


def test_nested_is_an_operation_flag() -> None:
    sc = parse([{"start": 2 * MIB, "end": 4 * MIB}],
               [{"kind": "munmap", "start": 2 * MIB, "end": 3 * MIB, "nested": True},
                {"kind": "madvise_dontneed", "start": 3 * MIB, "end": 4 * MIB, "nested": False},
                {"kind": "exit"}])
    assert sc.ops == ({"kind": "munmap", "start": 2 * MIB, "end": 3 * MIB, "nested": True},
                      {"kind": "madvise_dontneed", "start": 3 * MIB, "end": 4 * MIB},
                      {"kind": "exit"})


@pytest.mark.parametrize(("op", "key", "reason"), [
    ({"kind": "exit", "nested": True}, "op[0].nested",
     "exit has no other gather beside it (only munmap and madvise_dontneed are nested)"),
    ({"kind": "munmap", "start": 0, "end": 4096, "nested": 1}, "op[0].nested",
     "must be true or false, not int"),
])
def test_bad_nested(op: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse([{"start": 2 * MIB, "end": 4 * MIB}], [op])
    assert (info.value.key, info.value.reason) == (key, reason)


def _finish(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flushes and the end of the first gather, without the event numbers."""
    out = []
    for e in events:
        if e["event"] in ("tlb_flush", "gather_end"):
            out.append({k: v for k, v in e.items() if k != "#"})
        if e["event"] == "gather_end":
            return out
    raise AssertionError("no gather ended")


VICTIM = [{"start": 0x10000000, "end": 0x10200000, "populate": [{"pages": 256}]},
          {"start": 0x40000000, "end": 0x40200000, "populate": [{"pages": 16}]}]


@pytest.mark.parametrize("nested", [False, True])
def test_a_nested_munmap_flushes_the_whole_mm_with_its_walk_caches(nested: bool) -> None:
    """generic-smp: tlb_end_vma() flushes the unmapped pages; free_pgtables()
    then frees the PTE and the PMD table (pte_free_tlb(), pmd_free_tlb():
    a page one level up each).  Not nested, the last flush covers what the
    table frees recorded; nested, everything of the mm, walk caches
    included, whatever was recorded."""
    op: dict[str, Any] = {"kind": "munmap", "start": 0x10000000, "end": 0x10200000}
    if nested:
        op["nested"] = True
    r = rig("generic-smp", parse(VICTIM, [op]), check=True)
    run_ops(r.callers, [op])
    vma_flush = {"scope": "range", "start": 0x10000000, "end": 0x10100000, "exec": False,
                 "huge": False, "freed_tables": False, "levels": ["pte"], "event": "tlb_flush"}
    if nested:
        last = {"scope": "mm", "exec": False, "huge": False, "freed_tables": True, "levels": [],
                "event": "tlb_flush"}
    else:
        last = {"scope": "range", "start": 0, "end": 0x10001000, "exec": False, "huge": False,
                "freed_tables": True, "levels": ["pmd", "pud"], "event": "tlb_flush"}
    assert _finish(r.events) == [vma_flush, last, {"nested": nested, "event": "gather_end"}]
    assert r.callers.ctx.mm.tlb_flush_pending == 0
    assert r.violations == []


def test_a_nested_madvise_flushes_the_whole_mm_too() -> None:
    """MADV_DONTNEED frees no table, yet nested it still flushes the walk
    caches: tlb_finish_mmu() sets freed_tables whatever the gather did."""
    op = {"kind": "madvise_dontneed", "start": 0x10000000, "end": 0x10200000, "nested": True}
    r = rig("generic-smp", parse(VICTIM, [op]), check=True)
    run_ops(r.callers, [op])
    assert _finish(r.events)[-2:] == [
        {"scope": "mm", "exec": False, "huge": False, "freed_tables": True, "levels": [],
         "event": "tlb_flush"},
        {"nested": True, "event": "gather_end"}]


@pytest.mark.parametrize("spec", BUILTIN, ids=[s.name for s in BUILTIN])
def test_nested_unmap_has_no_violation(spec: Any) -> None:
    result = run_arch(scenario.load_builtin("nested-unmap"), spec)
    assert result.violation_counts == {}
    assert result.stats["tables_page_batch"] + result.stats["tables_rcu"] > 0


class LosesFreedTables(MmuGather):
    """tlb_finish_mmu() before 7a30df49f63a: a nested gather resets its
    range, and with it freed_tables, and flushes as fullmm."""

    def tlb_finish_nested(self) -> None:
        self.fullmm = True
        self.reset_range()


@pytest.fixture
def loses_freed_tables(monkeypatch: pytest.MonkeyPatch) -> str:
    name = "test-loses-freed-tables"
    monkeypatch.setitem(MUTANTS, name, Mutant(
        name=name, description="", rule="table-reachable", breaks="", applies=always,
        gather=LosesFreedTables, scenario="nested-unmap"))
    return name


def test_nested_unmap_exposes_a_nested_gather_that_loses_freed_tables(
    loses_freed_tables: str,
) -> None:
    """arm64: the munmap's own flush was leaf-only (TLBI VALE1IS per page);
    the nested fullmm flush without freed_tables is no TLBI at all
    (last_level), so the freed tables go to RCU with walk-cache entries
    still pointing to them.  Not nested, the same gather never takes that
    branch."""
    sc = scenario.load_builtin("nested-unmap")
    for arch in ("arm64", "arm64-tlbirange"):
        result = run_arch(sc, registry().get(arch), mutant=loses_freed_tables)
        assert result.violation_counts == {"table-reachable": 2}, arch
        assert result.violations[0].message.startswith(
            "pte table 0x10000000002 is handed to RCU while CPUs 0,1 may still walk a stale pmd "
            "walk-cache entry for 0x10000000 (ASID 1)")
    plain = scenario.Scenario(sc.name, sc.description, sc.vmas,
                              tuple({k: v for k, v in op.items() if k != "nested"}
                                    for op in sc.ops))
    assert run_arch(plain, registry().get("arm64"),
                    mutant=loses_freed_tables).violation_counts == {}
