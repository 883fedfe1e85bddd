"""Model corrections (issue 10, item 6), each against v6.5: VMAs in
address order, deferred_split_folio(), the dirty bit of a split huge PMD,
populate.every.  The completeness rules that catch such gaps are
``tests/test_completeness.py``'s.
"""

from __future__ import annotations

from typing import Any

import pytest
from mmugather.core import scenario
from mmugather.core.arch import make_machine
from mmugather.core.aspace import F_DIRTY, F_SWAPCACHE, PFN_BASE, PTE_DIRTY
from mmugather.core.callers import make_callers
from mmugather.core.events import Collector
from mmugather.core.run import ArchRun, run_arch
from teardown_kit import ARCHES, MIB, PS, parse, spec


def run(arch: str, vmas: list[dict[str, Any]], ops: list[dict[str, Any]], *,
        strategy: str | None = None) -> tuple[ArchRun, list[dict[str, Any]]]:
    """``mmugather run`` of a small scenario; its events too."""
    events = Collector()
    result = run_arch(parse(vmas, ops), spec(arch), extra_observers=[events],
                      strategy=strategy)
    return result, events.events


def tables_unhooked(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["level"], e["addr"]) for e in events if e["event"] == "table_unhook"]


# ----------------------------------------------------------------------
# VMAs in address order, whatever the file's order
# ----------------------------------------------------------------------

#: two small VMAs 512 GiB apart (a PUD table each), listed high to low
HIGH_TO_LOW = [
    {"start": 0x8000000000, "end": 0x8000200000, "populate": [{"pages": 4}]},
    {"start": 0x200000, "end": 0x400000, "populate": [{"pages": 4}]},
]

#: what exit frees for them on the five-level generic geometry: a PTE and a
#: PMD table each, a PUD table each (different P4D entries), one P4D table
#: (each upper table named by the start of what it maps)
SEVEN_TABLES = [("pte", 0x200000), ("pmd", 0), ("pud", 0), ("pte", 0x8000000000),
                ("pmd", 0x8000000000), ("pud", 0x8000000000), ("p4d", 0)]
#: s390: one 4 TiB region-2 table (PUD) holds both
S390_TABLES = [("pte", 0x200000), ("pmd", 0), ("pte", 0x8000000000), ("pmd", 0x8000000000),
               ("pud", 0), ("p4d", 0)]


@pytest.mark.parametrize("arch", ARCHES)
def test_vmas_listed_high_to_low_are_kept_in_address_order(arch: str) -> None:
    """The mm keeps its VMAs in address order (the maple tree); free_pgtables()
    walks them so, gathering neighbours.  Built in the file's order, the
    walk went from the high VMA down to the low one's end and freed
    nothing: 0 page tables at exit instead of these 7."""
    sc = parse(HIGH_TO_LOW)
    aspace = scenario.build(sc, make_machine(arch).geometry)
    assert [v.start for v in aspace.vmas] == [0x200000, 0x8000000000]
    result, events = run(arch, HIGH_TO_LOW, [{"kind": "exit"}])
    assert result.violation_counts == {}
    expected = S390_TABLES if arch == "s390" else SEVEN_TABLES
    assert sorted(tables_unhooked(events)) == sorted(expected)


# ----------------------------------------------------------------------
# deferred_split_folio()
# ----------------------------------------------------------------------


def _partly_unmapped(order: Any, state: str = "present", pages: int = 512,
                     cut: int = 256) -> list[dict[str, Any]]:
    return [{"start": 2 * MIB, "end": 4 * MIB, "populate": [
        {"pages": pages, "folio_order": order, "state": state, "dirty": True}]}], [
        {"kind": "munmap", "start": 2 * MIB, "end": 2 * MIB + cut * PS}]


