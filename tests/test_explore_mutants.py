"""The mutants an interleaving shows: each found by the explorer, as the
property its record names, on its concurrent scenario, on the first arch
where it applies; the same scenario and arch without it find nothing."""

from __future__ import annotations

import pytest
from mmugather.core.arch import registry
from mmugather.core.explore import Config, explore, spec

from mmugather.mutants import MUTANTS

#: the order arches are tried in (up has one CPU: no concurrency)
ORDER = ("generic-smp", "x86-64", "arm64", "arm64-tlbirange", "powerpc-radix",
         "rcu-table-free", "page-size", "s390")
EXPLORED = sorted(n for n, m in MUTANTS.items() if m.explore)


def arch_for(name: str) -> str:
    return next(a for a in ORDER if MUTANTS[name].applies(registry().get(a)))


def test_the_explorers_mutants() -> None:
    assert EXPLORED == ["ceiling-next-end", "free-before-flush-rmaps",
                        "nested-drops-freed-tables", "no-flush-batched-pending",
                        "no-nested-flush", "no-pmd-revisit", "pfnmap-no-flush",
                        "unshare-no-flush"]
    assert {n: arch_for(n) for n in EXPLORED} == {
        "ceiling-next-end": "generic-smp", "free-before-flush-rmaps": "generic-smp",
        "nested-drops-freed-tables": "arm64", "no-flush-batched-pending": "x86-64",
        "no-nested-flush": "generic-smp", "no-pmd-revisit": "generic-smp",
        "pfnmap-no-flush": "x86-64", "unshare-no-flush": "x86-64"}


@pytest.mark.parametrize("name", EXPLORED)
def test_found_by_the_explorer_where_it_applies(name: str) -> None:
    m = MUTANTS[name]
    sc = spec.load_builtin(m.explore)
    arch = arch_for(name)
    assert explore(Config(sc, arch)).counterexample is None
    ce = explore(Config(sc, arch, mutant=name)).counterexample
    assert ce is not None and ce.prop == m.prop, ce


def test_each_explorer_property_reads_as_what_happened() -> None:
    """The messages of the new properties: a lost mapping, a PFN a driver
    took back, a table another process reuses."""
    ce = explore(Config(spec.load_builtin("munmap-ceiling"), "generic-smp",
                        mutant="ceiling-next-end")).counterexample
    assert ce.message == (
        "CPU 1 faults at 0x40002000, in a VMA still mapped that no unmap covered: its "
        "anonymous page 0x100001 lost its mapping (its PTE table is gone), so the fault maps "
        "a fresh page and the data is lost")
    ce = explore(Config(spec.load_builtin("pfnmap-revoke"), "x86-64",
                        mutant="pfnmap-no-flush")).counterexample
    assert ce.prop == "use-after-free" and ce.message.endswith(
        "the page is given back by its driver to the device's allocator")
    seq = [(s.actor, ev["event"]) for s in ce.steps for ev in s.events]
    # munmap() left the PFN map unflushed; the driver found it unlinked and
    # freed the PFN before munmap()'s flush reached any CPU.
    assert seq.index(("zap0", "vma_end")) < seq.index(("driver0", "driver_unmap")) < \
        seq.index(("driver0", "driver_free"))
    assert ("zap0", "tlb_invalidate") not in seq
    unmap = next(ev for s in ce.steps for ev in s.events if ev["event"] == "driver_unmap")
    assert unmap == {"found": False, "cleared": False, "cpus": [], "event": "driver_unmap"}
