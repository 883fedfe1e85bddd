"""Scenario input that used to crash or hang: deep nesting, bad UTF-8, huge
integers and values, sizes beyond memory (the ``--max-pages`` limit), VMAs
whose size once set the validation time; and ``populate.every`` honoured in
every state.  Each rejection is one line naming the file, exit 2, nothing on
stdout and no event file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmugather.core import scenario
from mmugather.core.aspace import PTE_PRESENT, SWP_SWAP
from mmugather.core.constants import Geometry
from mmugather.core.scenario import MAX_PAGES, ScenarioError, page_cost
from mmugather.core.scenario_build import build
from test_scenario import base, to_toml

from mmugather import cli

GEO = Geometry(4096)
TOP = (1 << 47) - 4096


def rejected(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> str:
    """Run the file through ``mmugather run``; the one stderr line."""
    events = path.parent / "events.jsonl"
    status = cli.main(["run", str(path), "--arch", "up", "--events", str(events), *extra])
    out = capsys.readouterr()
    assert (status, out.out) == (2, "")
    assert out.err.startswith(f"mmugather: {path}")
    assert out.err.endswith("\n") and out.err.count("\n") == 1
    assert len(out.err) < 400
    assert not events.exists()
    return out.err


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def test_toml_nested_1000_deep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a 3,000-line RecursionError."""
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")
    assert rejected(capsys, path) == (
        f"mmugather: {path}: not TOML as this reader takes it: arrays or tables nested too "
        "deeply\n")


def test_invalid_utf8_names_the_file_and_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "ok"\n\ndescription = "caf\xe9"\n' + to_toml(base()).encode())
    assert rejected(capsys, path) == (
        f"mmugather: {path}:3: not UTF-8: byte 0xe9 at offset 31\n")


