"""The page-table geometry an arch compiles in (``core/constants.py``):
folded levels as the kernel folds them (``pgtable-nop4d.h``,
``pgtable-nopud.h``: no table of their own, nothing for ``p?d_free_tlb()``
to free), TASK_SIZE per arch, and ``mmugather run`` choosing each arch's
PAGE_SIZE and skipping an arch a scenario does not fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from mmugather.arches import BUILTIN, GENERIC_SMP
from mmugather.core import arch as arch_mod
from mmugather.core import scenario
from mmugather.core.arch import ArchRegistry, make_machine, registry
from mmugather.core.constants import Geometry
from mmugather.core.events import Collector
from mmugather.core.hookspecs import hookimpl
from mmugather.core.run import run_arch
from mmugather.core.scenario import ScenarioError
from teardown_kit import MIB, parse, rig
from test_run_cli import run_cli, table_cells
from test_scenario import assert_usage_error, to_toml

# ----------------------------------------------------------------------
# Geometry: shifts, derived or given, and the folded levels
# ----------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "shifts", "folded"), [
    ({}, (21, 30, 39, 48), ()),
    ({"folded": ("p4d",)}, (21, 30, 39, 39), ("p4d",)),
    ({"page_size": 16384, "folded": ("p4d",)}, (25, 36, 47, 47), ("p4d",)),
    ({"page_size": 65536, "folded": ("p4d", "pud")}, (29, 42, 42, 42), ("pud", "p4d")),
    # Equal shifts say the same: P4D_SHIFT is PGDIR_SHIFT in pgtable-nop4d.h.
    ({"pmd_shift": 21, "pud_shift": 30, "p4d_shift": 39, "pgdir_shift": 39}, (21, 30, 39, 39),
     ("p4d",)),
    ({"pmd_shift": 20, "pud_shift": 31, "p4d_shift": 42, "pgdir_shift": 53}, (20, 31, 42, 53),
     ()),
])
def test_shifts_and_folded_levels(kw: dict[str, Any], shifts: tuple[int, ...],
                                  folded: tuple[str, ...]) -> None:
    geo = Geometry(**kw)
    assert (geo.pmd_shift, geo.pud_shift, geo.p4d_shift, geo.pgdir_shift) == shifts
    assert geo.folded == folded
    assert (geo.pud_folded, geo.p4d_folded) == ("pud" in folded, "p4d" in folded)


@pytest.mark.parametrize(("kw", "message"), [
    ({"folded": ("pmd",)}, "folded: 'pmd' is not a level that folds (one of pud, p4d)"),
    ({"folded": ("pud",)}, "a folded PUD level needs a folded P4D level (pgtable-nopud.h "
     "folds both)"),
    ({"pmd_shift": 21, "pud_shift": 21}, "pmd_shift equals pud_shift (21): a folded PMD "
     "level is not modelled"),
    ({"folded": ("p4d",), "p4d_shift": 39, "pgdir_shift": 48},
     "folded: 'p4d', but p4d_shift 39 is below pgdir_shift 48 (a folded level's shift is "
     "the shift of the level above)"),
    ({"pud_shift": 40, "p4d_shift": 39}, "pud_shift 40 is above p4d_shift 39"),
])
def test_inconsistent_geometry_is_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Geometry(**kw)
    assert str(info.value) == message


#: the levels each built-in arch folds, per PAGE_SIZE
FOLDED = {
    **{name: {4096: (), 16384: (), 65536: ()}
       for name in ("generic-smp", "up", "page-size", "rcu-table-free")},
    "s390": {4096: ()},
    "x86-64": {4096: ("p4d",)},
    "arm64": {4096: ("p4d",), 16384: ("p4d",), 65536: ("pud", "p4d")},
    "arm64-tlbirange": {4096: ("p4d",), 16384: ("p4d",), 65536: ("pud", "p4d")},
    "powerpc-radix": {4096: ("p4d",), 65536: ("p4d",)},
}

#: TASK_SIZE per arch and PAGE_SIZE
TASK_SIZE = {"x86-64": {4096: (1 << 47) - 4096}, "arm64": {s: 1 << 48 for s in FOLDED["arm64"]},
             "powerpc-radix": {4096: 1 << 46, 65536: 1 << 52}, "s390": {4096: (1 << 64) - 4096},
             "generic-smp": {4096: (1 << 47) - 4096}}


def test_each_builtin_arch_folds_what_v6_5_folds() -> None:
    assert {s.name: {size: make_machine(s, page_size=size).geometry.folded
                     for size in s.page_sizes} for s in BUILTIN} == FOLDED
    for name, sizes in TASK_SIZE.items():
        for size, top in sizes.items():
            assert make_machine(name, page_size=size).geometry.task_size == top


# ----------------------------------------------------------------------
# The callers: no table for a folded level
# ----------------------------------------------------------------------

#: a PTE table's worth at 0 and one 512 GiB up (another PGD entry on 4K
#: x86-64 and arm64), enough for a 64K arm64 table at each too
TWO_REGIONS = [{"start": 0x20000000, "end": 0x40000000, "populate": [{"pages": 1}]},
               {"start": 0x8020000000, "end": 0x8040000000, "populate": [{"pages": 1}]}]


@pytest.mark.parametrize(("arch", "page_size", "tables"), [
    # five levels: a P4D table under the one PGD entry, a PUD table per P4D entry
    ("generic-smp", 4096, {"p4d": 1, "pud": 2, "pmd": 2, "pte": 2}),
    # 4-level: the PUD tables hang from the PGD entries
    ("x86-64", 4096, {"pud": 2, "pmd": 2, "pte": 2}),
    ("arm64", 4096, {"pud": 2, "pmd": 2, "pte": 2}),
    ("powerpc-radix", 4096, {"pud": 2, "pmd": 2, "pte": 2}),
    # 3-level: one 4 TiB PGD entry holds both; the PMD table hangs from it
    ("arm64", 65536, {"pmd": 1, "pte": 2}),
])
def test_a_folded_level_has_no_table(arch: str, page_size: int, tables: dict[str, int]) -> None:
    """pgd/p4d/pud_alloc() allocate nothing for a folded level: built and
    torn down, the address space has and frees exactly the tables of the
    levels the arch has, and exit's free_pgtables() calls no
    p4d_free_tlb()/pud_free_tlb() for a folded level."""
    sc = scenario.parse({"vma": TWO_REGIONS, "op": [{"kind": "exit"}]}, "t.toml", page_size)
    geo = make_machine(arch, page_size=page_size).geometry
    aspace = scenario.build(sc, geo)
    built = {level: n for level, n in
             ((lvl, sum(1 for t in aspace.tables.values() if t[0] == lvl))
              for lvl in ("p4d", "pud", "pmd", "pte")) if n}
    assert built == tables
    assert len(aspace.p4d_tables) == tables.get("p4d", 0)
    assert len(aspace.pud_tables) == tables.get("pud", 0)

    events = Collector()
    result = run_arch(sc, registry().get(arch), page_size=page_size, extra_observers=[events])
    unhooked: dict[str, int] = {}
    for e in events.named("table_unhook"):
        unhooked[e["level"]] = unhooked.get(e["level"], 0) + 1
    assert unhooked == tables
    assert result.violation_counts == {}


def test_x86_64_frees_its_pud_table_with_the_pgd_entry_it_hangs_from() -> None:
    """free_p4d_range() with the P4D level folded: the walk goes through the
    PGD entry (pgd_none() is 0), free_pud_range() frees the PUD table from
    the folded P4D entry (p4d_clear(), pud_free_tlb()) and p4d_free_tlb()
    frees nothing."""
    r = rig("x86-64", [{"start": 0x8020000000, "end": 0x8040000000,
                        "populate": [{"pages": 1}]}], check=True)
    r.callers.mmap.exit_mmap()
    unhooks = [(e["level"], e["addr"]) for e in r.events if e["event"] == "table_unhook"]
    assert unhooks == [("pte", 0x8020000000), ("pmd", 0x8000000000), ("pud", 0x8000000000)]


def test_pud_sized_hugetlb_pages_need_a_pud_level() -> None:
    sc = parse([{"start": 1 << 42, "end": (1 << 42) + (1 << 30), "kind": "hugetlb",
                 "hugepage_size": "pud", "populate": [{"pages": 262144}]}])
    with pytest.raises(ScenarioError) as info:
        scenario.check_geometry(sc, make_machine("arm64", page_size=65536).geometry, "arm64")
    assert str(info.value) == ("t.toml: vma[0].hugepage_size: arm64 folds the PUD level: it "
                               "has no PUD-sized pages")


# ----------------------------------------------------------------------
# TASK_SIZE
# ----------------------------------------------------------------------


def test_a_vma_above_task_size_is_refused_naming_the_arch() -> None:
    sc = parse([{"start": 0x3fffffe00000, "end": 0x400000200000, "populate": [{"pages": 1}]}])
    geo = make_machine("powerpc-radix").geometry
    with pytest.raises(ScenarioError) as info:
        scenario.build(sc, geo, "powerpc-radix")
    assert str(info.value) == (
        "t.toml: vma[0]: [0x3fffffe00000, 0x400000200000) ends above powerpc-radix's "
        "TASK_SIZE 0x400000000000 (PAGE_SIZE 4096)")
    # Up to TASK_SIZE is user space.
    scenario.build(parse([{"start": 0x3fffffe00000, "end": 1 << 46,
                           "populate": [{"pages": 1}]}]), geo, "powerpc-radix")


def test_an_operation_above_task_size_is_refused() -> None:
    sc = parse([{"start": 0x200000, "end": 0x400000}],
               [{"kind": "munmap", "start": 0x200000, "end": 0x500000000000}])
    with pytest.raises(ScenarioError) as info:
        scenario.check_geometry(sc, make_machine("powerpc-radix").geometry, "powerpc-radix")
    assert str(info.value) == (
        "t.toml: op[0]: munmap [0x200000, 0x500000000000) ends above powerpc-radix's "
        "TASK_SIZE 0x400000000000 (PAGE_SIZE 4096)")


def test_every_builtin_scenario_fits_every_builtin_arch() -> None:
    """The built-in scenarios stay below 2^46 (powerpc radix, 4K pages), so
    that ``mmugather run`` runs each on every arch."""
    for name in scenario.builtin_names():
        sc = scenario.load_builtin(name)
        for spec in BUILTIN:
            scenario.check_geometry(sc, make_machine(spec).geometry, spec.name)


# ----------------------------------------------------------------------
# mmugather run: the PAGE_SIZE of each arch, the arches a scenario does not fit
# ----------------------------------------------------------------------


def _write(tmp_path: Path, vmas: list[dict[str, Any]]) -> str:
    path = tmp_path / "s.toml"
    path.write_text(to_toml({"vma": vmas, "op": [{"kind": "exit"}]}))
    return str(path)


HIGH = [{"start": 0x7f0000000000, "end": 0x7f0000200000, "populate": [{"pages": 4}]}]


def test_run_skips_an_arch_the_scenario_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A VMA above powerpc radix's 2^46: every other arch runs it, and the
    run says why powerpc-radix did not (exit 0: nothing was violated)."""
    path = _write(tmp_path, HIGH)
    reason = (f"{path}: vma[0]: [0x7f0000000000, 0x7f0000200000) ends above powerpc-radix's "
              "TASK_SIZE 0x400000000000 (PAGE_SIZE 4096)")
    status, out, err = run_cli(capsys, path)
    assert (status, err) == (0, "")
    assert f"\npowerpc-radix: skipped: the scenario does not fit this arch: {reason}\n" in out
    assert list(table_cells(out)) == [s.name for s in BUILTIN if s.name != "powerpc-radix"]

    status, out, err = run_cli(capsys, path, "--json")
    doc = json.loads(out)
    assert status == 0
    assert doc["skipped"] == [{"arch": "powerpc-radix", "reason": reason}]
    assert [r["arch"] for r in doc["runs"]] == [s.name for s in BUILTIN
                                                if s.name != "powerpc-radix"]

    # Named alone, the arch it does not fit is the command's error.
    status, out, err = run_cli(capsys, path, "--arch", "powerpc-radix")
    assert_usage_error(status, out, err, reason)


