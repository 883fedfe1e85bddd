"""Scenario files (``core/scenario.py``, ``docs/scenarios.md``): every bad
scenario is one clear error, ``FILE: KEY: reason``, from the API and from
``mmugather run`` (one stderr line, exit 2, nothing on stdout, no event
file); the built-in scenarios load and build on every arch.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mmugather.core import scenario
from mmugather.core.aspace import F_ANON, PFN_BASE, PTE_PRESENT
from mmugather.core.constants import Geometry
from mmugather.core.scenario import ScenarioError
from teardown_kit import ARCHES, spec

from mmugather import cli

USER_TOP = 1 << 47
#: x86-64 TASK_SIZE (TASK_SIZE_MAX): the top of the user address space,
#: one page below 2^47
TASK_SIZE = USER_TOP - 4096


def base() -> dict[str, Any]:
    return {
        "vma": [{"start": 0x400000, "end": 0x800000, "populate": [{"pages": 16}]}],
        "op": [{"kind": "exit"}],
    }


# ----------------------------------------------------------------------
# Writing TOML (what the tests need of it)
# ----------------------------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    lines = []
    arrays = {k: v for k, v in doc.items()
              if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    for k, v in doc.items():
        if k not in arrays:
            lines.append(f"{k} = {_value(v)}")
    for k, tables in arrays.items():
        for table in tables:
            lines.append(f"\n[[{k}]]")
            lines += [f"{kk} = {_value(vv)}" for kk, vv in table.items()]
    return "\n".join(lines) + "\n"


def test_to_toml_round_trips() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    doc = base()
    doc["vma"][0]["populate"].append({"offset": 0x10000, "state": "zero", "dirty": True})
    doc["name"] = "x"
    assert tomllib.loads(to_toml(doc)) == doc


# ----------------------------------------------------------------------
# Bad scenarios
# ----------------------------------------------------------------------

Mutate = Callable[[dict[str, Any]], None]


def _vma0(**kw: Any) -> Mutate:
    return lambda d: d["vma"][0].update(kw)


def _pop0(**kw: Any) -> Mutate:
    return lambda d: d["vma"][0]["populate"][0].update(kw)


def _ops(*ops: dict[str, Any]) -> Mutate:
    return lambda d: d.update(op=list(ops))


def _set(key: str, value: Any) -> Mutate:
    return lambda d: d.update({key: value})


def _drop(*path: Any) -> Mutate:
    def f(d: dict[str, Any]) -> None:
        target: Any = d
        for p in path[:-1]:
            target = target[p]
        del target[path[-1]]
    return f


def _vmas(*vmas: dict[str, Any]) -> Mutate:
    return lambda d: d.update(vma=list(vmas))


BAD: list[tuple[str, Mutate, str, str]] = [
    # unknown keys
    ("unknown-top", _set("colour", "red"), "colour", "unknown key"),
    ("unknown-vma", _vma0(size=4096), "vma[0].size", "unknown key"),
    ("unknown-populate", _pop0(count=3), "vma[0].populate[0].count", "unknown key"),
    ("unknown-op", _ops({"kind": "exit", "length": 1}), "op[0].length", "unknown key"),
    # overlaps
    ("overlap", lambda d: d["vma"].append({"start": 0x600000, "end": 0xa00000}), "vma[1]",
     "overlaps vma[0]"),
    ("overlap-earlier-listed-later", lambda d: d["vma"].insert(
        0, {"start": 0x7ff000, "end": 0x900000}), "vma[0]", "overlaps vma[1]"),
    # alignment
    ("start-unaligned", _vma0(start=0x400800), "vma[0].start", "not aligned"),
    ("end-unaligned", _vma0(end=0x7ffffe), "vma[0].end", "not aligned"),
    ("offset-unaligned", _pop0(offset=0x800, pages=1), "vma[0].populate[0].offset",
     "not page-aligned"),
    ("op-unaligned", _ops({"kind": "munmap", "start": 0x400001, "end": 0x500000}),
     "op[0].start", "not page-aligned"),
    ("hugetlb-vma-unaligned", _vma0(kind="hugetlb", start=0x500000, populate=[]), "vma[0]",
     "must be aligned"),
    # large folios
    ("folio-larger-than-vma", _vmas({"start": 0x400000, "end": 0x410000,
                                     "populate": [{"pages": 16, "folio_order": 9}]}),
     "vma[0].populate[0].folio_order", "larger than the VMA"),
    ("folio-misaligned-start", _pop0(offset=0x1000, pages=16, folio_order=4),
     "vma[0].populate[0]", "must start and end"),
    ("folio-misaligned-end", _pop0(pages=24, folio_order=4), "vma[0].populate[0]",
     "must start and end"),
    ("folio-sparse", _pop0(folio_order=4, every=2), "vma[0].populate[0].every",
     "every = 1"),
    ("pmd-mapped-small-folio", _pop0(pmd_mapped=True), "vma[0].populate[0].pmd_mapped",
     "PMD-order"),
    # double population
    ("populated-twice", lambda d: d["vma"][0]["populate"].append(
        {"offset": 0x8000, "pages": 4}), "vma[0].populate[1]", "already populated"),
    # out of range
    ("negative-start", _vma0(start=-4096), "vma[0].start", "-0x1000 is outside 0x0.."),
    ("negative-pages", _pop0(pages=-1), "vma[0].populate[0].pages", "-1 is outside 1.."),
    ("zero-pages", _pop0(pages=0), "vma[0].populate[0].pages", "outside"),
    ("negative-offset", _pop0(offset=-4096), "vma[0].populate[0].offset", "outside"),
    ("negative-pgoff", _vma0(kind="file", pgoff=-1), "vma[0].pgoff", "outside"),
    ("zero-every", _pop0(every=0), "vma[0].populate[0].every", "outside"),
    ("start-beyond-47-bit", _vma0(start=1 << 48, end=(1 << 48) + 0x400000, populate=[]),
     "vma[0].start", "outside"),
    ("end-beyond-47-bit", _vma0(start=TASK_SIZE - 0x1000, end=USER_TOP + 0x1000, populate=[]),
     "vma[0].end", "outside"),
    ("end-above-task-size", _vma0(start=TASK_SIZE - 0x1000, end=USER_TOP, populate=[]),
     "vma[0].end", ""),
    ("op-beyond-47-bit", _ops({"kind": "munmap", "start": 0x400000, "end": USER_TOP + 4096}),
     "op[0].end", "outside"),
    ("folio-order-above-pmd", _vmas({"start": 0x400000, "end": 0xc00000,
                                     "populate": [{"pages": 1024, "folio_order": 10}]}),
     "vma[0].populate[0].folio_order", "outside"),
    ("negative-folio-order", _pop0(folio_order=-1), "vma[0].populate[0].folio_order",
     "outside"),
    ("pages-past-end", _pop0(pages=1025), "vma[0].populate[0].pages", "past the VMA end"),
    ("pages-from-offset-past-end", _pop0(offset=0x3ff000, pages=2),
     "vma[0].populate[0].pages", "past the VMA end"),
    ("offset-past-end", _pop0(offset=0x400000, pages=1), "vma[0].populate[0].offset",
     "outside"),
    ("end-not-above-start", _vma0(end=0x400000, populate=[]), "vma[0]", "not above start"),
    ("op-end-not-above-start", _ops({"kind": "munmap", "start": 0x500000, "end": 0x500000}),
     "op[0]", "not above start"),
    # kinds and states
    ("bad-kind", _vma0(kind="stack"), "vma[0].kind", "is not one of"),
    ("bad-state", _pop0(state="paged"), "vma[0].populate[0].state", "is not one of"),
    ("bad-op-kind", _ops({"kind": "mprotect", "start": 0x400000, "end": 0x500000}),
     "op[0].kind", "is not one of"),
    ("swap-in-a-file", _vma0(kind="file", populate=[{"pages": 4, "state": "swap"}]),
     "vma[0].populate[0].state", "anonymous only"),
    ("pfnmap-not-present", _vma0(kind="pfnmap", populate=[{"pages": 4, "state": "marker"}]),
     "vma[0].populate[0].state", "present entries only"),
    ("large-folio-swapped", _pop0(folio_order=4, state="swap"), "vma[0].populate[0].state",
     "cannot be"),
    ("bad-hugepage-size", _vma0(kind="hugetlb", hugepage_size="1G", populate=[]),
     "vma[0].hugepage_size", "neither"),
    ("hugepage-size-not-hugetlb", _vma0(hugepage_size="pmd"), "vma[0].hugepage_size",
     "only a hugetlb"),
    ("file-on-anon", _vma0(file="libc"), "vma[0].file", "has no file"),
    ("exit-with-range", _ops({"kind": "exit", "start": 0x400000}), "op[0]",
     "takes no range"),
    # types
    ("start-is-a-string", _vma0(start="0x400000"), "vma[0].start", "must be an integer"),
    ("exec-is-an-integer", _vma0(exec=1), "vma[0].exec", "true or false"),
    ("pages-is-a-float", _pop0(pages=1.5), "vma[0].populate[0].pages", "must be an integer"),
    ("vma-not-a-table", _set("vma", [1, 2]), "vma[0]", "must be a table"),
    ("populate-not-an-array", _vma0(populate="all"), "vma[0].populate", "array of tables"),
    ("vma-empty", _set("vma", []), "vma", "non-empty"),
    ("no-ops", _set("op", []), "op", "no operations"),
    # missing
    ("missing-vma", _drop("vma"), "vma", "missing"),
    ("missing-op", _drop("op"), "op", "missing"),
    ("missing-end", _drop("vma", 0, "end"), "vma[0].end", "missing"),
    ("missing-start", _drop("vma", 0, "start"), "vma[0].start", "missing"),
    ("missing-op-kind", _ops({"start": 0x400000, "end": 0x500000}), "op[0].kind", "missing"),
    ("missing-op-end", _ops({"kind": "munmap", "start": 0x400000}), "op[0].end", "missing"),
]


def bad_doc(mutate: Mutate) -> dict[str, Any]:
    doc = copy.deepcopy(base())
    mutate(doc)
    return doc


@pytest.mark.parametrize(("mutate", "key", "reason"),
                         [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_scenario_is_one_clear_error(mutate: Mutate, key: str, reason: str) -> None:
    with pytest.raises(ScenarioError) as info:
        scenario.parse(bad_doc(mutate), "t.toml")
    exc = info.value
    assert (exc.path, exc.key) == ("t.toml", key)
    assert reason in exc.reason
    assert str(exc) == f"t.toml: {key}: {exc.reason}"
    assert "\n" not in str(exc)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_usage_error(status: int, out: str, err: str, prefix: str) -> None:
    assert status == 2
    assert out == ""
    assert err.startswith(f"mmugather: {prefix}")
    assert err.endswith("\n") and err.count("\n") == 1


@pytest.mark.parametrize(("mutate", "key", "reason"),
                         [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_scenario_file_through_the_cli(
    mutate: Mutate, key: str, reason: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(bad_doc(mutate)))
    with pytest.raises(ScenarioError) as info:
        scenario.load(str(path))
    assert (info.value.path, info.value.key) == (str(path), key)
    events = tmp_path / "events.jsonl"
    status, out, err = run_cli(capsys, "run", str(path), "--events", str(events))
    assert_usage_error(status, out, err, f"{path}: {key}: ")
    assert reason in err
    assert not events.exists()


def test_not_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[vma]]\nstart = 0x400000\nend = \n")
    with pytest.raises(ScenarioError) as info:
        scenario.load(str(path))
    assert info.value.key == ""
    assert info.value.reason.startswith("not TOML")
    assert str(info.value).startswith(f"{path}: not TOML")
    events = tmp_path / "e.jsonl"
    status, out, err = run_cli(capsys, "run", str(path), "--events", str(events))
    assert_usage_error(status, out, err, f"{path}: not TOML")
    assert not events.exists()


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_file(what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    if what == "directory":
        path.mkdir()
    with pytest.raises(ScenarioError) as info:
        scenario.load(str(path))
    assert info.value.reason.startswith("cannot read")
    status, out, err = run_cli(capsys, "run", str(path))
    assert_usage_error(status, out, err, f"{path}: cannot read")


def test_unknown_builtin_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ScenarioError) as info:
        scenario.load_builtin("no-such")
    assert "default" in info.value.reason


def test_task_size_is_the_top_of_a_vma() -> None:
    """The last usable page ends at TASK_SIZE (the default's stack does)."""
    doc = base()
    doc["vma"] = [{"start": TASK_SIZE - 0x2000, "end": TASK_SIZE, "populate": [{"pages": 2}]}]
    sc = scenario.parse(doc, "t.toml")
    assert sc.vmas[0].end == TASK_SIZE


# ----------------------------------------------------------------------
# Checks that depend on the arch's geometry
# ----------------------------------------------------------------------


def geometry(arch: str) -> Geometry:
    s = spec(arch)
    return s.geometry(s.page_sizes[0])


@pytest.mark.parametrize(("arch", "order"), [("generic-smp", 9), ("up", 9), ("page-size", 9),
                                             ("rcu-table-free", 9), ("s390", 8)])
def test_folio_order_pmd_is_the_arch_pmd_order(arch: str, order: int) -> None:
    doc = base()
    doc["vma"] = [{"start": 0x400000, "end": 0x800000,
                   "populate": [{"pages": 1024, "folio_order": "pmd"}]}]
    aspace = scenario.build(scenario.parse(doc, "t.toml"), geometry(arch))
    store = aspace.pages
    heads = sorted({store.head[i] for i in range(len(store))})
    assert [store.order[h] for h in heads] == [order] * (1024 >> order)
    assert heads == [k << order for k in range(1024 >> order)]


S390_ONLY_BAD: list[tuple[str, dict[str, Any], str]] = [
    # 2 MiB folios are above s390's PMD order (8: 1 MiB segments).
    ("folio-order-9", {"start": 0x400000, "end": 0x800000,
                       "populate": [{"pages": 1024, "folio_order": 9}]}, "folio_order"),
    ("pmd-mapped-order-9", {"start": 0x400000, "end": 0x800000,
                            "populate": [{"pages": 1024, "folio_order": 9,
                                          "pmd_mapped": True}]}, "vma[0].populate[0]"),
    # s390's PUD (region-3) pages are 2 GiB: a 1 GiB-aligned VMA is not aligned.
    ("hugetlb-pud-1g-aligned", {"start": 0x40000000, "end": 0x80000000, "kind": "hugetlb",
                                "hugepage_size": "pud", "populate": [{"pages": 262144}]},
     "vma[0]"),
]


@pytest.mark.parametrize(("vma", "key"), [c[1:] for c in S390_ONLY_BAD],
                         ids=[c[0] for c in S390_ONLY_BAD])
def test_arch_geometry_checks_are_made_for_the_arch_run(
    vma: dict[str, Any], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """parse() checks against the x86-64 geometry; what s390's geometry
    makes wrong must be rejected when the scenario is built for s390 (one
    error, exit 2 from ``run --arch s390``), while it runs on x86-64."""
    doc = base()
    doc["vma"] = [vma]
    sc = scenario.parse(doc, "t.toml")
    scenario.build(sc, geometry("generic-smp"))
    with pytest.raises(ScenarioError) as info:
        scenario.build(sc, geometry("s390"))
    assert info.value.path == "t.toml"
    assert key in info.value.key

    path = tmp_path / "s.toml"
    path.write_text(to_toml(doc))
    events = tmp_path / "e.jsonl"
    status, out, err = run_cli(capsys, "run", str(path), "--arch", "s390", "--events",
                               str(events))
    assert_usage_error(status, out, err, f"{path}: ")
    assert key in err
    assert not events.exists()
    assert run_cli(capsys, "run", str(path), "--arch", "generic-smp")[0] == 0


def test_one_file_cached_with_two_folio_orders_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two VMAs of one file may not disagree on the size of the folios that
    cache it: one error naming the scenario and the VMA, not a traceback."""
    doc = base()
    doc["vma"] = [
        {"start": 0x200000, "end": 0x400000, "kind": "file", "file": "f",
         "populate": [{"pages": 16, "folio_order": 4}]},
        {"start": 0x800000, "end": 0xa00000, "kind": "file", "file": "f",
         "populate": [{"pages": 16}]},
    ]
    with pytest.raises(ScenarioError) as info:
        scenario.build(scenario.parse(doc, "t.toml"), geometry("generic-smp"))
    assert info.value.path == "t.toml"
    assert info.value.key.startswith("vma[1]")

    path = tmp_path / "f.toml"
    path.write_text(to_toml(doc))
    events = tmp_path / "e.jsonl"
    status, out, err = run_cli(capsys, "run", str(path), "--events", str(events))
    assert_usage_error(status, out, err, f"{path}: vma[1]")
    assert not events.exists()


def test_file_pages_map_the_page_cache_page_of_their_index() -> None:
    """A file VMA whose pgoff is not aligned to its folios (pgoff 8, order-4
    folios) either is rejected or maps, at every address, the page cache's
    page of that file index; never an anonymous page of another VMA."""
    doc = base()
    doc["vma"] = [
        {"start": 0x200000, "end": 0x400000, "kind": "file", "file": "f",
         "populate": [{"pages": 16, "folio_order": 4}]},
        {"start": 0x600000, "end": 0x800000, "populate": [{"pages": 16, "folio_order": 4}]},
        {"start": 0x400000, "end": 0x600000, "kind": "file", "file": "f", "pgoff": 8,
         "populate": [{"pages": 16, "folio_order": 4}]},
    ]
    try:
        sc = scenario.parse(doc, "t.toml")
        aspace = scenario.build(sc, geometry("generic-smp"))
    except ScenarioError as exc:
        assert exc.path == "t.toml" and exc.key.startswith("vma[2]")
        return
    store = aspace.pages
    for vma in aspace.vmas:
        if vma.kind != "file":
            continue
        for k in range(16):
            pte = aspace.get_pte(vma.start + k * 4096)
            assert pte & PTE_PRESENT
            pfn = pte >> 8
            assert pfn == aspace.page_cache.get((vma.file, vma.pgoff + k)), (
                f"{vma.start + k * 4096:#x} maps page {pfn:#x}, not the cache's page of index "
                f"{vma.pgoff + k}")
            assert not store.flags[store.head[pfn - PFN_BASE]] & F_ANON


# ----------------------------------------------------------------------
# The built-in scenarios
# ----------------------------------------------------------------------


def test_every_builtin_scenario_loads() -> None:
    names = scenario.builtin_names()
    assert {"default", "exit-4g"} <= set(names)
    for name in names:
        sc = scenario.load_builtin(name)
        assert sc.name == name
        assert sc.vmas and sc.ops
        assert sc.ops[-1]["kind"] == "exit"
        assert scenario.resolve(name) == sc


@pytest.mark.parametrize("arch", ARCHES)
def test_default_builds_on_every_arch(arch: str) -> None:
    sc = scenario.load_builtin("default")
    aspace = scenario.build(sc, geometry(arch))
    assert [v.start for v in aspace.vmas] == [v.start for v in sc.vmas]
    assert aspace.mapped_ptes() > 4000
    # What the file says was built: 200 swap entries, 16 stack pages...
    assert len(aspace.swap_map) == 200
    assert sc.mapped_pages() == sum(-(-p.pages // p.every) for v in sc.vmas
                                    for p in v.populate
                                    if p.state in ("present", "swapcache", "zero"))


def test_exit_4g_builds_its_million_pages() -> None:
    sc = scenario.load_builtin("exit-4g")
    aspace = scenario.build(sc, geometry("generic-smp"))
    assert aspace.mapped_ptes() == 1 << 20
    assert len(aspace.pages) == 1 << 20
