"""The historical-bug corpus: kernel bugs of the mmu_gather machinery, each
re-introduced as a named mutant (or, for one v6.5 still has, a fix left
out), with the commit that fixed it, the concurrent scenario that exposes
it and the arches where it does (``mmugather explore --corpus``,
``docs/explorer.md``).

Each entry runs twice per arch: with the bug (its mutant), which the
explorer must find as the entry's property, and as v6.5 + the seed patch
has it, which must find nothing within the scenario's bound.  The race v6.5
really has (1013af4f585f) is the other way round: v6.5 + the seed must find
it, and with the fix added (``core/fixes.py``) nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import attrs

from mmugather.core.explore import Config, Engine, explore, spec
from mmugather.core.explore.search import Result


@attrs.frozen
class Entry:
    """One historical bug."""

    #: a short name (``lost-write``)
    name: str
    #: the commit that fixed it ("" when the rule was never broken in a
    #: released kernel)
    commit: str
    #: that commit's title (or what the rule is)
    title: str
    #: the built-in concurrent scenario that exposes it
    scenario: str
    #: the arches it is run on: where it applies and the scenario shows it
    arches: tuple[str, ...]
    #: the property the bug breaks there
    prop: str
    #: the mutant that brings it back (None: v6.5 + the seed has it)
    mutant: str | None = None
    #: fixes newer than v6.5 the "with" run adds (the race v6.5 has: its fix)
    fixes: tuple[str, ...] = ()

    @property
    def v65_has_it(self) -> bool:
        """v6.5 + the seed has the bug itself (only its fix removes it)."""
        return self.mutant is None


CORPUS: tuple[Entry, ...] = (
    Entry("lost-write", "5df397dec7c4",
          "mm: delay page_remove_rmap() until after the TLB has been flushed",
          "dirty-writeback", ("generic-smp", "x86-64", "arm64"), "lost-write",
          mutant="rmap-before-flush"),
    Entry("free-before-flush", "",
          "the rule of asm-generic/tlb.h: unhook, invalidate the TLB, then free",
          "dontneed-race", ("generic-smp", "x86-64", "arm64"), "use-after-free",
          mutant="free-before-flush"),
    Entry("table-free-no-rcu", "5e5f6dc10546",
          "arm64: mm: enable HAVE_RCU_TABLE_FREE logic",
          "munmap-gup", ("arm64", "arm64-tlbirange"), "lockless-walk-freed-table",
          mutant="arm64-no-rcu-table-free"),
    Entry("dontneed-flush-miss", "99baac21e458",
          "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
          "dontneed-race", ("generic-smp", "x86-64", "arm64"), "stale-after-return",
          mutant="no-nested-flush"),
    Entry("reclaim-batched-flush", "3ea277194daa",
          "mm, mprotect: flush TLB if potentially racing with a parallel reclaim leaving "
          "stale TLB entries",
          "reclaim-munmap", ("x86-64",), "stale-after-return",
          mutant="no-flush-batched-pending"),
    Entry("nested-freed-tables", "7a30df49f63a",
          "mm: mmu_gather: remove __tlb_reset_range() for force flush",
          "munmap-nested", ("arm64", "powerpc-radix"), "walk-freed-table",
          mutant="nested-drops-freed-tables"),
    Entry("pfnmap-flush", "b67fbebd4cf9",
          "mmu_gather: Force tlb-flush VM_PFNMAP vmas (CVE-2022-39188)",
          "pfnmap-revoke", ("x86-64", "powerpc-radix"), "use-after-free",
          mutant="pfnmap-no-flush"),
    Entry("unshare-flush", "a4a118f2eead",
          "hugetlbfs: flush TLBs correctly after huge_pmd_unshare (CVE-2021-4002)",
          "hugetlb-unshare-munmap", ("x86-64", "arm64"), "stale-after-return",
          mutant="unshare-no-flush"),
    Entry("seed-rmap-dropped", "",
          "the seed patch's own rule: nothing frees the queue between tlb_discard_rmaps() "
          "and tlb_flush_rmaps()",
          "dirty-writeback", ("generic-smp", "x86-64"), "checker:rmap-dropped",
          mutant="free-before-flush-rmaps"),
    Entry("unshare-gup-fast", "1013af4f585f",
          "mm/hugetlb: fix huge_pmd_unshare() vs GUP-fast race (CVE-2025-38085)",
          "hugetlb-unshare-gup", ("arm64", "arm64-tlbirange"), "lockless-walk-freed-table",
          fixes=("1013af4f585f",)),
)


@attrs.frozen
class Run:
    """One exploration of an entry on one arch."""

    entry: Entry
    arch: str
    #: "mutant NAME", "v6.5 + seed" or "fix COMMIT"
    label: str
    #: must it find the entry's property?
    expect: bool
    result: Result
    #: wall time: the engine built and the search run, on one core
    seconds: float
    cpus: int
    #: the engine, for a counterexample's timeline
    engine: Engine = attrs.field(eq=False, repr=False)

    @property
    def found(self) -> str | None:
        ce = self.result.counterexample
        return ce.prop if ce is not None else None

    @property
    def ok(self) -> bool:
        return self.found == self.entry.prop if self.expect else self.found is None


def lookup(name: str) -> list[Entry]:
    """The entries a name or a commit id names (ValueError: none)."""
    hit = [e for e in CORPUS if name in (e.name, e.commit)]
    if not hit:
        names = ", ".join(e.name for e in CORPUS)
        raise ValueError(f"no corpus entry {name!r} (entries: {names}; or a commit id)")
    return hit


def configs(entry: Entry, arch: str) -> list[tuple[str, bool, Config]]:
    """(label, must it be found, configuration) of the two runs on ``arch``:
    the bug and v6.5 + the seed (for a race v6.5 has: v6.5 + the seed, then
    with its fix)."""
    sc = spec.load_builtin(entry.scenario)
    base = ("v6.5 + seed", entry.v65_has_it, Config(sc, arch))
    if entry.v65_has_it:
        fixed = Config(sc, arch, fixes=entry.fixes)
        return [base, (", ".join(f"fix {c}" for c in entry.fixes), False, fixed)]
    return [(f"mutant {entry.mutant}", True, Config(sc, arch, mutant=entry.mutant)), base]


def run(entries: tuple[Entry, ...] = CORPUS) -> Iterator[Run]:
    """Every run of ``entries``, in order, each searched exhaustively to its
    scenario's bound in this process."""
    for entry in entries:
        for arch in entry.arches:
            for label, expect, cfg in configs(entry, arch):
                t0 = time.perf_counter()
                eng = Engine(cfg)
                result = explore(cfg, engine=eng)
                seconds = time.perf_counter() - t0
                yield Run(entry, arch, label, expect, result, seconds, eng.nr_cpus, eng)
