"""The teardown's fast paths give what the per-PTE paths give.

``run_arch(..., fast=True)`` (the default) lets the callers clear a PTE
table's common entries, remove a batch's rmaps and release a batch's pages a
step at a time (``core/callers/memory_fast.py``), the checker keep those
steps as runs (``core/check/fast.py``) and the hardware model their stale
entries as runs (``core/hw/tlb_runs.py``); ``fast=False`` forces the per-PTE
reference paths.  Both must give the same events, the same address space
left behind, the same statistics and the same violation reports (trails
included), on every built-in scenario, arch, strategy and mutant, and on
random teardowns.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson
import pytest
from conftest import BUILTIN_ARCHES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mmugather.core import strategies
from mmugather.core.arch import registry
from mmugather.core.callers import Callers, memory_fast
from mmugather.core.clearrun import ClearRun
from mmugather.core.constants import Geometry
from mmugather.core.hw import WALK_NONE, CpuConfig, HwSemantics, Invalidate, TlbModel
from mmugather.core.run import ArchRun, run_arch
from mmugather.core.scenario import Scenario, ScenarioError, builtin_names, load_builtin
from test_callers_property import scenarios

from mmugather.mutants import MUTANTS, caller_classes

#: exit-4g is order0-anon's paths at 128 times the size: compared apart, once
SCENARIOS = [n for n in builtin_names() if n != "exit-4g"]


def state_of(callers: Callers) -> dict[str, Any]:
    """What a teardown leaves behind: the address space, whole, and the
    callers' counters."""
    ctx = callers.ctx
    aspace = ctx.aspace
    store = aspace.pages
    return {
        "pages": {field: bytes(getattr(store, field)) for field in PageStoreFields},
        "pte_tables": {pmd: (t.id, bytes(t.entries)) for pmd, t in aspace.pte_tables.items()},
        "maps": [dict(m) for m in (aspace.huge_pmds, aspace.deposited, aspace.huge_puds,
                                   aspace.pmd_tables, aspace.pud_tables, aspace.p4d_tables,
                                   aspace.page_cache, aspace.swap_map, aspace.tables,
                                   aspace.pmd_share)],
        "rss": list(aspace.rss_stat),
        "counters": (ctx.rss_freed, ctx.deposited_freed, aspace.next_table_id,
                     aspace.next_swap, callers.swap.folios_freed),
        "machine": (ctx.machine.alloc_stats, len(ctx.machine.rcu_callbacks)),
    }


PageStoreFields = ("mapcount", "head", "order", "flags", "refcount", "entire_mapcount",
                   "nr_mapped")


class Digest:
    """An observer hashing every event (its JSON) in order, so that whole
    streams compare cheaply; it also makes the stream emit each per-page
    event on its own (``events.EventRows``)."""

    def __init__(self) -> None:
        self.hash = hashlib.blake2b()
        self.count = 0

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        self.hash.update(orjson.dumps(event_dict))
        self.count += 1
        return event_dict

    def value(self) -> tuple[int, str]:
        return self.count, self.hash.hexdigest()


def _run(scenario: Scenario, arch: str, fast: bool, digest: Digest | None,
         **kw: Any) -> tuple[ArchRun, dict[str, Any]]:
    left: dict[str, Any] = {}
    run = run_arch(scenario, registry().get(arch), fast=fast,
                   extra_observers=[digest] if digest is not None else [],
                   inspect=lambda callers: left.update(state_of(callers)), **kw)
    return run, left


def _reports(run: ArchRun) -> tuple[Any, ...]:
    return (run.stats, run.violation_counts, [v.render() for v in run.violations])


def assert_fast_is_reference(scenario: Scenario, arch: str, **kw: Any) -> int:
    """The fast paths against the per-PTE ones: with the per-page events in
    bulk (the checker's runs) and one event each (the events themselves).
    Returns the number of violations.

    The per-PTE paths with the events in bulk give what they give one event
    each (``tests/test_bulk_events.py``): that run is left out.
    """
    bulk, bulk_left = _run(scenario, arch, True, None, **kw)
    fast_events, ref_events = Digest(), Digest()
    one, one_left = _run(scenario, arch, True, fast_events, **kw)
    ref, ref_left = _run(scenario, arch, False, ref_events, **kw)
    assert fast_events.value() == ref_events.value()
    assert _reports(bulk) == _reports(one) == _reports(ref)
    assert bulk_left == one_left == ref_left
    return len(ref.violations)


def _refused(mutant: str | None, strategy: str) -> bool:
    if mutant is None:
        return False
    try:
        caller_classes(MUTANTS[mutant], strategies.get(strategy))
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("strategy", strategies.names())
@pytest.mark.parametrize("arch", BUILTIN_ARCHES)
@pytest.mark.parametrize("name", SCENARIOS)
def test_builtin_scenarios(name: str, arch: str, strategy: str) -> None:
    assert_fast_is_reference(load_builtin(name), arch, strategy=strategy)


