"""The mutants (``mmugather.mutants``): apart from the correct code, one
step each, registered by name, refused where their step is not run, and
listed by ``mmugather mutants``.  That each is caught by the checker where
it is wrong is ``tests/test_checker.py``'s."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from mmugather.core import strategies
from mmugather.core.arch import make_machine, registry
from mmugather.core.callers import PARTS
from mmugather.core.callers.memory import LegacyMemory, Memory
from mmugather.core.callers.memory_v6_9 import FolioBatchMemory
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather, tlb_gather_mmu
from mmugather.core.mm import MmStruct
from mmugather.core.run import run_arch
from mmugather.core.scenario import load_builtin
from teardown_kit import PS, rig

from mmugather import cli, mutants
from mmugather.mutants import MUTANTS, Mutant
from mmugather.mutants.base import always, batching

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = strategies.names()


def test_the_correct_code_names_no_mutant() -> None:
    """The engine, the callers, the plugins and the arches know no mutant.

    One checker rule has a mutant's name (``free-before-flush``, the rule the
    mutant of that name trips); the rule names, as the checker's string
    literals, are not mutant names."""
    from mmugather.core.check import RULES

    rules = re.compile("|".join(f'"{re.escape(rule)}"' for rule in RULES))
    names = {name: re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])") for name in MUTANTS}
    found = []
    for top in ("core", "plugins", "arches"):
        for path in sorted((ROOT / top).rglob("*.py")):
            text = rules.sub('""', path.read_text())
            found += [f"{path.relative_to(ROOT)}: {n}" for n, pat in names.items()
                      if pat.search(text)]
    assert not found
    assert names["no-discard-rmaps"].search("x = 'no-discard-rmaps'")


def test_one_module_per_mutant_each_in_the_registry() -> None:
    # base: the record; _arm64: what the arm64 mutants share
    modules = {p.stem for p in (ROOT / "src/mmugather/mutants").glob("*.py")} - {
        "__init__", "base", "_arm64"}
    assert {m.__name__.rsplit(".", 1)[1] for m in mutants.MODULES} == modules
    for module in mutants.MODULES:
        assert module.MUTANT.name == module.__name__.rsplit(".", 1)[1].replace("_", "-")
    assert list(MUTANTS) == [m.MUTANT.name for m in mutants.MODULES]
    with pytest.raises(ValueError, match=r"^unknown mutant 'nope' \(known: rmap-before-flush, "):
        mutants.get("nope")


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_is_a_plugin_or_overrides_caller_steps(name: str) -> None:
    m = MUTANTS[name]
    kinds = [m.plugin is not None, bool(m.callers), m.gather is not None]
    assert kinds.count(True) == 1
    for part, override in m.callers.items():
        # A subclass of the part's class that adds nothing but its steps.
        assert issubclass(override, PARTS[part]) and override.__slots__ == ()
        assert m.changes
    for part, step in m.steps():
        assert callable(getattr(PARTS[part], step)), f"{part} has no step {step}"
        assert step != "zap_pte_range", "a mutant overrides a step, not the whole function"
    assert m.breaks and m.where


def test_steps_and_fixing_commits() -> None:
    assert {n: m.steps() for n, m in MUTANTS.items() if m.callers} == {
        "rmap-before-flush": [("memory", "zap_batch_rmap"), ("memory", "zap_pte_end")],
        "flush-rmaps-after-unlock": [("memory", "zap_pte_end")],
        "no-discard-rmaps": [("memory", "zap_pte_start")],
        "thp-rmap-after-unlock": [("huge_memory", "zap_huge_pmd_folio")],
        "ceiling-next-end": [("mmap", "unmap_region_bounds")],
        "no-pmd-revisit": [("memory", "zap_pmd_resume")],
        "free-before-flush-rmaps": [("memory", "zap_pte_end")],
        "unshare-no-flush": [("hugetlb", "huge_pmd_unshare_flush")],
    }
    assert {n: [k for k, v in vars(m.gather).items() if callable(v)]
            for n, m in MUTANTS.items() if m.gather} == {
        "no-nested-flush": ["mm_tlb_flush_nested"],
        "nested-drops-freed-tables": ["tlb_finish_nested"],
    }
    assert {n: m.fixed_by.split()[0] for n, m in MUTANTS.items() if m.fixed_by} == {
        "rmap-before-flush": "5df397dec7c4",
        "arm64-last-level": "7a30df49f63a",
        "arm64-ttl-off": "52218fcd61cb",
        "arm64-range-round-down": "67a902a",
        "arm64-no-rcu-table-free": "5e5f6dc10546",
        "no-flush-batched-pending": "3ea277194daa",
        "no-nested-flush": "99baac21e458",
        "nested-drops-freed-tables": "7a30df49f63a",
        "pfnmap-no-flush": "b67fbebd4cf9",
        "unshare-no-flush": "a4a118f2eead",
    }


def test_each_mutant_is_caught_by_someone() -> None:
    """By the checker (a rule, on a run scenario), or by the explorer (a
    property, on a concurrent scenario), or both; each scenario exists."""
    from mmugather.core.check import RULES
    from mmugather.core.explore import spec as explore_spec

    for m in MUTANTS.values():
        assert m.rule or m.explore, m.name
        assert bool(m.rule) == bool(m.scenario), m.name
        assert bool(m.explore) == bool(m.prop), m.name
        if m.rule:
            assert m.rule in RULES and load_builtin(m.scenario)
        if m.explore:
            assert explore_spec.load_builtin(m.explore)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_a_caller_mutant_needs_the_caller_whose_step_it_overrides(
    name: str, strategy: str
) -> None:
    m = MUTANTS[name]
    strat = strategies.get(strategy)
    # Refused where the strategy's own class replaces the step: the other
    # zap_pte_range()s replace the seed's prologue and epilogue.
    own = {"seed": Memory, "legacy": LegacyMemory, "folio-batch": FolioBatchMemory}[strat.caller]
    replaced = [step for part, step in m.steps()
                if part == "memory" and getattr(own, step) is not getattr(Memory, step)]
    if replaced:
        with pytest.raises(ValueError) as exc:
            mutants.caller_classes(m, strat)
        assert str(exc.value) == (
            f"mutant {name!r} changes {m.changes}; strategy {strategy!r} has another caller"
        )
        return
    classes = mutants.caller_classes(m, strat)
    for part, override in m.callers.items():
        assert classes[part].__mro__[1] is override
        for _part, step in m.steps():
            assert getattr(classes[part], step) is getattr(override, step)


class NoRevisit(Memory):
    """A step no strategy overrides: zap_pmd_range() going on to the next
    PMD after a full queue ended a PTE table early (dropping the kernel's
    ``pmd--``)."""

    __slots__ = ()

    def zap_pmd_resume(self, addr: int, nxt: int) -> int:
        return nxt


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_step_override_composes_with_every_strategy(strategy: str) -> None:
    """A caller mutant goes in front of whatever class the strategy uses:
    with the step overridden the PTEs after the queue-full break are never
    cleared, under every strategy's zap_pte_range()."""
    m = Mutant(name="no-revisit", description="", rule="", breaks="", applies=always,
               callers={"memory": NoRevisit}, changes="zap_pmd_range()")
    n = 20 * 512
    start = 0x10000000
    vmas = [{"start": start, "end": start + n * PS, "populate": [{"pages": n}]}]
    strat = strategies.get(strategy)
    clears = {}
    with strategies.selected(strategy):
        for label, mutant in (("correct", None), ("mutant", m)):
            r = rig("generic-smp", vmas, classes=mutants.caller_classes(mutant, strat))
            r.callers.mmap.munmap(start, start + n * PS)
            clears[label] = len(r.collector.named("pte_clear"))
            assert type(r.callers.memory).__mro__[1 if mutant else 0] is (
                NoRevisit if mutant else mutants.caller_classes(None, strat)["memory"])
    assert clears["correct"] == n
    assert 0 < n - clears["mutant"] < 512