def test_a_5000_digit_integer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Python refuses int() of more than 4,300 digits: that message named no file."""
    path = tmp_path / "big.toml"
    path.write_text(to_toml(base()).replace("end = 8388608", "end = 1" + "0" * 5000))
    assert "end = 1000" in path.read_text()
    line = path.read_text().splitlines().index("end = 1" + "0" * 5000) + 1
    assert rejected(capsys, path) == (
        f"mmugather: {path}:{line}: an integer of more than 4,300 digits\n")


def test_a_4000_digit_integer_is_not_echoed(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.toml"
    path.write_text(to_toml(base()).replace("end = 8388608", "end = 1" + "0" * 3999))
    assert rejected(capsys, path) == (
        f"mmugather: {path}: vma[0].end: a 4,000-digit number is outside 0x0..{TOP:#x}\n")


@pytest.mark.parametrize(("field", "value", "key"), [
    ("kind", "x" * 100_000, "vma[0].kind"),
    ("y" * 100_000, 1, "vma[0]." + "y" * 40 + "..."),
])
def test_long_values_are_cut(field: str, value: Any, key: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    doc = base()
    doc["vma"][0][field] = value
    path = tmp_path / "long.toml"
    path.write_text(to_toml(doc))
    err = rejected(capsys, path)
    assert err.startswith(f"mmugather: {path}: {key}: ")


# ---------------------------------------------------------------------------
# Size: the --max-pages limit, checked before anything is built
# ---------------------------------------------------------------------------


def whole_space(kind: str, **pop: Any) -> dict[str, Any]:
    return {"vma": [{"start": 0, "end": TOP, "kind": kind, "populate": [pop]}],
            "op": [{"kind": "exit"}]}


@pytest.mark.parametrize(("doc", "cost"), [
    # Before: a MemoryError after gigabytes.
    (whole_space("anon"), 1 << 35),
    (whole_space("file"), 1 << 35),
    # Few pages, each in its own PTE table: the tables are what costs.
    (whole_space("anon", every=2048), (TOP // 4096 // 2048 + 1) * 512),
])
def test_too_many_pages_is_refused_before_building(
    doc: dict[str, Any], cost: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(to_toml(doc))
    assert rejected(capsys, path) == (
        f"mmugather: {path}: vma[0].populate[0]: {cost:,} pages populated so far (a sparse "
        f"PTE table counts whole), more than the limit of {MAX_PAGES:,} (about 640 MiB of "
        "memory at 40 bytes a page); --max-pages N raises it\n")


def test_max_pages_raises_and_lowers_the_limit(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = base()
    doc["vma"][0]["populate"] = [{"pages": 512}, {"offset": 0x200000, "pages": 512}]
    path = tmp_path / "s.toml"
    path.write_text(to_toml(doc))
    err = rejected(capsys, path, "--max-pages", "1023")
    assert err.endswith(": vma[0].populate[1]: 1,024 pages populated so far (a sparse PTE table "
                        "counts whole), more than the limit of 1,023 (about 40 KiB of memory at "
                        "40 bytes a page); --max-pages N raises it\n")
    assert cli.main(["run", str(path), "--arch", "up", "--max-pages", "1024", "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(path), "--max-pages", "1023"]) == 2
    assert "more than the limit of 1,023" in capsys.readouterr().err


@pytest.mark.parametrize(("pop", "cost"), [
    ({"pages": 1}, 512),                                   # one page, one PTE table
    ({"pages": 1024}, 1024),                               # two full tables
    ({"offset": 0x1ff000, "pages": 2}, 1024),              # two pages across two tables
    ({"pages": 1024, "every": 512}, 1024),                 # a page in each of two tables
    ({"pages": 1024, "every": 1024}, 512),                 # one page, one table
    ({"pages": 1024, "folio_order": 9, "pmd_mapped": True}, 1024),  # THPs: no PTE table
])
def test_page_cost(pop: dict[str, Any], cost: int) -> None:
    doc = base()
    doc["vma"][0].update(start=0x400000, end=0x1000000)
    doc["vma"][0]["populate"] = [pop]
    sc = scenario.parse(doc, "t.toml")
    (p,) = sc.vmas[0].populate
    assert page_cost(p, 0x400000, "anon", GEO) == cost


def test_builtin_scenarios_are_within_the_limit() -> None:
    for name in scenario.builtin_names():
        sc = scenario.load_builtin(name)
        assert sum(page_cost(p, v.start, v.kind, GEO) for v in sc.vmas
                   for p in v.populate) <= MAX_PAGES


def test_the_limit_is_documented() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "scenarios.md").read_text()
    assert f"{MAX_PAGES:,}" in text and "--max-pages" in text


VALIDATE = """
import sys
from mmugather.core.constants import Geometry
from mmugather.core.scenario import parse, check_geometry
doc = {doc!r}
sc = parse(doc, "t.toml", max_pages=1 << 60)
try:
    check_geometry(sc, Geometry(4096))
except Exception as exc:
    print(exc)
else:
    print("ok")