@pytest.mark.parametrize("strategy", strategies.names())
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutants(mutant: str, strategy: str) -> None:
    """Every mutant the strategy takes, on every arch, on the scenario that
    catches it: its reports (and everything around them) are the per-PTE
    path's.  A mutant only the explorer shows (no such scenario) runs on
    every built-in scenario instead (munmap-large, the queue-limit one, is
    left to the mutants that have it: it alone takes longer than all the
    others together): whatever it does there, both paths must do alike."""
    name = MUTANTS[mutant].scenario
    if _refused(mutant, strategy):
        with pytest.raises(ValueError, match="has another caller"):
            run_arch(load_builtin(name or "default"), registry().get("generic-smp"),
                     mutant=mutant, strategy=strategy)
        return
    caught = 0
    for sc_name in [name] if name else [n for n in SCENARIOS if n != "munmap-large"]:
        sc = load_builtin(sc_name)
        for arch in BUILTIN_ARCHES:
            caught += assert_fast_is_reference(sc, arch, strategy=strategy, mutant=mutant)
    assert caught or not name, f"{mutant} is caught nowhere under {strategy}"


def test_exit_4g() -> None:
    """The issue's exit, 1,048,576 PTEs, checker on and off: the fast path's
    home ground, compared whole."""
    sc = load_builtin("exit-4g")
    bulk, bulk_left = _run(sc, "generic-smp", True, None)
    ref, ref_left = _run(sc, "generic-smp", False, None)
    assert bulk.stats["ptes_zapped"] == 1 << 20
    assert _reports(bulk) == _reports(ref)
    assert bulk_left == ref_left
    _off, off_left = _run(sc, "generic-smp", True, None, check=False, stats=False)
    assert off_left == ref_left


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(sc=scenarios(), arch=st.sampled_from(BUILTIN_ARCHES),
       strategy=st.sampled_from(strategies.names()),
       mutant=st.sampled_from([None, *sorted(MUTANTS)]))
def test_random_teardowns(sc: Scenario, arch: str, strategy: str, mutant: str | None) -> None:
    assume(not _refused(mutant, strategy))
    try:
        assert_fast_is_reference(sc, arch, strategy=strategy, mutant=mutant)
    except ScenarioError:
        # Valid text that this arch's geometry cannot build: the validator's.
        assume(False)


# ----------------------------------------------------------------------
# The fast paths are taken (the comparisons above are not of one path twice)
# ----------------------------------------------------------------------


