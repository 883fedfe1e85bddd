"""``mmugather run``: a scenario's operations on one or more arches.

For each arch: build the scenario's address space with the arch's geometry,
wire the observers (run statistics, the invariant checker, an event log) into
one event stream, run the operations through the callers, end with an RCU
grace period, and report.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import attrs
from mmugather.core import fixes as fixes_mod
from mmugather.core import strategies
from mmugather.core.arch import ArchSpec, make_machine
from mmugather.core.callers import Callers, make_callers, run_ops
from mmugather.core.check import Checker, Violation
from mmugather.core.check.complete import Completeness
from mmugather.core.events import Processor, RowBus, make_stream
from mmugather.core.hw.cpus import CpuConfig
from mmugather.core.scenario import Scenario, build
from mmugather.core.stats import RunStats

from mmugather import mutants as mutants_mod


@attrs.define
class ArchRun:
    arch: str
    stats: dict[str, int]
    violations: list[Violation]
    violation_counts: dict[str, int]
    seconds: float
    mapped_ptes: int
    mutant: str | None = None
    mutant_applies: bool = True
    strategy: str = "pointer"
    #: the operations' process CPU time (``seconds`` is wall-clock)
    cpu_seconds: float = 0.0
    page_size: int = 4096

    def as_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "page_size": self.page_size,
            "strategy": self.strategy,
            "mutant": self.mutant,
            "mutant_applies": self.mutant_applies,
            "seconds": round(self.seconds, 4),
            "stats": self.stats,
            "violations": self.violation_counts,
            "reports": [
                {"rule": v.rule, "message": v.message, "seq": v.seq, "trail": v.trail}
                for v in self.violations
            ],
        }


@contextlib.contextmanager
def _quiet_collector() -> Iterator[None]:
    """A checked teardown keeps a small record per queued page until the
    gather frees it, thousands at a time.  CPython's cyclic collector would
    rescan those survivors with its default young generation (700 objects),
    and its full collections would walk every module, plugin and table
    built before the run.  So the run gets a larger young generation (as
    mypy uses for its builds) and what exists before it is frozen
    (``gc.freeze()``, unless the caller froze something itself); both are
    undone after.  About a sixth of a checked exit's time."""
    old = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    gc.set_threshold(max(old[0], 10_000), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        if freeze:
            gc.unfreeze()


def run_arch(
    scenario: Scenario,
    spec: ArchSpec,
    *,
    page_size: int | None = None,
    check: bool = True,
    mutant: str | None = None,
    events: IO[Any] | None = None,
    fmt: str = "json",
    detail: bool = False,
    extra_plugins: Sequence[Any] = (),
    extra_observers: Sequence[Processor] = (),
    progress: Callable[[int], None] | None = None,
    progress_total: Callable[[int], None] | None = None,
    stats: bool = True,
    strategy: str | None = None,
    cpus: CpuConfig | None = None,
    fast: bool = True,
    inspect: Callable[[Callers], None] | None = None,
    fixes: Sequence[str] = (),
) -> ArchRun:
    """Run ``scenario`` on one arch and return what happened.

    ``strategy`` names the rmap-removal strategy (``core/strategies.py``):
    its engine plugins and its callers' classes; ``None`` is the one in
    force (``pointer`` unless ``strategies.selected()`` says otherwise).

    ``progress`` is called with the entries of each PTE table the callers
    have walked; ``progress_total``, once the address space is built, with
    the entries of all its PTE tables (a bar's end: a table the queue filled
    is walked again, so the count can pass it).
    ``cpus`` says who runs the mm (``make_machine()``'s default: two CPUs,
    a thread of the process on each).
    ``mutant`` names a mutant (:mod:`mmugather.mutants`): its plugin goes
    after ``extra_plugins``, its caller classes in front of the strategy's.
    ``fast``: the callers take their table-at-a-time fast paths where they
    apply (``core/callers/memory_fast.py``); False forces the per-PTE
    reference paths throughout (the same events, state and reports).
    ``inspect`` is called with the callers once the operations are done
    (tests compare the address space left behind).
    ``fixes``: commits newer than v6.5 to add (``core/fixes.py``), before
    ``extra_plugins``.
    """
    strat = strategies.resolve(strategy)
    size = page_size or spec.page_sizes[0]
    m = mutants_mod.get(mutant) if mutant else None
    classes = mutants_mod.caller_classes(m, strat)
    plugins = [*(fixes_mod.get(commit).plugin for commit in fixes), *extra_plugins]
    if m is not None and m.plugin is not None:
        plugins.append(m.plugin)
    run_stats = RunStats() if stats else None
    checker = Checker(spec, size) if check else None
    observers: list[Processor] = []
    if run_stats is not None:
        observers.append(run_stats)
    if checker is not None:
        observers.append(checker)
    observers.extend(extra_observers)
    if events is not None:
        # One log may hold several arches' runs: say whose each event is.
        name = spec.name

        def tag_arch(logger: Any, method: str, event_dict: Any) -> Any:
            event_dict["arch"] = name
            return event_dict

        observers.append(tag_arch)
    emit, rows = make_stream(observers=observers, file=events, fmt=fmt)  # type: ignore[arg-type]
    if checker is not None:
        checker.emit = emit
    machine = make_machine(
        spec, page_size=size, emit=emit, detail=emit if detail else None, extra_plugins=plugins,
        strategy=strat.name, rows=rows, cpus=cpus, hw_emit=emit,
    )
    if m is not None and m.gather is not None:
        machine.gather_class = m.gather
    aspace = build(scenario, machine.geometry, spec.name,
                   pmd_share="ARCH_WANT_HUGE_PMD_SHARE" in spec.resolved_features())
    mapped = aspace.mapped_ptes()
    if progress_total is not None:
        progress_total(len(aspace.pte_tables) * machine.geometry.ptrs_per_pte)
    callers = make_callers(
        aspace,
        machine,
        classes=classes,
        report=checker.report if checker is not None else None,
        rmap_observer=checker.rmap_vma if checker is not None else None,
        progress=progress,
        fast=fast,
    )
    if checker is not None:
        callers.ctx.complete = Completeness(aspace, checker.report)
    machine.hw_config(callers.ctx.mm)
    t0 = time.perf_counter()
    c0 = time.process_time()
    with _quiet_collector():
        run_ops(callers, scenario.ops)
    cpu_seconds = time.process_time() - c0
    seconds = time.perf_counter() - t0
    if isinstance(rows, RowBus):
        rows.flush()
    if checker is not None:
        checker.finish()
    if inspect is not None:
        inspect(callers)
    return ArchRun(
        arch=spec.name,
        stats=run_stats.as_dict() if run_stats is not None else {},
        violations=checker.violations if checker is not None else [],
        violation_counts=dict(checker.counts) if checker is not None else {},
        seconds=seconds,
        mapped_ptes=mapped,
        mutant=mutant,
        mutant_applies=m.applies(spec) if m is not None else True,
        strategy=strat.name,
        cpu_seconds=cpu_seconds,
        page_size=size,
    )