class DropsFreedTables(MmuGather):
    """tlb_finish_mmu()'s nested branch without ``freed_tables``."""

    __slots__ = ()

    def tlb_finish_nested(self) -> None:
        self.fullmm = True
        self.reset_range()


def _nested_flushes(gather_class: type[MmuGather] | None) -> list[dict[str, Any]]:
    """The tlb_flush events of a nested gather that cleared no entry."""
    collector = Collector()
    machine = make_machine("generic-smp", emit=make_emit(observers=[collector]))
    machine.gather_class = gather_class
    tlb = tlb_gather_mmu(machine, MmStruct())
    assert type(tlb) is (gather_class or MmuGather)
    tlb.tlb_finish_mmu(nested=True)
    flushes: list[dict[str, Any]] = collector.named("tlb_flush")
    return flushes


def test_a_gather_step_override() -> None:
    """A mutant of an engine step is a subclass of MmuGather the machine
    makes instead (``Machine.gather_class``); here the nested branch of
    tlb_finish_mmu(): without freed_tables nothing is left to flush."""
    [flush] = _nested_flushes(None)
    assert flush["scope"] == "mm" and flush["freed_tables"] is True
    assert _nested_flushes(DropsFreedTables) == []


def test_run_arch_makes_a_gather_mutants_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Mutant(name="drops-freed-tables", description="", rule="", breaks="", applies=always,
               gather=DropsFreedTables)
    monkeypatch.setitem(MUTANTS, m.name, m)
    made: list[type] = []
    real = MmuGather._gather_mmu

    def spy(self: MmuGather) -> None:
        made.append(type(self))
        real(self)

    monkeypatch.setattr(MmuGather, "_gather_mmu", spy)
    run = run_arch(load_builtin("order0-anon"), registry().get("up"), mutant=m.name)
    assert run.mutant == m.name and run.stats["gathers"] == 2
    assert made == [DropsFreedTables, DropsFreedTables]


