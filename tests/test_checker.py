"""The invariant checker (``core/check.py``) and the mutants
(``mmugather.mutants``): the kernel's orderings pass, every broken one is
caught by its rule, and misuse of the rmap API that the seed's own code
silently tolerates is reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mmugather.arches import BUILTIN
from mmugather.core import scenario
from mmugather.core.arch import make_machine
from mmugather.core.check import RULES, Checker, Violation
from mmugather.core.events import (
    Collector,
    EventRows,
    PageRows,
    clear_event,
    make_emit,
    make_stream,
)
from mmugather.core.gather import MmuGather, tlb_gather_mmu
from mmugather.core.mm import Machine, MmStruct
from mmugather.core.run import run_arch
from mmugather.core.vma import Vma
from teardown_kit import ARCHES, BATCHING, MIB, PS, spec

from mmugather import cli
from mmugather.mutants import MUTANTS

#: the mutants the sequential checker catches (the others only an
#: interleaving shows: tests/test_explore_mutants.py)
CHECKED = sorted(name for name, m in MUTANTS.items() if m.rule)
DATA = Path(__file__).parent / "data" / "replay"
FLOWS = sorted(DATA.glob("*/flow_*.ops.jsonl"))


@pytest.fixture(scope="module")
def default() -> scenario.Scenario:
    return scenario.load_builtin("default")


# ----------------------------------------------------------------------
# The kernel's orderings pass; each mutant is caught where it is wrong
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_default_scenario_has_no_violation(arch: str, default: scenario.Scenario) -> None:
    run = run_arch(default, spec(arch))
    assert run.violation_counts == {}
    assert run.violations == []
    assert run.stats["violations"] == 0
    # It did run: PTEs were zapped and pages freed.
    assert run.stats["ptes_zapped"] > 4000 and run.stats["pages_freed"] > 4000


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", CHECKED)
def test_each_mutant_is_caught_exactly_where_it_is_wrong(name: str, arch: str) -> None:
    mutant = MUTANTS[name]
    assert mutant.rule in RULES
    run = run_arch(scenario.load_builtin(mutant.scenario), spec(arch), mutant=name)
    assert run.mutant_applies == mutant.applies(spec(arch))
    if mutant.applies(spec(arch)):
        assert run.violation_counts.get(mutant.rule, 0) > 0, run.violation_counts
        assert any(v.rule == mutant.rule for v in run.violations)
    else:
        assert run.violation_counts == {}


def test_mutants_apply_where_the_docs_say() -> None:
    applies = {name: [a for a in ARCHES if m.applies(spec(a))] for name, m in MUTANTS.items()}
    assert applies == {
        "rmap-before-flush": list(BATCHING),
        "free-before-flush": ["generic-smp", "up", "page-size", "rcu-table-free"],
        "flush-rmaps-after-unlock": list(BATCHING),
        "no-discard-rmaps": list(BATCHING),
        "direct-table-free": list(ARCHES),
        # x86-64 alone (tests/test_x86.py)
        "x86-pmd-stride": [],
        # arm64's own steps: none of the contract arches has them
        "arm64-last-level": [],
        "arm64-ttl-off": [],
        "arm64-range-round-down": [],
        "arm64-no-rcu-table-free": [],
        # the real arches' Kconfig: x86-64 alone batches reclaim's flushes
        # and merges VMAs without s390's IPTE; the leaf flush that keeps the
        # walk caches is arm64's and powerpc's; x86-64 and arm64 share PMDs
        "no-flush-batched-pending": [],
        "nested-drops-freed-tables": [],
        "pfnmap-no-flush": [],
        "unshare-no-flush": [],
        "no-nested-flush": list(ARCHES),
        "thp-rmap-after-unlock": list(ARCHES),
        "ceiling-next-end": list(ARCHES),
        "no-pmd-revisit": ["generic-smp", "up", "page-size", "rcu-table-free"],
        "free-before-flush-rmaps": list(BATCHING),
    }
    real = ("x86-64", "arm64", "arm64-tlbirange", "powerpc-radix")
    assert {name: [a for a in real if MUTANTS[name].applies(spec(a))]
            for name in ("no-flush-batched-pending", "nested-drops-freed-tables",
                         "pfnmap-no-flush", "unshare-no-flush")} == {
        "no-flush-batched-pending": ["x86-64"],
        "nested-drops-freed-tables": ["arm64", "arm64-tlbirange", "powerpc-radix"],
        "pfnmap-no-flush": ["x86-64", "powerpc-radix"],
        "unshare-no-flush": ["x86-64", "arm64", "arm64-tlbirange"],
    }
    arm64 = ["arm64", "arm64-tlbirange"]
    assert {name: [a for a in (*ARCHES, *arm64, "powerpc-radix") if m.applies(spec(a))]
            for name, m in MUTANTS.items() if name.startswith("arm64-")} == {
        name: arm64 for name in MUTANTS if name.startswith("arm64-")}


@pytest.mark.parametrize("name", CHECKED)
def test_violation_report_names_the_rule_and_has_a_trail(name: str) -> None:
    mutant = MUTANTS[name]
    # On generic-smp, or the first built-in arch the mutant is wrong on.
    arch = next(s for s in (spec("generic-smp"), *BUILTIN) if mutant.applies(s))
    run = run_arch(scenario.load_builtin(mutant.scenario), arch, mutant=name)
    v = next(v for v in run.violations if v.rule == MUTANTS[name].rule)
    text = v.render()
    lines = text.splitlines()
    assert lines[0].startswith(f"[{v.rule}] ")
    assert lines[1] == f"  rule: {RULES[v.rule]}"
    assert f"after event #{v.seq}" in lines[2]
    assert v.trail
    trail_lines = [ln for ln in lines[3:] if re.match(r"\s+#\d+\s+\w+", ln)]
    assert trail_lines
    # The trail ends with the event the violation followed.
    assert v.trail[-1]["#"] == v.seq
    assert v.trail[-1]["event"] in lines[-1]


def test_render_collapses_runs_of_one_event() -> None:
    trail = [{"event": "pte_clear", "addr": 0x1000 * k, "#": k} for k in range(1, 8)]
    trail.append({"event": "free_pages", "pages": [1, 2], "#": 8})
    text = Violation("free-before-flush", "page 0x1 freed", 8, trail).render()
    assert "... 5 more pte_clear ..." in text
    assert text.count("pte_clear") == 3  # first, the "more" line, last
    assert "free_pages" in text.splitlines()[-1]


# ----------------------------------------------------------------------
# Direct use of the API that the seed's code cannot see going wrong
# ----------------------------------------------------------------------


class _BulkCollector(Collector):
    """A collector that also takes the per-page events in bulk, so that a
    stream with it and the checker is an ``events.RowBus``."""

    def pte_clear_rows(self, rows: list[Any]) -> None:
        self.events.extend(clear_event(row) for row in rows)

    def rmap_remove_pages(self, pages: Any, vma_start: int) -> None:
        self.events.extend({"page": page, "event": "rmap_remove"} for page in pages)


class Caller:
    """Plays a caller of the gather by hand: the callers' events (ptl_lock,
    pte_clear...) around real engine calls, with the checker watching."""

    VMA = Vma(0x400000, 0x600000)
    TABLE = 0x7000
    #: the checker takes the per-page events in bulk, as in a run without a
    #: log (set for each test by the ``stream`` fixture)
    bulk = False

    def __init__(self, arch: str, *, fail_batches: int = 0) -> None:
        arch_spec = spec(arch)
        self.checker = Checker(arch_spec, PS)
        self.rows: PageRows | None
        if self.bulk:
            self.collector: Collector = _BulkCollector()
            self.emit, self.rows = make_stream(observers=[self.collector, self.checker])
        else:
            self.collector = Collector()
            self.emit = make_emit(observers=[self.collector, self.checker])
            self.rows = EventRows(self.emit)
        self.checker.emit = self.emit
        self.machine: Machine = make_machine(arch_spec, emit=self.emit, rows=self.rows)
        if fail_batches:
            self.machine.fail_alloc("page_batch", fail_batches)
        self.tlb: MmuGather = tlb_gather_mmu(self.machine, MmStruct())
        self.tlb.tlb_start_vma(self.VMA)
        self.next_page = 0x100000

    def start_table(self) -> None:
        """What zap_pte_range() does before its first PTE: the page size,
        tlb_discard_rmaps(), then the table's lock."""
        self.tlb.tlb_change_page_size(PS)
        self.tlb.tlb_discard_rmaps()
        self.lock()

    def lock(self, table: int = TABLE) -> None:
        self.emit("ptl_lock", table=table, vma_start=self.VMA.start)

    def unlock(self, table: int = TABLE) -> None:
        self.emit("ptl_unlock", table=table)

    def zap(self, n: int, at: int = 0x400000, dirty_file: bool = False) -> list[int]:
        """Clear n PTEs with rmap removal batched and queue their pages."""
        pages = []
        for k in range(n):
            addr = at + k * PS
            page = self.next_page
            self.next_page += 1
            self.tlb.tlb_remove_tlb_entry(addr)
            assert self.rows is not None
            self.rows.pte_clear((addr, page, "batched", dirty_file))
            assert not self.tlb.remove_page(page, PS, 0)
            pages.append(page)
        return pages

    def finish(self) -> None:
        self.tlb.tlb_end_vma(self.VMA)
        self.tlb.tlb_finish_mmu()

    @property
    def rules(self) -> list[str]:
        return [v.rule for v in self.checker.violations]

    def removed(self) -> list[int]:
        return [e["page"] for e in self.collector.events if e["event"] == "rmap_remove"]


