"""The conformance kit: built-in arches pass it, a broken arch fails it with
the rule's name, and the riscv example installed from its own folder is
found through its entry point and passes it too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from mmugather.arches import BUILTIN, GENERIC_SMP, arm64
from mmugather.core.arch import ArchRegistry
from mmugather.core.events import Collector, make_emit
from mmugather.core.hookspecs import hookimpl
from mmugather.core.run import run_arch
from mmugather.core.scenario import load_builtin

from mmugather.conformance import INVARIANT_SCENARIOS, RULES, ConformanceError, check_all
from mmugather.mutants import MUTANTS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "mmugather-riscv"


@pytest.mark.parametrize("spec", BUILTIN, ids=[s.name for s in BUILTIN])
def test_builtin_arches_conform(spec: object) -> None:
    assert check_all(spec) == []  # type: ignore[arg-type]


TUTORIAL = ROOT / "docs" / "tutorial-new-arch.md"


def tutorial_block(after: str, lang: str) -> str:
    """The first ``lang`` code block of the tutorial after the text ``after``."""
    text = TUTORIAL.read_text()
    rest = text[text.index(after):]
    start = rest.index(f"```{lang}\n") + len(lang) + 4
    return rest[start:rest.index("```", start)]


def tutorial_failure(after: str, arch: str) -> str:
    """The kit failure the tutorial shows after ``after``, as one line."""
    first, rest = tutorial_block(after, "").split("\n", 1)
    assert first == f"FAILED ::test_conformance[{arch}-invariants]"
    return " ".join(rest.split())


def _tutorial_broken_flush() -> Any:
    """The tutorial's broken ``tlb_flush()``, run from its own text."""
    namespace: dict[str, Any] = {"hookimpl": hookimpl}
    exec(tutorial_block("A failure names the rule it broke", "python"), namespace)
    return namespace["tlb_flush"]


#: The tutorial's broken arch: a flush of the range's first page only,
#: wrong on every arch (the other pages keep their TLB entries).
BROKEN = attrs.evolve(
    GENERIC_SMP,
    name="one-page",
    plugins=(SimpleNamespace(tlb_flush=_tutorial_broken_flush()),),
)


def test_broken_arch_fails_naming_the_rule() -> None:
    failures = check_all(BROKEN)
    # It is not registered, and the kit says so under its own rule; the
    # invariants fail with the report the tutorial shows.
    assert [f for f in failures if f.startswith("[registered] ")] == [
        "[registered] arch 'one-page' is not in the registry: unknown arch 'one-page' (known: "
        + ", ".join(s.name for s in BUILTIN) + ")"]
    assert [f for f in failures if not f.startswith("[registered] ")] == [
        tutorial_failure("Named `one-page`, it fails like this:", "one-page")]


def test_each_rule_raises_with_its_name() -> None:
    with pytest.raises(ConformanceError) as info:
        RULES["invariants"](BROKEN)
    assert info.value.rule == "page-reachable"
    assert str(info.value).startswith("[page-reachable] ")
    assert "mmugather run --arch one-page" in str(info.value)


ARM64_BUGS = sorted(n for n in MUTANTS if n.startswith("arm64-"))


@pytest.mark.parametrize("name", ARM64_BUGS)
def test_an_arm64_plugin_carrying_a_bug_fails_the_invariants_rule(name: str) -> None:
    """The arm64 plugin with one of its steps broken (the mutant's override
    appended to its plugins) fails ``invariants``, naming the checker's rule;
    the default scenario alone would not show the table-free bugs."""
    mutant = MUTANTS[name]
    buggy = attrs.evolve(arm64.SPEC, name=f"buggy-{name}", plugins=(*arm64.SPEC.plugins,
                                                                     mutant.plugin))
    with pytest.raises(ConformanceError) as info:
        RULES["invariants"](buggy)
    assert info.value.rule == mutant.rule
    text = str(info.value)
    assert text.startswith(f"[{mutant.rule}] ")
    assert "(invariants: " in text
    # Each comes out in the first scenario that exposes it.
    shown = [f"violations in scenario {sc!r}; mmugather run"
             + ("" if sc == "default" else f" {sc}") + f" --arch buggy-{name} shows them)"
             for sc in INVARIANT_SCENARIOS]
    assert any(text.endswith(end) for end in shown), text
    failures = check_all(buggy)
    assert [f for f in failures if not f.startswith("[registered] ")] == [text]