def test_mutants_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mutants"]) == 0
    out = capsys.readouterr().out
    assert "    applies: where rmap removal is batched (CONFIG_SMP with gathering): " \
           "generic-smp, page-size, rcu-table-free, x86-64, arm64, arm64-tlbirange, " \
           "powerpc-radix\n" in out
    assert "    fixed by: 5df397dec7c4 (\"mm: delay page_remove_rmap() until after the TLB " \
           "has been flushed\", v6.2)\n" in out
    assert "    overrides: caller step: Memory.zap_pte_start()\n" in out
    assert "    overrides: engine plugin: hook tlb_remove_table\n" in out
    assert cli.main(["mutants", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in doc] == list(MUTANTS)
    by_name = {d["name"]: d for d in doc}
    assert set(by_name["free-before-flush"]) == {"name", "description", "rule", "breaks",
                                                 "where", "arches", "fixed_by", "scenario",
                                                 "explore", "property", "overrides"}
    assert (by_name["no-nested-flush"]["rule"], by_name["no-nested-flush"]["scenario"],
            by_name["no-nested-flush"]["explore"], by_name["no-nested-flush"]["property"]) == (
        "", None, "dontneed-race", "stale-after-return")
    assert by_name["free-before-flush"]["fixed_by"] is None
    assert by_name["direct-table-free"]["arches"] == registry().names()
    assert by_name["no-discard-rmaps"]["arches"] == [
        s.name for s in registry() if batching(s)
    ]
    assert all(re.match(r"(engine plugin|caller step|engine step): ", d["overrides"])
               for d in doc)


CHECKER_MD = Path(__file__).resolve().parent.parent / "docs" / "checker.md"


def _docs_table() -> list[list[str]]:
    """The rows of docs/checker.md's mutants table, as cells."""
    text = CHECKER_MD.read_text()
    table = text[text.index("<!-- mutants:start -->"):text.index("<!-- mutants:end -->")]
    rows = []
    for line in table.splitlines()[3:]:
        cells = [c.strip().replace("\\|", "|")
                 for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append(cells)
    return rows


def test_the_mutants_table_in_the_docs_is_the_registry() -> None:
    """docs/checker.md lists every mutant, in registry order, with what it
    breaks, its rule, the built-in arches it applies to, its scenario and
    its fixing commit as the records say (``mmugather mutants --json``,
    the built-in arches only)."""
    from mmugather.arches import BUILTIN

    from mmugather.cli.listing import MARKDOWN_COLUMNS, markdown_table

    records = [m.as_json(BUILTIN) for m in MUTANTS.values()]
    rows = _docs_table()
    assert [c[0].strip("`") for c in rows] == list(MUTANTS)
    keys = [key for _, key in MARKDOWN_COLUMNS]
    for cells, record in zip(rows, records, strict=True):
        doc = dict(zip(keys, cells, strict=True))
        assert doc["breaks"] == record["breaks"]
        assert doc["rule"] == f"`{record['rule']}`"
        assert doc["arches"] == (", ".join(record["arches"]) or "no arch")
        assert doc["scenario"] == f"`{record['scenario']}`"
        assert doc["fixed_by"] == (record["fixed_by"] or "no single commit")
    # And it is what the command prints, byte for byte.
    text = CHECKER_MD.read_text()
    shown = text[text.index("<!-- mutants:start -->\n") + 23:text.index("\n<!-- mutants:end")]
    assert shown == markdown_table(records)


def test_mutants_command_prints_the_docs_table(capsys: pytest.CaptureFixture[str]) -> None:
    from mmugather.cli.listing import markdown_table

    assert cli.main(["mutants", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out == markdown_table([m.as_json(registry()) for m in MUTANTS.values()]) + "\n"
    assert out.splitlines()[0] == ("| mutant | what it breaks | overrides | caught by | "
                                   "applies to | scenario | fixed by |")


def test_every_rule_is_documented_in_the_checker_page() -> None:
    from mmugather.core.check import RULES

    text = CHECKER_MD.read_text()
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", text, re.MULTILINE))
    assert set(RULES) <= documented, sorted(set(RULES) - documented)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(n for n, m in MUTANTS.items() if m.rule))
def test_every_mutant_is_caught_under_every_strategy_that_takes_it(
    name: str, strategy: str
) -> None:
    """The engine mutants work with every strategy (``ranges`` with a page
    remover that frees at once gathers no ranges: its hooks leave the rmap
    pointer's in charge), the caller mutants with those that run their
    step; each the checker catches trips its rule."""
    m = MUTANTS[name]
    try:
        mutants.check_strategy(m, strategies.get(strategy))
    except ValueError:
        return  # refused: test_a_caller_mutant_needs_the_caller_whose_step_it_overrides
    # On generic-smp, or the first built-in arch the mutant is wrong on.
    arch = next(s for s in (registry().get("generic-smp"), *registry()) if m.applies(s))
    run = run_arch(load_builtin(m.scenario), arch, mutant=name, strategy=strategy)
    assert run.violation_counts.get(m.rule, 0) > 0, run.violation_counts