def _count_taken(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    taken = {"zap": 0, "rmaps": 0, "release": 0}
    zap, rmaps, release = (memory_fast.zap_pte_run, memory_fast.remove_rmaps,
                           memory_fast.release_pages)

    def counting_zap(*args: Any) -> Any:
        out = zap(*args)
        taken["zap"] += out[4]
        return out

    def counting_rmaps(*args: Any) -> int:
        n = rmaps(*args)
        taken["rmaps"] += n
        return n

    def counting_release(*args: Any) -> int:
        n = release(*args)
        taken["release"] += n
        return n

    from mmugather.core.callers import memory, model, swap

    monkeypatch.setattr(memory, "zap_pte_run", counting_zap)
    monkeypatch.setattr(model, "remove_rmaps", counting_rmaps)
    monkeypatch.setattr(swap, "release_pages", counting_release)
    return taken


def test_fast_paths_take_the_common_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every batch, however small (the on-stack bundle holds 8 pages).
    monkeypatch.setattr(memory_fast, "MIN_PAGES", 1)
    taken = _count_taken(monkeypatch)
    run = run_arch(load_builtin("order0-anon"), registry().get("generic-smp"))
    zapped = run.stats["ptes_zapped"]
    assert zapped > 0 and taken == {"zap": zapped, "rmaps": zapped, "release": zapped}


def test_reference_paths_take_nothing_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _count_taken(monkeypatch)
    run_arch(load_builtin("order0-anon"), registry().get("generic-smp"), fast=False)
    assert taken == {"zap": 0, "rmaps": 0, "release": 0}


@pytest.mark.parametrize(("arch", "strategy", "mutant"), [
    ("s390", "pointer", None),             # pages freed at once, never queued
    ("generic-smp", "legacy", None),       # another kernel's zap_pte_range()
    ("generic-smp", "ranges", None),       # another page remover
    ("generic-smp", "pointer", "free-before-flush"),  # a mutant's page remover
    ("generic-smp", "pointer", "no-discard-rmaps"),   # a mutant's step of the loop
])
def test_other_loops_take_no_table_fast(monkeypatch: pytest.MonkeyPatch, arch: str,
                                        strategy: str, mutant: str | None) -> None:
    taken = _count_taken(monkeypatch)
    run_arch(load_builtin("order0-anon"), registry().get(arch), strategy=strategy,
             mutant=mutant)
    assert taken["zap"] == 0


def test_checker_keeps_runs_and_settles_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checked exit goes through the checker's runs, and what is left of
    them at the end is settled into the records the handlers keep."""
    from mmugather.core.check.fast import FastChecks

    kept = []
    clear_run = FastChecks.clear_run

    def spy(self: FastChecks, run: ClearRun) -> bool:
        ok = clear_run(self, run)
        kept.append(ok)
        return ok

    monkeypatch.setattr(FastChecks, "clear_run", spy)
    run = run_arch(load_builtin("order0-anon"), registry().get("generic-smp"))
    assert kept and all(kept) and not run.violations


# ----------------------------------------------------------------------
# The hardware model's runs against its per-entry dict
# ----------------------------------------------------------------------

GEO = Geometry()
PS = GEO.page_size
BASE = 0x400000


def _inv(draw: Any) -> Invalidate:
    whole = draw(st.booleans())
    start = None if whole else BASE + draw(st.integers(-4, 80)) * PS
    end = None if start is None else start + draw(st.integers(1, 80)) * PS
    return Invalidate(
        "inv", cpus=draw(st.integers(0, 7)), start=start, end=end,
        stride=0 if start is None else draw(st.sampled_from([0, PS, 3 * PS, GEO.pmd_size])),
        leaf=draw(st.booleans()), walk=WALK_NONE,
        level=draw(st.sampled_from([None, None, "pte", "pmd"])),
        page_size=draw(st.sampled_from([0, 0, PS, 2 * PS])),
    )


@st.composite
def tlb_ops(draw: Any) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    page = 0x1000
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["run", "run", "run", "inv", "inv", "rows", "big",
                                     "exit", "mode", "look"]))
        if kind in ("run", "rows"):
            first = draw(st.integers(0, 64))
            step = draw(st.sampled_from([1, 1, 2]))
            n = draw(st.integers(1, 12))
            addrs = [BASE + (first + k * step) * PS for k in range(n)]
            pages = list(range(page, page + n))
            page += n + draw(st.sampled_from([0, -n]))  # a page may come back
            ops.append((kind, addrs, pages, draw(st.booleans())))
        elif kind == "inv":
            ops.append((kind, _inv(draw)))
        elif kind == "big":
            ops.append((kind, BASE + draw(st.integers(0, 3)) * GEO.pmd_size, page))
            page += 1
        elif kind == "mode":
            ops.append((kind, draw(st.sampled_from(["keeps", "deferred", "direct"]))))
        else:
            ops.append((kind,))
    return ops


def _seen(tlb: TlbModel) -> tuple[Any, ...]:
    return (list(tlb.leaf.items()), list(tlb.big.items()), dict(tlb.dirty_pages),
            list(tlb.usable_leaves(0b111)), list(tlb.held_entries()),
            [tlb.page_reach(p, 0b111) for p in range(0x1000, 0x1040)],
            sorted(tlb.pfn_index().items()))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(ops=tlb_ops(), lazy=st.booleans())
def test_tlb_runs_are_the_per_entry_model(ops: list[tuple[Any, ...]], lazy: bool) -> None:
    cpus = CpuConfig(nr_cpus=3, threads=(0, 1), lazy=(2,) if lazy else ())
    per_entry = TlbModel(GEO, cpus, HwSemantics())
    runs = TlbModel(GEO, cpus, HwSemantics())
    seq = 0
    for op in ops:
        kind = op[0]
        if kind in ("run", "rows"):
            _, addrs, pages, dirty = op
            rows = [(a, p, "batched", dirty and kind == "rows") for a, p in
                    zip(addrs, pages, strict=True)]
            per_entry.pte_rows(rows, seq)
            if kind == "run":
                runs.pte_run(ClearRun(np.array(addrs, dtype=np.int64),
                                      np.array(pages, dtype=np.int64), pages, "batched"), seq)
            else:
                runs.pte_rows(rows, seq)
            seq += len(rows)
        elif kind == "inv":
            per_entry.invalidate(op[1])
            runs.invalidate(op[1])
        elif kind == "big":
            for tlb in (per_entry, runs):
                tlb.entry_cleared(op[1], GEO.pmd_size, "pmd", op[2], True, seq)
            seq += 1
        elif kind == "exit":
            per_entry.mm_exit()
            runs.mm_exit()
        elif kind == "mode":
            per_entry.set_clear_mode(op[1])
            runs.set_clear_mode(op[1])
        else:
            assert _seen(runs) == _seen(per_entry)
    assert _seen(runs) == _seen(per_entry)


def test_tlb_run_is_kept_whole_until_read() -> None:
    tlb = TlbModel(GEO, CpuConfig(nr_cpus=2, threads=(0, 1)), HwSemantics())
    addrs = [BASE + k * PS for k in range(4)]
    tlb.pte_run(ClearRun(np.array(addrs), np.array([7, 8, 9, 10]), [7, 8, 9, 10], "batched"), 5)
    assert tlb._runs and not tlb._leaf
    assert list(tlb.leaf) == addrs
    assert tlb.leaf[addrs[1]] == [8, PS, "pte", False, 0b11, 0b11, 7]
    assert not tlb._runs