@pytest.fixture(autouse=True, params=["events", "bulk"])
def stream(request: pytest.FixtureRequest) -> Any:
    """Every hand-played test twice: per-page events one by one, and in bulk."""
    Caller.bulk = request.param == "bulk"
    yield request.param
    Caller.bulk = False


@pytest.mark.parametrize("arch", BATCHING)
def test_the_kernel_order_for_one_table_passes(arch: str) -> None:
    """The baseline the misuse tests break: discard, clear and queue under
    the lock, tlb_flush_rmaps() before the unlock, flush later."""
    c = Caller(arch)
    c.start_table()
    pages = c.zap(3)
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == pages
    assert c.rules == []


@pytest.mark.parametrize("arch", BATCHING)
def test_dirty_file_rmaps_removed_before_the_flush(arch: str) -> None:
    """zap_pte_range() forces the TLB flush before tlb_flush_rmaps() when a
    dirty file page is queued; a caller that skips it lets writeback clean
    the page while a stale entry can still dirty it."""
    c = Caller(arch)
    c.start_table()
    pages = c.zap(2, dirty_file=True)
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == pages
    assert c.rules == ["dirty-rmap-before-flush"] * 2
    assert f"{pages[0]:#x}" in c.checker.violations[0].message


@pytest.mark.parametrize("arch", BATCHING)
def test_flush_rmaps_over_a_page_cleared_with_rmap_now(arch: str) -> None:
    """A page whose PTE was cleared with its rmap to go at once (not
    batched) has no removal pending: tlb_flush_rmaps() must not do it."""
    c = Caller(arch)
    c.start_table()
    assert c.rows is not None
    c.tlb.tlb_remove_tlb_entry(0x400000)
    c.rows.pte_clear((0x400000, 0x300000, "now", False))
    assert not c.tlb.remove_page(0x300000, PS, 0)
    pages = c.zap(2, at=0x401000)
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == [0x300000, *pages]
    assert c.rules == ["rmap-not-pending", "pending-after-finish"]
    assert "0x300000" in c.checker.violations[0].message