def test_invariants_runs_scenarios_that_free_tables_under_a_running_thread() -> None:
    assert INVARIANT_SCENARIOS[0] == "default"
    unhooks = Counter()
    for name in INVARIANT_SCENARIOS[1:]:
        events = Collector()
        run_arch(load_builtin(name), arm64.SPEC, extra_observers=[events])
        before_exit = events.events[:next(i for i, e in enumerate(events.events)
                                          if e["event"] == "mm_exit")]
        unhooks.update(e["level"] for e in before_exit if e["event"] == "table_unhook")
    assert unhooks["pte"] > 0


def test_registry_takes_extra_plugins_and_refuses_duplicates() -> None:
    module = SimpleNamespace(mmugather_add_arches=hookimpl(lambda: [BROKEN]))
    reg = ArchRegistry(entry_points=False, extra=[module])
    assert "one-page" in reg.names()
    assert reg.get("one-page").origin.startswith("plugin ")
    twice = SimpleNamespace(mmugather_add_arches=hookimpl(lambda: [GENERIC_SMP]))
    with pytest.raises(Exception, match="already provided"):
        ArchRegistry(entry_points=False, extra=[twice])


@pytest.fixture(scope="module")
def riscv_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example arch, installed with pip from its own folder (no
    dependencies: mmugather itself is the one under test)."""
    target = tmp_path_factory.mktemp("riscvsite")
    build = tmp_path_factory.mktemp("riscvsrc")
    src = build / "mmugather-riscv"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(src)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--target", str(target), str(src)],
        check=True, capture_output=True,
    )
    return target


def _run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_example_arch_is_listed_with_its_origin(riscv_site: Path) -> None:
    out = _run(riscv_site, sys.executable, "-m", "mmugather", "arches", "--json")
    assert out.returncode == 0, out.stderr
    import json

    arches = {a["name"]: a for a in json.loads(out.stdout)}
    for name in ("riscv", "riscv-v6.5"):
        assert arches[name]["origin"] == "entry point riscv (mmugather-riscv 0.1.0)"
        assert arches[name]["features"] == "SMP"


def test_example_arch_runs_and_passes_the_kit(riscv_site: Path, tmp_path: Path) -> None:
    run = _run(riscv_site, sys.executable, "-m", "mmugather", "run", "--arch", "riscv")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no invariant violations" in run.stdout
    kit = _run(riscv_site, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--mmu-arch", "riscv", cwd=tmp_path)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert f"{len(RULES)} passed" in kit.stdout


def test_example_riscv_v6_5_fails_the_kit(riscv_site: Path, tmp_path: Path) -> None:
    """riscv as v6.5 shipped it (PMD/PUD/P4D tables freed before the flush)
    fails the kit's invariants with the report the tutorial shows; the
    fixed riscv passes."""
    kit = _run(riscv_site, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--mmu-arch", "riscv-v6.5", cwd=tmp_path)
    assert kit.returncode == 1, kit.stdout + kit.stderr
    assert f"1 failed, {len(RULES) - 1} passed" in kit.stdout
    assert "FAILED ::test_conformance[riscv-v6.5-invariants] - " in kit.stdout
    assert "ConformanceError: [table-reachable] pmd table " in kit.stdout
    example = _example(riscv_site)
    assert [f for f in check_all(example.RISCV_V6_5) if not f.startswith("[registered] ")] == [
        tutorial_failure("The kit rejects it, naming the hardware fact it broke:", "riscv-v6.5")]
    assert [f for f in check_all(example.RISCV) if not f.startswith("[registered] ")] == []


def test_example_riscv_frees_upper_tables_as_v6_5_did(riscv_site: Path) -> None:
    """v6.5's pmd_free_tlb(): the range grows a page one level up and
    freed_tables is set, then the PMD table is freed at once (table_free
    before any tlb_flush); the PTE table is queued as a page.  Sv48: no
    p4d table, and the PUD table is freed at once too."""
    example = _example(riscv_site)
    from mmugather.core import MmStruct, make_machine, tlb_gather_mmu

    events = Collector()
    machine = make_machine(example.RISCV_V6_5, emit=make_emit(observers=[events]))
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.pte_free_tlb(1 << 40, 0x400000)
    tlb.pmd_free_tlb((1 << 40) + 1, 0)
    tlb.pud_free_tlb((1 << 40) + 2, 0)
    assert [(e["event"], e["tables"]) for e in events.named("table_free", "free_pages")] == [
        ("table_free", [(1 << 40) + 1]), ("table_free", [(1 << 40) + 2])]
    assert (tlb.freed_tables, tlb.cleared_pmds, tlb.cleared_puds, tlb.cleared_p4ds) == (
        True, True, True, True)
    assert (tlb.start, tlb.end) == (0, 0x401000)
    assert machine.geometry.folded == ("p4d",) and machine.geometry.task_size == 1 << 47
    tlb.tlb_finish_mmu()
    names = [e["event"] for e in events.events]
    assert names.index("tlb_flush") < names.index("free_pages")


def _example(site: Path) -> Any:
    sys.path.insert(0, str(site))
    try:
        import mmugather_riscv
    finally:
        sys.path.remove(str(site))
    return mmugather_riscv


def test_example_riscv_flushes_the_whole_mm(riscv_site: Path) -> None:
    """riscv's tlb_flush() is flush_tlb_mm() for one page as for many, with
    the contract's fields only and the generic whole-ASID invalidation."""
    sys.path.insert(0, str(riscv_site))
    try:
        import mmugather_riscv
    finally:
        sys.path.remove(str(riscv_site))
    from mmugather.core import MmStruct, make_machine, tlb_gather_mmu

    for pages in (1, 34):
        events = Collector()
        hw = Collector()
        machine = make_machine(mmugather_riscv.RISCV, emit=make_emit(observers=[events]),
                               hw_emit=make_emit(observers=[hw]))
        tlb = tlb_gather_mmu(machine, MmStruct())
        for k in range(pages):
            tlb.tlb_remove_tlb_entry(0x400000 + k * 4096)
        tlb.tlb_flush_mmu_tlbonly()
        (flush,) = events.named("tlb_flush")
        assert {k: v for k, v in flush.items() if k not in ("#", "event")} == {
            "scope": "mm", "exec": False, "huge": False, "freed_tables": False,
            "levels": ["pte"]}
        (inv,) = hw.named("tlb_invalidate")
        assert (inv["op"], inv["cpus"], inv["start"], inv["walk"]) == (
            "flush_tlb_mm", [0, 1], None, "asid")