def test_run_runs_the_default_scenario_on_every_arch(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _err = run_cli(capsys, "--json")
    doc = json.loads(out)
    assert status == 0 and doc["skipped"] == []
    assert [r["arch"] for r in doc["runs"]] == [s.name for s in BUILTIN]
    assert {r["page_size"] for r in doc["runs"]} == {4096}


@pytest.fixture
def big_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two arches whose first PAGE_SIZE is 64K, one of them with 4K too, in
    the registry the commands use."""
    both = attrs.evolve(GENERIC_SMP, name="big-pages", page_sizes=(65536, 4096))
    only = attrs.evolve(GENERIC_SMP, name="big-only", page_sizes=(65536,))
    module = SimpleNamespace(mmugather_add_arches=hookimpl(lambda: [both, only]))
    monkeypatch.setattr(arch_mod, "_default_registry",
                        ArchRegistry(entry_points=False, extra=[module]))


@pytest.mark.usefixtures("big_pages")
def test_run_reads_the_scenario_at_the_page_size_each_arch_runs_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An arch runs at its first PAGE_SIZE when the scenario fits it there,
    and the scenario is read at that size (``pages`` counts its pages);
    else at 4096 if it has it; else it is skipped."""
    aligned = _write(tmp_path, [{"start": 64 * MIB, "end": 128 * MIB,
                                 "populate": [{"pages": 16}]}])
    status, out, _err = run_cli(capsys, aligned, "--arch", "big-pages", "--arch", "big-only",
                                "--arch", "generic-smp", "--json")
    runs = {r["arch"]: r for r in json.loads(out)["runs"]}
    assert status == 0
    assert {a: r["page_size"] for a, r in runs.items()} == {
        "big-pages": 65536, "big-only": 65536, "generic-smp": 4096}
    assert {a: r["stats"]["ptes_zapped"] for a, r in runs.items()} == {
        "big-pages": 16, "big-only": 16, "generic-smp": 16}

    # The default does not fit 64K pages (its 2 MiB text VMA holds 32 of
    # them, not 300): 4096 where the arch has it.
    status, out, _err = run_cli(capsys, "--arch", "big-pages", "--arch", "big-only", "--json")
    doc = json.loads(out)
    assert [(r["arch"], r["page_size"]) for r in doc["runs"]] == [("big-pages", 4096)]
    assert [s["arch"] for s in doc["skipped"]] == ["big-only"]
    assert doc["skipped"][0]["reason"] == ("<builtin default>: vma[0].populate[0].pages: "
                                           "300 pages from offset 0x0 run past the VMA end")

    status, out, _err = run_cli(capsys, aligned, "--arch", "big-pages")
    assert status == 0
    assert "\nbig-pages: PAGE_SIZE 65536\n" in out