@pytest.mark.parametrize("arch", ARCHES)
def test_rmap_removed_at_once_after_the_unlock_is_rmap_outside_ptl(arch: str) -> None:
    """A rmap that goes at once (``rmap="now"``: hugetlb, a THP, every page
    on ``up`` and ``s390``) goes under the lock held when its entry was
    cleared: the first page here does, the second one's removal comes after
    the unlock."""
    c = Caller(arch)
    c.start_table()
    assert c.rows is not None
    for k, page in enumerate((0x300000, 0x300001)):
        addr = 0x400000 + k * PS
        c.tlb.tlb_remove_tlb_entry(addr)
        c.rows.pte_clear((addr, page, "now", False))
        if k:
            c.unlock()
        c.emit("rmap_remove_now", page=page)
        c.tlb.remove_page(page, PS, 0)
    c.finish()
    assert c.rules == ["rmap-outside-ptl"]
    assert c.checker.violations[0].message == (
        f"page 0x300001: rmap removed at once after the lock of table {c.TABLE:#x} that was "
        "held when its entry was cleared was dropped")


@pytest.mark.parametrize("arch", BATCHING)
def test_queue_freed_before_the_tlb_flush(arch: str) -> None:
    """tlb_batch_pages_flush() without tlb_flush_mmu_tlbonly() first: the
    pages go back while their TLB entries may still be live."""
    c = Caller(arch)
    c.start_table()
    pages = c.zap(3)
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.tlb.tlb_batch_pages_flush()
    c.finish()
    assert c.rules == ["free-before-flush"] * 3
    assert [f"{p:#x}" in v.message for p, v in zip(pages, c.checker.violations, strict=True)] \
        == [True] * 3