def test_kit_rejects_unknown_arch(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mmu-arch", "nope"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode != 0
    assert "--mmu-arch: unknown arch 'nope'" in out.stderr


def test_the_suite_sees_the_builtin_arches_only() -> None:
    """Whatever arch plugins are installed (conftest.py): the tutorial's
    x86-64, installed with pip, once broke test_run_cli's tables."""
    from conftest import BUILTIN_ARCHES
    from mmugather.core.arch import registry

    assert registry().names() == list(BUILTIN_ARCHES)


def test_kit_from_a_project_root_runs_only_the_kit(tmp_path: Path) -> None:
    """``pytest --mmu-arch NAME`` in this repository's root: the nine rules,
    not the project's 1,000 tests (testpaths); paths named run beside it."""
    kit = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mmu-arch", "up"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert f"\n{len(RULES)} passed" in kit.stdout or f" {len(RULES)} passed" in kit.stdout
    assert "mmugather conformance kit: arch up; rules from " in kit.stdout
    mine = tmp_path / "test_mine.py"
    mine.write_text("def test_mine(mmu_arch):\n    assert mmu_arch.name == 'up'\n")
    both = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mmu-arch", "up",
         str(mine)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert both.returncode == 0, both.stdout + both.stderr
    assert f"{len(RULES) + 1} passed" in both.stdout


def test_kit_option_says_where_to_run_it(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert 'cd "$(mktemp -d)" && pytest --mmu-arch NAME' in " ".join(out.stdout.split())