"""


@pytest.mark.parametrize(("doc", "result"), [
    (whole_space("file"), "ok"),
    (whole_space("file", every=1 << 20), "ok"),
    ({"vma": [{"start": 0, "end": 1 << 46, "kind": "file", "file": "f",
               "populate": [{"folio_order": 4}]},
              {"start": 1 << 46, "end": TOP, "kind": "file", "file": "f",
               "populate": [{"every": 7}]}],
      "op": [{"kind": "exit"}]},
     "t.toml: vma[1].populate[0]: page 0 of file 'f' is cached already as a folio of order "
     "4, not 0"),
])
def test_validation_time_does_not_grow_with_the_vma(doc: dict[str, Any], result: str) -> None:
    """A file VMA of 2^47 bytes, fully or sparsely populated: validated on
    the index ranges (page by page, as before, it took hours).  Run apart, so
    that a return to page-by-page ends in the timeout, not a hung suite."""
    proc = subprocess.run([sys.executable, "-c", VALIDATE.format(doc=doc)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == result + "\n"


# ---------------------------------------------------------------------------
# One folio order per file page: the range check against page by page
# ---------------------------------------------------------------------------


def brute_force_clash(sc: scenario.Scenario) -> bool:
    """The rule page by page: each index of a file is mapped by entries of
    one folio order (a large folio covers all its pages)."""
    seen: dict[tuple[str, int], int] = {}
    for v in sc.vmas:
        for p in v.populate:
            first = v.pgoff + p.offset // 4096
            order = p.folio_order
            indices = (range(first, first + p.pages) if order
                       else range(first, first + p.pages, p.every))
            for i in indices:
                if seen.setdefault((v.file, i), order) != order:
                    return True
    return False


@st.composite
def file_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    vmas = []
    for n in range(draw(st.integers(2, 4))):
        order = draw(st.sampled_from([0, 0, 2, 4]))
        nr = 1 << order
        pages = draw(st.integers(1, 8)) * nr
        pop: dict[str, Any] = {"pages": pages, "folio_order": order}
        if not order:
            pop["every"] = draw(st.integers(1, 9))
        vmas.append({"start": (n + 1) << 24, "end": ((n + 1) << 24) + 0x100000,
                     "kind": draw(st.sampled_from(["file", "file-shared"])), "file": "f",
                     "pgoff": draw(st.integers(0, 6)) * 16, "populate": [pop]})
    return {"vma": vmas, "op": [{"kind": "exit"}]}


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(file_scenarios())
def test_cache_ranges_agree_with_page_by_page(doc: dict[str, Any]) -> None:
    sc = scenario.parse(doc, "t.toml")
    try:
        scenario.check_geometry(sc, GEO)
    except ScenarioError as exc:
        assert "is cached already as a folio of order" in str(exc)
        assert brute_force_clash(sc)
    else:
        assert not brute_force_clash(sc)
        build(sc, GEO)  # and the build agrees: no folio of another order met


# ---------------------------------------------------------------------------
# populate.every, in every state
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "state"), [
    ("anon", "present"), ("anon", "swapcache"), ("anon", "swap"), ("anon", "zero"),
    ("anon", "migration"), ("file", "present"), ("file-shared", "present"),
    ("pfnmap", "present"),
])
def test_every_maps_one_page_in_every(kind: str, state: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """16 pages, every = 4: 4 entries, at pages 0, 4, 8, 12 (present,
    swapcache and file pages used to map all 16)."""
    doc = base()
    doc["vma"][0].update(kind=kind, populate=[{"pages": 16, "every": 4, "state": state}])
    sc = scenario.parse(doc, "t.toml")
    aspace = build(sc, GEO)
    mapped = [k for k in range(16) if aspace.get_pte(0x400000 + k * 4096)]
    assert mapped == [0, 4, 8, 12]
    if state in ("present", "swapcache", "zero"):
        assert all(aspace.get_pte(0x400000 + k * 4096) & PTE_PRESENT for k in mapped)
        assert sc.mapped_pages() == 4
    if state == "swap":
        assert len(aspace.swap_map) == 4
        assert all(aspace.get_pte(0x400000 + k * 4096) & 0xff == SWP_SWAP for k in mapped)


def test_every_in_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = base()
    doc["vma"][0]["populate"] = [{"pages": 16, "every": 4, "dirty": True}]
    path = tmp_path / "sparse.toml"
    path.write_text(to_toml(doc))
    assert cli.main(["run", str(path), "--arch", "up", "--json"]) == 0
    stats = __import__("json").loads(capsys.readouterr().out)["runs"][0]["stats"]
    assert stats["ptes_zapped"] == stats["pages_freed"] == stats["folios_freed"] == 4


def test_no_builtin_scenario_uses_every() -> None:
    """So the fix changed none of them (docs/strategies.md's tables stand)."""
    for name in scenario.builtin_names():
        assert all(p.every == 1 for v in scenario.load_builtin(name).vmas for p in v.populate)