@pytest.mark.parametrize("arch", BATCHING)
def test_flush_between_discard_and_flush_rmaps_is_rmap_dropped(arch: str) -> None:
    """tlb_flush_mmu() frees the queue and discards the pending rmaps
    (tlb_batch_pages_flush() ends with tlb_discard_rmaps()): the following
    tlb_flush_rmaps() walks nothing and the freed pages never lose their
    rmap."""
    c = Caller(arch)
    c.start_table()
    pages = c.zap(3)
    c.tlb.tlb_flush_mmu()
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == []
    assert c.rules[0] == "rmap-dropped"
    assert c.checker.counts["rmap-dropped"] == len(pages)
    assert all(r in ("rmap-dropped", "pending-after-finish") for r in c.rules)
    first = c.checker.violations[0]
    assert f"{pages[0]:#x}" in first.message
    # The trail reaches back to the clear that handed the page over.
    assert any(e["event"] == "pte_clear" and e["page"] == pages[0] for e in first.trail)


@pytest.mark.parametrize("arch", BATCHING)
def test_hidden_flush_of_a_full_queue_is_rmap_dropped(arch: str) -> None:
    """tlb_remove_page_size() flushes on its own when the queue is full (here
    the 8-entry bundle, batch pages failing to allocate): called between the
    discard and tlb_flush_rmaps(), it frees pages whose rmap removal is
    pending."""
    c = Caller(arch, fail_batches=10)
    c.start_table()
    pages = c.zap(7)
    # An eighth page, its rmap already removed (as for a huge entry).
    other = 0x200000
    c.tlb.tlb_remove_tlb_entry(0x500000)
    c.emit("pte_clear", addr=0x500000, page=other, level="pte", rmap="now", dirty_file=False)
    c.emit("rmap_remove_now", page=other)
    c.tlb.tlb_remove_page_size(other, PS)
    freed = [p for e in c.collector.events if e["event"] == "free_pages" for p in e["pages"]]
    assert freed == [*pages, other]
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == []
    assert c.rules[0] == "rmap-dropped"
    assert c.checker.counts["rmap-dropped"] == len(pages)


def test_page_size_change_between_discard_and_flush_rmaps_is_rmap_dropped() -> None:
    """MMU_GATHER_PAGE_SIZE: tlb_change_page_size() to another size flushes
    the gather (tlb_flush_mmu()), pending rmaps included."""
    c = Caller("page-size")
    c.start_table()
    pages = c.zap(2)
    c.tlb.tlb_change_page_size(2 * MIB)
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == []
    assert c.rules[0] == "rmap-dropped"
    assert c.checker.counts["rmap-dropped"] == len(pages)


def test_page_size_change_is_harmless_where_it_does_not_flush() -> None:
    """The same calls on generic-smp (no MMU_GATHER_PAGE_SIZE): nothing is
    flushed early and every rmap is removed."""
    c = Caller("generic-smp")
    c.start_table()
    pages = c.zap(2)
    c.tlb.tlb_change_page_size(2 * MIB)
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == pages
    assert c.rules == []


@pytest.mark.parametrize("arch", ("generic-smp", "page-size"))
def test_flush_rmaps_over_a_queued_page_table_page_is_rmap_not_pending(arch: str) -> None:
    """On arches that queue page-table pages as pages (tlb_remove_table() is
    tlb_remove_page()), a tlb_flush_rmaps() after pte_free_tlb() and no
    discard walks the table as if it were a mapped page."""
    c = Caller(arch)
    c.tlb.tlb_change_page_size(PS)
    c.tlb.tlb_discard_rmaps()
    table = (1 << 40) + 5
    c.emit("table_unhook", table=table, level="pte", addr=0x400000)
    c.tlb.pte_free_tlb(table, 0x400000)
    c.lock()
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == [table]
    assert c.rules[0] == "rmap-not-pending"
    assert "page-table page" in c.checker.violations[0].message