@pytest.mark.parametrize("strategy", ["pointer", "legacy", "ranges", "folio-batch"])
@pytest.mark.parametrize("arch", ["generic-smp", "up", "s390"])
@pytest.mark.parametrize(("state", "queued"), [("present", True), ("swapcache", False)])
def test_a_folio_in_the_swap_cache_is_not_queued_for_deferred_split(
    arch: str, strategy: str, state: str, queued: bool
) -> None:
    """v6.5 deferred_split_folio() returns for a folio in the swap cache
    (reclaim adds a large folio to it before unmapping it, and handles its
    split itself); the same PTE-mapped PMD-order anon folio, half
    munmapped, is queued once when it is not in the swap cache."""
    geo = make_machine(arch).geometry
    vmas, ops = _partly_unmapped("pmd", state, cut=geo.ptrs_per_pte // 2)
    result, events = run(arch, vmas, ops, strategy=strategy)
    splits = [e["folio"] for e in events if e["event"] == "deferred_split"]
    assert splits == ([PFN_BASE] if queued else [])
    assert result.stats["deferred_split"] == len(splits)
    assert result.violation_counts == {}


@pytest.mark.parametrize("strategy", ["pointer", "legacy", "ranges", "folio-batch"])
@pytest.mark.parametrize(("order", "queued"), [(1, False), (2, None)])
def test_no_folio_below_order_2_is_queued_for_deferred_split(
    strategy: str, order: int, queued: bool | None
) -> None:
    """An order-1 folio has no room for the deferred list (v6.5
    VM_BUG_ONs one): v6.5's page_remove_rmap() queues PMD-sized folios
    only, and the later rmap functions the ``ranges`` (the series) and
    ``folio-batch`` (v6.9) strategies run queue any large anon folio from
    order 2 on.  Half of each folio is munmapped."""
    nr = 1 << order
    vmas = [{"start": 2 * MIB, "end": 4 * MIB,
             "populate": [{"pages": 4 * nr, "folio_order": order}]}]
    ops = [{"kind": "munmap", "start": 2 * MIB, "end": 2 * MIB + nr // 2 * PS},
           {"kind": "exit"}]
    result, events = run("generic-smp", vmas, ops, strategy=strategy)
    splits = [e["folio"] for e in events if e["event"] == "deferred_split"]
    if queued is None:
        queued = strategy in ("ranges", "folio-batch")
    assert splits == ([PFN_BASE] if queued else [])
    assert result.violation_counts == {}


# ----------------------------------------------------------------------
# __split_huge_pmd(): the dirty bit
# ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["anon", "file", "file-shared"])
@pytest.mark.parametrize("dirty", [True, False])
def test_splitting_a_dirty_huge_pmd_dirties_the_folio(kind: str, dirty: bool) -> None:
    """v6.5 __split_huge_pmd_locked(): a dirty PMD's folio is marked dirty
    (SetPageDirty() for anon, whose PTEs also get the dirty bit;
    set_page_dirty() for a file THP, which is unmapped whole), so that the
    dirt is not lost with the PMD."""
    vmas = [{"start": 2 * MIB, "end": 4 * MIB, "kind": kind,
             "populate": [{"pages": 512, "folio_order": "pmd", "pmd_mapped": True,
                           "dirty": dirty}]}]
    geo = make_machine("generic-smp").geometry
    aspace = scenario.build(parse(vmas), geo)
    machine = make_machine("generic-smp")
    callers = make_callers(aspace, machine)
    store = aspace.pages
    assert not store.flags[0] & F_DIRTY
    callers.mmap.munmap(2 * MIB, 3 * MIB)
    assert bool(store.flags[0] & F_DIRTY) == dirty
    if kind == "anon":
        left = [aspace.get_pte(a) for a in range(3 * MIB, 4 * MIB, PS)]
        assert all(bool(e & PTE_DIRTY) == dirty for e in left) and len(left) == 256
    else:
        assert aspace.pte_tables == {}


# ----------------------------------------------------------------------
# populate.every
# ----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["present", "swapcache", "swap"])
@pytest.mark.parametrize("kind", ["anon", "file"])
def test_every_maps_one_page_in_every(kind: str, state: str) -> None:
    """16 pages with ``every = 4``: 4 entries, at pages 0, 4, 8 and 12."""
    if kind == "file" and state != "present":
        return
    vmas = [{"start": 2 * MIB, "end": 4 * MIB, "kind": kind,
             "populate": [{"pages": 16, "every": 4, "state": state}]}]
    aspace = scenario.build(parse(vmas), make_machine("generic-smp").geometry)
    mapped = [(a - 2 * MIB) // PS for a in range(2 * MIB, 2 * MIB + 16 * PS, PS)
              if aspace.get_pte(a)]
    assert mapped == [0, 4, 8, 12]
    if state == "swapcache":
        assert all(aspace.pages.flags[(aspace.get_pte(2 * MIB + k * PS) >> 8) - PFN_BASE]
                   & F_SWAPCACHE for k in mapped)
    result, _events = run("generic-smp", vmas, [{"kind": "exit"}])
    zapped = result.stats["swap_freed" if state == "swap" else "ptes_zapped"]
    assert zapped == 4
    assert result.violation_counts == {}
