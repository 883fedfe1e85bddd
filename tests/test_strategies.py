"""Rmap-removal strategies (docs/strategies.md): what each walks and pays,
that the checker passes them all, and ``mmugather compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mmugather.core import strategies
from mmugather.core.arch import make_machine, registry
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import tlb_gather_mmu
from mmugather.core.mm import MmStruct
from mmugather.core.run import run_arch
from mmugather.core.scenario import builtin_names, load_builtin, parse, resolve
from mmugather.core.vma import Vma

from mmugather.cli import main

ARCHES = ("generic-smp", "up", "s390", "page-size", "rcu-table-free")
BATCHING = ("generic-smp", "page-size", "rcu-table-free")
STRATEGIES = tuple(strategies.names())
#: Every built-in scenario but the 1M-page benchmark, for the slow matrices.
SMALL = tuple(n for n in builtin_names() if n != "exit-4g")
NEW = ("order0-anon", "mthp-64k", "thp-pte", "dirty-shared", "munmap-large")


def stats(scenario: str, strategy: str, arch: str = "generic-smp") -> dict[str, int]:
    run = run_arch(resolve(scenario), registry().get(arch), strategy=strategy)
    assert not run.violation_counts
    return run.stats


class PointerWalk:
    """Counts the pages queued since the last ``tlb_discard_rmaps()`` (the
    pointer moved: ``rmap_pend``) and checks each walk against it."""

    def __init__(self) -> None:
        self.pending = 0
        self.walks = 0
        self.walked = 0
        self.wrong: list[tuple[int, int]] = []

    def __call__(self, logger: Any, method: str, ev: Any) -> Any:
        name = ev["event"]
        if name == "page_queued":
            self.pending += 1
        elif name == "rmap_pend":
            self.pending = 0
        elif name == "rmap_walk":
            self.walks += 1
            self.walked += ev["walked"]
            if ev["walked"] != self.pending or ev["removed"] != self.pending:
                self.wrong.append((ev["walked"], self.pending))
        return ev


class LegacyWalk:
    """The v6.5 walk, from the detail events: with delayed rmaps pending,
    every entry of the bundle (batch 0) and of the active batch; else none."""

    def __init__(self) -> None:
        self.fill: dict[int, int] = {}
        self.active = 0
        self.delayed = 0
        self.walks = 0
        self.forced = 0
        self.wrong: list[tuple[int, int, int, int]] = []

    def __call__(self, logger: Any, method: str, ev: Any) -> Any:
        name = ev["event"]
        if name == "page_queued":
            self.fill[ev["batch"]] = ev["nr"]
            self.active = ev["batch"]
        elif name == "batch_next":
            self.active = ev["batch"]
            self.fill[self.active] = 0
        elif name == "free_pages":
            self.fill.clear()
            self.active = 0
        elif name == "pte_clear" and ev.get("rmap") == "batched":
            self.delayed += 1
        elif name == "force_flush":
            self.forced += 1
        elif name == "rmap_walk":
            self.walks += 1
            expect = 0
            if self.delayed:
                expect = self.fill.get(0, 0) + (self.fill.get(self.active, 0) if self.active else 0)
            if (ev["walked"], ev["removed"]) != (expect, self.delayed):
                self.wrong.append((ev["walked"], expect, ev["removed"], self.delayed))
            self.delayed = 0
        return ev


# ---------------------------------------------------------------------------
# What tlb_flush_rmaps() walks
# ---------------------------------------------------------------------------


# The 1M-page scenario once (on generic-smp) is enough; every other
# built-in scenario on every batching arch.
POINTER_CASES = [("exit-4g", "generic-smp")] + [
    (scenario, arch) for scenario in builtin_names() if scenario != "exit-4g" for arch in BATCHING
]


@pytest.mark.parametrize(("scenario", "arch"), POINTER_CASES)
def test_pointer_walks_only_what_was_queued_since_the_last_discard(
    scenario: str, arch: str
) -> None:
    """Under ``pointer`` every walk visits exactly the pages queued since the
    last discard or flush, never the prefix whose rmaps are already gone."""
    watch = PointerWalk()
    run_arch(resolve(scenario), registry().get(arch), strategy="pointer", check=False,
             stats=False, detail=True, extra_observers=[watch])
    assert watch.walks and not watch.wrong, watch.wrong[:5]


@pytest.mark.parametrize("strategy", ["legacy", "folio-batch"])
@pytest.mark.parametrize("arch", BATCHING)
@pytest.mark.parametrize("scenario", SMALL)
def test_legacy_walks_the_bundle_and_the_active_batch(
    scenario: str, arch: str, strategy: str
) -> None:
    """Under ``legacy`` (and upstream's ``folio-batch``, which kept it) a
    walk happens only with a forced flush, and visits every entry of
    ``tlb->local`` and ``tlb->active`` when delayed rmaps are pending
    (removing the flagged ones), nothing otherwise."""
    watch = LegacyWalk()
    run_arch(resolve(scenario), registry().get(arch), strategy=strategy, check=False,
             stats=False, detail=True, extra_observers=[watch])
    assert not watch.wrong, watch.wrong[:5]
    assert watch.walks == watch.forced


def test_legacy_refuses_a_new_batch_while_delayed_rmaps_are_pending() -> None:
    """dirty-shared: the queue is deep when the shared file's first dirty
    page is delayed, so its table fills the active batch and ``legacy`` must
    flush there (queue full); the seed patch just takes another batch page."""
    pointer, legacy = stats("dirty-shared", "pointer"), stats("dirty-shared", "legacy")
    assert pointer["forced_full"] == 0 and legacy["forced_full"] == 1
    assert legacy["forced_flushes"] == pointer["forced_flushes"] + 1
    assert legacy["batch_pages"] < pointer["batch_pages"]
    # Only the dirty file pages wait for tlb_flush_rmaps(); the rest go at once.
    assert legacy["rmap_batched"] == 2048 and legacy["rmap_now"] == 3072


# ---------------------------------------------------------------------------
# ranges
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["mthp-64k", "thp-pte", "munmap-large"])
def test_ranges_makes_fewer_rmap_calls_for_large_folios(scenario: str) -> None:
    pointer, ranges = stats(scenario, "pointer"), stats(scenario, "ranges")
    assert ranges["rmap_batched"] == pointer["rmap_batched"]  # the same pages lose their rmap
    assert ranges["rmap_calls"] < pointer["rmap_calls"] / 1.8
    assert ranges["mapcount_atomics"] < pointer["mapcount_atomics"]
    assert ranges["folio_puts"] < pointer["folio_puts"]
    assert ranges["pages_freed"] == pointer["pages_freed"]
    assert ranges["folios_freed"] == pointer["folios_freed"]


def test_ranges_no_spurious_deferred_split_for_whole_thps() -> None:
    """PTE-mapped THPs unmapped whole: page by page (pointer, legacy) each is
    queued for a deferred split the same zap makes pointless; one
    folio_remove_rmap_range() per folio queues none."""
    data = {
        "name": "thp-pte-4",
        "vma": [{"start": 0x40000000, "end": 0x40800000, "kind": "anon",
                 "populate": [{"pages": 2048, "folio_order": "pmd", "dirty": True}]}],
        "op": [{"kind": "exit"}],
    }
    scenario = parse(data, "<thp-pte-4>")
    spec = registry().get("generic-smp")
    got = {s: run_arch(scenario, spec, strategy=s).stats for s in STRATEGIES}
    assert got["pointer"]["deferred_split_spurious"] == 4
    assert got["legacy"]["deferred_split_spurious"] == 4
    assert got["ranges"]["deferred_split"] == 0
    assert got["ranges"]["rmap_calls"] == 4
    assert got["folio-batch"]["deferred_split"] == 0
    assert got["folio-batch"]["rmap_calls"] == 4


@pytest.mark.parametrize("scenario", ["thp-pte", "mthp-64k", "munmap-large"])
def test_ranges_spurious_splits_only_where_a_folio_straddles_a_batch(scenario: str) -> None:
    """The series keeps the last range of a full batch one page long, so a
    folio whose pages are queued across a batch boundary is removed in two
    ranges: the first leaves it partly mapped (a deferred split), the second
    unmaps it. Every spurious split of these scenarios is that case."""
    collector = Collector()
    run = run_arch(resolve(scenario), registry().get("generic-smp"), strategy="ranges",
                   detail=True, extra_observers=[collector])
    seen: dict[int, set[int]] = {}
    for ev in collector.named("page_queued"):
        seen.setdefault(ev["page"], set()).add(ev["batch"])
    splits = [ev["folio"] for ev in collector.named("deferred_split")]
    assert run.stats["deferred_split_spurious"] == len(splits) > 0
    for folio in splits:
        parts = [e for e in collector.named("rmap_remove_range") if e["folio"] == folio]
        assert len(parts) == 2 and parts[0]["nr"] == 1, (folio, parts)
        batches = {b for p in range(parts[0]["first"], parts[1]["first"] + 1) for b in seen[p]}
        assert len(batches) == 2, (folio, batches)


def test_ranges_holds_pfn_ranges_and_needs_twice_the_batch_pages_for_order0() -> None:
    """A batch page holds 255 pfn ranges instead of 510 pointers, and
    MAX_GATHER_BATCH_COUNT becomes 10000 / 255 = 39: order-0 pages need about
    twice the batch pages, for a queue as long (9,953 vs 9,698 entries)."""
    machine = make_machine("generic-smp", strategy="ranges")
    tlb = tlb_gather_mmu(machine, MmStruct())
    assert tlb.geometry.max_gather_batch == 255
    assert tlb.geometry.max_gather_batch_count == 39
    assert tlb.geometry.queue_capacity == 9953
    assert machine.geometry.max_gather_batch == 510  # the arch's own is unchanged
    pointer, ranges = stats("order0-anon", "pointer"), stats("order0-anon", "ranges")
    assert ranges["batch_pages"] > 1.8 * pointer["batch_pages"]
    assert ranges["rmap_calls"] == pointer["rmap_calls"]


def test_munmap_beyond_the_queue_forces_flushes_where_the_queue_fills() -> None:
    pointer, ranges = stats("munmap-large", "pointer"), stats("munmap-large", "ranges")
    # 20,480 order-0 pages: full at 9,698 and 19,396 pages (pointer), 9,953
    # and 19,906 (ranges); 64 KiB folios: twice more for pointer, never for
    # ranges, whose 1,280 ranges fit.
    assert pointer["forced_full"] == 4
    assert ranges["forced_full"] == 2


def test_ranges_merges_only_contiguous_pages_of_one_folio() -> None:
    """Without a folio model every page is its own folio: nothing merges."""
    collector = Collector()
    emit = make_emit(observers=[collector])
    machine = make_machine("generic-smp", emit=emit, strategy="ranges")
    tlb = tlb_gather_mmu(machine, MmStruct())
    vma = Vma(0x400000, 0x600000)
    tlb.tlb_discard_rmaps()
    tlb.tlb_remove_tlb_entry(0x400000)
    for page in (10, 11, 12):
        assert not tlb.remove_page(page, 4096, 0)
    tlb.tlb_flush_rmaps(vma)
    assert [e["nr"] for e in collector.named("rmap_remove_range")] == [1, 1, 1]


# ---------------------------------------------------------------------------
# Every strategy, every arch, the checker
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("arch", ARCHES)
def test_every_strategy_passes_the_checker(strategy: str, arch: str) -> None:
    spec = registry().get(arch)
    for scenario in SMALL:
        run = run_arch(resolve(scenario), spec, strategy=strategy)
        assert not run.violation_counts, (scenario, run.violation_counts, [
            v.render() for v in run.violations[:2]])
        assert run.strategy == strategy


@pytest.mark.parametrize("arch", ["up", "s390"])
@pytest.mark.parametrize("scenario", [*NEW, "default"])
def test_strategies_are_the_same_where_rmaps_are_not_batched(arch: str, scenario: str) -> None:
    """``up`` and ``s390`` do not batch rmap removal: every strategy that
    only changes the batching emits the very same events there (not
    ``folio-batch``, whose PTE batching is in every configuration's
    ``zap_pte_range()``), except for ``ranges``' own ``mm/rmap.c``: its
    ``page_remove_rmap()`` is ``folio_remove_rmap_range(folio, page, 1)``,
    which updates ``_nr_pages_mapped`` on every call and queues any large
    anonymous folio left partly mapped."""
    spec = registry().get(arch)
    streams = {}
    for strategy in STRATEGIES:
        if not strategies.get(strategy).batched_only:
            continue
        collector = Collector()
        run_arch(resolve(scenario), spec, strategy=strategy, detail=True,
                 extra_observers=[collector])
        streams[strategy] = collector.events
    assert streams["legacy"] == streams["pointer"]
    rmap_c = ("large_folio_rmap", "deferred_split")
    assert [e for e in streams["ranges"] if e["event"] not in rmap_c] \
        == [e for e in streams["pointer"] if e["event"] not in rmap_c]


@pytest.mark.parametrize("arch", ["up", "s390"])
def test_ranges_page_remove_rmap_queues_any_large_folio(arch: str) -> None:
    """Where rmaps go at once, a 64 KiB anonymous folio unmapped page by page
    goes on the deferred split queue under the series' rule (any large
    folio), spuriously, since the same zap unmaps the rest; v6.5's rule
    (``pointer``) queues only PMD-sized folios."""
    spec = registry().get(arch)
    pointer = run_arch(resolve("mthp-64k"), spec, strategy="pointer").stats
    ranges = run_arch(resolve("mthp-64k"), spec, strategy="ranges").stats
    assert pointer["deferred_split"] == 0
    assert ranges["deferred_split"] == ranges["deferred_split_spurious"] > 0
    assert ranges["rmap_calls"] == pointer["rmap_calls"]
    assert ranges["mapcount_atomics"] == pointer["mapcount_atomics"]


def test_pointer_is_the_default_and_selected_changes_it() -> None:
    scenario = load_builtin("thp-pte")
    spec = registry().get("generic-smp")
    assert run_arch(scenario, spec).strategy == "pointer"
    with strategies.selected("ranges"):
        run = run_arch(scenario, spec)
    assert run.strategy == "ranges" and run.stats["rmap_calls"] < 100
    with pytest.raises(ValueError, match="unknown strategy"):
        strategies.get("nope")
    with pytest.raises(ValueError, match="another caller"):
        run_arch(scenario, spec, strategy="legacy", mutant="rmap-before-flush")


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------


def test_compare_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["compare", "mthp-64k", "--arch", "generic-smp", "--arch", "up", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert set(doc) == {"scenario", "baseline", "strategies", "arches", "counters", "runs"}
    assert doc["scenario"] == "mthp-64k"
    assert doc["strategies"] == list(STRATEGIES) and doc["baseline"] == "pointer"
    assert doc["arches"] == ["generic-smp", "up"]
    keys = [c["key"] for c in doc["counters"]]
    assert len(doc["runs"]) == 2 * len(STRATEGIES)
    for run in doc["runs"]:
        assert set(run) == {"arch", "strategy", "stats", "ratios", "violations", "seconds"}
        assert list(run["stats"]) == keys and not run["violations"]
        base = next(r for r in doc["runs"]
                    if r["arch"] == run["arch"] and r["strategy"] == "pointer")
        for key in keys:
            b, v, r = base["stats"][key], run["stats"][key], run["ratios"][key]
            assert r == (v / b if b else None)
    ranges = next(
        r for r in doc["runs"] if r["arch"] == "generic-smp" and r["strategy"] == "ranges"
    )
    assert ranges["ratios"]["rmap_calls"] < 0.1


def test_compare_table(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["compare", "thp-pte", "--arch", "generic-smp",
                   "--strategy", "legacy", "--strategy", "ranges"])
    out = capsys.readouterr().out
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "scenario: thp-pte   arch: generic-smp"
    assert lines[1].split() == ["legacy", "ranges"]
    assert max(len(line) for line in lines) <= 100
    counts, ratios = out.split("\nratio to legacy")
    row = next(line for line in counts.splitlines() if line.startswith("rmap removal calls"))
    assert row.split()[-2:] == ["4,096", "9"]
    ratio_lines = ratios.splitlines()
    assert ratio_lines[0].split() == ["ranges"]
    # 9 / 4,096, not rounded away to 0.00
    row = next(line for line in ratio_lines if line.startswith("rmap removal calls"))
    assert row.split()[-1] == "0.0022"
    assert next(line for line in ratio_lines if line.startswith("forced flushes: queue full")
                ).split()[-1] == "-"
    assert lines[-1].startswith("rows: docs/scenarios.md; ratio: ")


def test_compare_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--strategy", "nope"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert main(["compare", "--arch", "vax"]) == 2
    assert main(["compare", "no-such-scenario.toml"]) == 2


def test_compare_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib  # the 'plot' extra: CI installs .[test,plot]

    assert matplotlib.__version__
    png = tmp_path / "cmp.png"
    status = main(["compare", "thp-pte", "--arch", "generic-smp", "--arch", "rcu-table-free",
                   "--plot", str(png)])
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {png}" in capsys.readouterr().out


def test_run_strategy_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "thp-pte", "--arch", "generic-smp", "--strategy", "ranges", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["strategy"] == "ranges"
    assert doc["runs"][0]["stats"]["rmap_calls"] == 9
    assert main(["run", "thp-pte", "--arch", "generic-smp", "--strategy", "legacy"]) == 0
    assert capsys.readouterr().out.startswith("scenario: thp-pte   strategy: legacy\n")
    # A rejection prints nothing on stdout, the strategy line included.
    assert main(["run", "--strategy", "legacy", "--mutant", "no-discard-rmaps"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("mmugather: mutant 'no-discard-rmaps' changes the seed patch's "
                            "zap_pte_range(); strategy 'legacy' has another caller\n")
    assert main(["run", "--strategy", "legacy", "--arch", "vax"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("mmugather: unknown arch 'vax'")


REPLAY = (
    '{"op":"tlb_gather_mmu"}\n'
    '{"op":"tlb_remove_tlb_entry","addr":4194304}\n'
    '{"op":"__tlb_remove_page_size","page":1}\n'
    '{"op":"tlb_remove_tlb_entry","addr":4198400}\n'
    '{"op":"__tlb_remove_page_size","page":2,"delay_rmap":true}\n'
    '{"op":"tlb_flush_mmu_tlbonly"}\n'
    '{"op":"tlb_flush_rmaps","start":4194304,"end":4202496}\n'
    '{"op":"tlb_finish_mmu"}\n'
)


def _replay(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    path = tmp_path / "calls.jsonl"
    path.write_text(REPLAY)
    status = main(["replay", str(path), "--arch", "generic-smp", *args])
    return status, capsys.readouterr().out


def test_replay_strategy_legacy_removes_only_delayed_rmaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _replay(tmp_path, capsys)
    removed = [json.loads(x)["page"] for x in out.splitlines() if '"rmap_remove"' in x]
    assert status == 0 and removed == [1, 2]  # the seed patch: every queued page
    status, out = _replay(tmp_path, capsys, "--strategy", "legacy")
    removed = [json.loads(x)["page"] for x in out.splitlines() if '"rmap_remove"' in x]
    assert status == 0 and removed == [2]  # v6.5: the flagged page only
    assert '{"walked":2,"removed":1,"event":"rmap_walk"}' in out


def test_replay_strategy_ranges_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text(REPLAY)
    assert main(["replay", str(path), "--strategy", "ranges"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "strategy 'ranges' cannot run a replay" in captured.err
    assert main(["replay", str(path), "--strategy", "nope"]) == 2


# ---------------------------------------------------------------------------
# folio-batch (upstream v6.9)
# ---------------------------------------------------------------------------


def test_folio_batch_queues_a_run_as_page_and_nr_pages() -> None:
    """__tlb_remove_folio_pages(): a run takes two entries, a single page one;
    a batch is full at max - 1 entries, so order-0 pages fill the queue at
    7 + 19 * 509 = 9,678 pages instead of 9,698."""
    from mmugather.plugins import rmap_folio_batch

    collector = Collector()
    emit = make_emit(observers=[collector])
    machine = make_machine("generic-smp", emit=emit, strategy="folio-batch")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_remove_tlb_entry(0x400000)
    remove = rmap_folio_batch.remove_folio_pages(tlb)
    assert not remove(100, 16, 0)
    assert not tlb.remove_page(200, 4096, 0)
    assert tlb.local.nr == 3
    assert tlb.local.pages[:3] == [100, 16, 200]
    assert tlb.local.flags[:3] == [rmap_folio_batch.NR_PAGES_NEXT, 0, 0]
    tlb.tlb_flush_mmu()
    assert collector.named("free_ranges") == [
        {"ranges": [[100, 16], [200, 1]], "event": "free_ranges"}
    ]
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_remove_tlb_entry(0x400000)
    full = [tlb.remove_page(p, 4096, 0) for p in range(1, 9679)]
    assert full.index(True) == 9677 and full.count(True) == 1


@pytest.mark.parametrize("scenario", ["mthp-64k", "thp-pte", "munmap-large"])
def test_folio_batch_one_rmap_call_per_run(scenario: str) -> None:
    pointer, batch = stats(scenario, "pointer"), stats(scenario, "folio-batch")
    assert batch["rmap_calls"] < 0.6 * pointer["rmap_calls"]
    assert batch["rmap_batched"] + batch["rmap_now"] == pointer["rmap_batched"]
    assert batch["folio_puts"] == batch["rmap_calls"]
    # v6.9 still updates _nr_pages_mapped once per page
    assert batch["mapcount_atomics"] == pointer["mapcount_atomics"]
    assert batch["deferred_split"] == 0


def test_folio_batch_changes_up_and_s390_too() -> None:
    """The PTE batching is in zap_pte_range() for every configuration: on
    ``up`` the run's rmaps go at once in one call; on ``s390`` the run is
    freed at once in one free_pages_and_swap_cache()."""
    for arch in ("up", "s390"):
        legacy, batch = stats("thp-pte", "legacy", arch), stats("thp-pte", "folio-batch", arch)
        folios = batch["folios_freed"]  # 8 THPs; 16 on s390, whose PMD maps 1 MiB
        assert legacy["rmap_calls"] == 4096 and batch["rmap_calls"] == folios
        assert batch["pages_freed"] == legacy["pages_freed"] == 4096
    assert stats("thp-pte", "folio-batch", "s390")["free_calls"] == 16


def test_replay_strategy_folio_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Single-page ops replay under upstream's code: as legacy here."""
    status, out = _replay(tmp_path, capsys, "--strategy", "folio-batch")
    removed = [json.loads(x)["page"] for x in out.splitlines() if '"rmap_remove"' in x]
    assert status == 0 and removed == [2]


DOCS = Path(__file__).resolve().parent.parent / "docs" / "strategies.md"


@pytest.mark.parametrize("scenario", SMALL)
def test_results_tables_in_the_docs_are_what_compare_prints(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/strategies.md's tables, counter by counter, are the current
    model's (``mmugather compare SCENARIO --arch generic-smp``)."""
    text = DOCS.read_text()
    start = text.index(f"### `{scenario}`")
    end = text.find("\n### ", start + 1)
    documented = {}
    for line in text[start:end if end > 0 else None].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "counter" and not cells[0].startswith("---"):
            documented[cells[0]] = cells[1:1 + len(STRATEGIES)]
    assert main(["compare", scenario, "--arch", "generic-smp"]) == 0
    printed = {}
    for line in capsys.readouterr().out.splitlines():
        label, _, rest = line.partition("  ")
        values = rest.split()
        if len(values) >= len(STRATEGIES) and all(v.replace(",", "").isdigit()
                                                  for v in values[:len(STRATEGIES)]):
            printed[label.strip()] = values[:len(STRATEGIES)]
    assert len(documented) >= 12
    assert {k: printed.get(k) for k in documented} == documented