@pytest.mark.parametrize("arch", BATCHING)
def test_flush_rmaps_over_a_thp_whose_rmap_is_gone_is_rmap_not_pending(arch: str) -> None:
    """zap_huge_pmd() removes the compound rmap at once and queues the head
    with tlb_remove_page_size(); a tlb_flush_rmaps() with no discard since
    walks the head again: a second rmap removal of the THP."""
    c = Caller(arch)
    head = 0x300000
    c.tlb.tlb_change_page_size(PS)
    c.tlb.tlb_discard_rmaps()
    c.lock(0x8000)
    c.tlb.tlb_change_page_size(2 * MIB)
    c.tlb.tlb_remove_pmd_tlb_entry(0x400000)
    c.emit("pte_clear", addr=0x400000, page=head, level="pmd", size=2 * MIB, rmap="now",
           dirty_file=False)
    c.emit("rmap_remove_now", page=head)
    c.unlock(0x8000)
    c.tlb.tlb_remove_page_size(head, 2 * MIB)
    # A PTE table next, without tlb_discard_rmaps().
    c.lock()
    c.tlb.tlb_flush_rmaps(c.VMA)
    c.unlock()
    c.finish()
    assert c.removed() == [head]
    assert c.rules[0] == "rmap-not-pending"
    assert f"{head:#x}" in c.checker.violations[0].message


class _VmaReporter:
    """The least of an address-space model: tells the checker which VMA
    tlb_flush_rmaps() was given for each page (as the callers do)."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    def gather_remove_rmaps(self, pages: Any, vma: Vma) -> None:
        self.checker.rmap_vma(pages, vma.start)

    def release_pages(self, pages: Any) -> None:
        pass

    def free_tables(self, tables: Any) -> None:
        pass


@pytest.mark.parametrize("arch", BATCHING)
def test_flush_rmaps_with_another_vma_is_rmap_wrong_vma(arch: str) -> None:
    """tlb_flush_rmaps(tlb, vma): "All of those pages must have been mapped
    by vma" (the seed's kernel-doc)."""
    c = Caller(arch)
    c.machine.model = _VmaReporter(c.checker)
    c.tlb = tlb_gather_mmu(c.machine, MmStruct())
    c.tlb.tlb_start_vma(c.VMA)
    c.start_table()
    pages = c.zap(2)
    other = Vma(0x600000, 0x800000)
    c.tlb.tlb_flush_rmaps(other)
    c.unlock()
    c.finish()
    assert c.removed() == pages
    assert c.rules == ["rmap-wrong-vma"] * len(pages)
    assert "0x600000" in c.checker.violations[0].message


# ----------------------------------------------------------------------
# replay --check
# ----------------------------------------------------------------------


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_replay_check_passes_on_the_kernel_flows(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(["replay", str(path), "--arch", path.parent.name, "--check"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""
    assert captured.out  # the effects are still written


def test_replay_check_reports_flush_rmaps_over_a_page_table_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        '{"op":"tlb_gather_mmu"}',
        '{"op":"tlb_start_vma","start":4194304,"end":6291456,"flags":[]}',
        '{"op":"tlb_change_page_size","size":4096}',
        '{"op":"tlb_discard_rmaps"}',
        '{"op":"tlb_remove_tlb_entry","addr":4194304}',
        '{"op":"__tlb_remove_page_size","page":5000}',
        '{"op":"tlb_flush_rmaps","start":4194304,"end":6291456,"flags":[]}',
        '{"op":"tlb_end_vma","start":4194304,"end":6291456,"flags":[]}',
        '{"op":"tlb_discard_rmaps"}',
        '{"op":"pte_free_tlb","table":777,"addr":4194304}',
        '{"op":"tlb_flush_rmaps","start":4194304,"end":6291456,"flags":[]}',
        '{"op":"tlb_finish_mmu"}',
    ]
    path = tmp_path / "bad.ops.jsonl"
    path.write_text("\n".join(lines) + "\n")
    status = cli.main(["replay", str(path), "--arch", "generic-smp", "--check"])
    err = capsys.readouterr().err
    assert status == 1
    assert "[rmap-not-pending] tlb_flush_rmaps() removes the rmap of page-table page 0x309" \
        in err  # table 777
    # Without the second tlb_flush_rmaps() the same calls pass.
    path.write_text("\n".join(lines[:10] + lines[11:]) + "\n")
    assert cli.main(["replay", str(path), "--arch", "generic-smp", "--check"]) == 0
    assert capsys.readouterr().err == ""
