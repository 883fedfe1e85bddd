"""The per-page events in bulk (``events.RowBus``) change nothing a user sees.

A run watched only by the checker and the run statistics takes the
``pte_clear`` and ``rmap_remove`` events a table at a time; a run with any
other observer (here a :class:`Collector`), or with a log, takes them one
event each.  Both must give the same counters, the same violations and the
same reports, trails included, on every arch, strategy and mutant.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mmugather.core import strategies
from mmugather.core.arch import registry
from mmugather.core.check import Checker
from mmugather.core.events import (
    Collector,
    EventRows,
    RowBus,
    clear_event,
    make_emit,
    make_stream,
)
from mmugather.core.run import ArchRun, run_arch
from mmugather.core.scenario import Scenario, ScenarioError, load_builtin
from mmugather.core.stats import RunStats
from teardown_kit import ARCHES
from test_callers_property import scenarios

from mmugather.mutants import MUTANTS

#: built-in scenarios small enough to run in every combination
SMALL = ("default", "dirty-shared", "mthp-64k", "order0-anon", "thp-pte")


def _both(scenario: Scenario, arch: str, **kw: Any) -> tuple[ArchRun, ArchRun]:
    spec = registry().get(arch)
    bulk = run_arch(scenario, spec, **kw)
    one_by_one = run_arch(scenario, spec, extra_observers=[Collector()], **kw)
    return bulk, one_by_one


def _assert_same(bulk: ArchRun, one_by_one: ArchRun) -> None:
    assert bulk.stats == one_by_one.stats
    assert bulk.violation_counts == one_by_one.violation_counts
    assert [v.render() for v in bulk.violations] == [v.render() for v in one_by_one.violations]


@pytest.mark.parametrize("strategy", strategies.names())
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", SMALL)
def test_builtin_scenarios_same_in_bulk(name: str, arch: str, strategy: str) -> None:
    bulk, one_by_one = _both(load_builtin(name), arch, strategy=strategy)
    assert bulk.stats["ptes_zapped"] > 0
    _assert_same(bulk, one_by_one)


@pytest.mark.parametrize("arch", ARCHES)
def test_queue_limit_scenario_same_in_bulk(arch: str) -> None:
    bulk, one_by_one = _both(load_builtin("munmap-large"), arch)
    _assert_same(bulk, one_by_one)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("mutant", sorted(n for n, m in MUTANTS.items() if m.scenario))
def test_mutant_reports_same_in_bulk(mutant: str, arch: str) -> None:
    """Violations, with their trails, are reported the same both ways."""
    bulk, one_by_one = _both(load_builtin(MUTANTS[mutant].scenario), arch, mutant=mutant)
    if bulk.mutant_applies:
        assert bulk.violations, f"{mutant} is not caught on {arch}"
    _assert_same(bulk, one_by_one)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    sc=scenarios(),
    arch=st.sampled_from(ARCHES),
    mutant=st.sampled_from([None, *sorted(MUTANTS)]),
)
def test_random_teardowns_same_in_bulk(sc: Scenario, arch: str, mutant: str | None) -> None:
    try:
        bulk, one_by_one = _both(sc, arch, mutant=mutant)
    except ScenarioError:
        # Valid text that this arch's geometry cannot build (a folio size,
        # a file cached at another order): the validator's business.
        assume(False)
        raise  # pragma: no cover - assume() raised
    _assert_same(bulk, one_by_one)


# ----------------------------------------------------------------------
# The stream itself
# ----------------------------------------------------------------------


class _Recorder:
    """A bulk observer that records what it is given, in order."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        self.seen.append(event_dict["event"])
        return event_dict

    def pte_clear_rows(self, rows: list[Any]) -> None:
        self.seen.append(("rows", list(rows)))

    def rmap_remove_pages(self, pages: Any, vma_start: int) -> None:
        self.seen.append(("pages", list(pages), vma_start))


def test_rows_reach_observers_before_the_next_event() -> None:
    rec = _Recorder()
    emit, rows = make_stream(observers=[rec])
    assert isinstance(rows, RowBus) and emit is not None
    rows.pte_clear((0x1000, 7, "batched", False))
    rows.pte_clear((0x2000, None, None, False))
    assert rec.seen == []  # held until something else happens
    emit("ptl_unlock", table=3)
    rows.pte_clear((0x3000, 8, "batched", False))
    rows.rmap_remove([7, 8], 0x400000)
    emit("tlb_flush", scope="mm")
    rows.pte_clear((0x4000, 9, "now", True))
    rows.flush()
    rows.flush()  # nothing left: no empty hand-over
    assert rec.seen == [
        ("rows", [(0x1000, 7, "batched", False), (0x2000, None, None, False)]),
        "ptl_unlock",
        ("rows", [(0x3000, 8, "batched", False)]),
        ("pages", [7, 8], 0x400000),
        "tlb_flush",
        ("rows", [(0x4000, 9, "now", True)]),
    ]


def test_bulk_only_when_every_observer_takes_it(tmp_path: Any) -> None:
    spec = registry().get("generic-smp")
    both = [RunStats(), Checker(spec)]
    assert isinstance(make_stream(observers=both)[1], RowBus)
    assert isinstance(make_stream(observers=[*both, Collector()])[1], EventRows)
    with open(tmp_path / "log", "wb") as log:
        assert isinstance(make_stream(observers=both, file=log)[1], EventRows)
    assert make_stream() == (None, None)


def test_event_rows_emit_what_the_callers_emitted() -> None:
    collector = Collector()
    emit = make_emit(observers=[collector])
    assert emit is not None
    rows = EventRows(emit)
    for row in ((0x1000, 7, "now", True), (0x2000, None, None, False)):
        rows.pte_clear(row)
    rows.rmap_remove([7], 0x400000)
    assert collector.events == [
        {"addr": 0x1000, "page": 7, "level": "pte", "rmap": "now", "dirty_file": True,
         "event": "pte_clear"},
        {"addr": 0x2000, "page": None, "level": "pte", "event": "pte_clear"},
        {"page": 7, "event": "rmap_remove"},
    ]
    # The checker turns a remembered row back into exactly that dict.
    assert [clear_event(r) for r in ((0x1000, 7, "now", True), (0x2000, None, None, False))] \
        == collector.events[:2]
