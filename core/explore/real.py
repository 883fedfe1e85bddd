"""Real worlds: the callers themselves, run in greenlets and stopped at the
points where the kernel can be interleaved.

A :class:`RealWorld` is one modelled kernel (machine, address space, one
Teardown per zapping thread) whose zapping threads run in greenlets.  The
machine's event stream is the observer: every event a thread emits is
recorded, and at an interleaving point the thread switches back to the
explorer.  Where the kernel would wait (a page-table lock, an IPI that
waits for interrupts-off walkers, mmap_lock) the thread stops *before* the
event takes effect and says what it waits for; the explorer resumes it only
when that is free.  So the callers need no change: the same code
``mmugather run`` runs, event for event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import greenlet
from mmugather.core import fixes, strategies
from mmugather.core.arch import ArchError, ArchSpec, make_machine, registry
from mmugather.core.aspace import AddressSpace, PteTable
from mmugather.core.check import Checker
from mmugather.core.constants import Geometry
from mmugather.core.events import make_emit
from mmugather.core.explore import zap
from mmugather.core.explore.mem import PAGE_FIELDS, Mem, pull, push
from mmugather.core.explore.spec import THREAD_KINDS, ActorSpec, ExploreScenario
from mmugather.core.explore.track import Recorder, TrackedArray, track_array, tracked_mm
from mmugather.core.hw.cpus import CpuConfig
from mmugather.core.mm import ALLOC_KINDS, Machine, MmStruct
from mmugather.core.scenario import build, check_geometry

from mmugather import mutants as mutants_mod

#: A zapping thread stops *before* these take effect (it may have to wait).
BEFORE = frozenset({"ptl_lock", "tlb_invalidate", "ipi_sync", "i_mmap_lock"})
#: ... and *after* these: the points where another CPU may act.
POINTS = frozenset({
    "pte_clear", "ptl_unlock", "rmap_remove", "rmap_remove_now", "rmap_remove_range",
    "rmap_remove_ptes", "tlb_invalidate", "free_pages", "free_page", "folio_free",
    "free_ranges", "table_unhook", "table_free", "vma_end", "gather_end", "page_queued",
    "pmd_unshare", "i_mmap_unlock",
})

#: what a thread's switch back says
WANT, POINT, DONE = "want", "point", "done"

#: A wait: ("lock", table id or ("i_mmap", file)) | ("ipi", cpu mask) |
#: ("mmap", "write" | "read")
Want = tuple[str, Any]


@attrs.frozen
class Config:
    """What a world is made of.  Picklable: a worker process builds its own."""

    scenario: ExploreScenario
    arch: str
    strategy: str = "pointer"
    mutant: str | None = None
    page_size: int | None = None
    #: CPUs of the machine (None: the scenario's)
    cpus: int | None = None
    #: the sequential checker watches each zapping thread's events
    check: bool = True
    #: detail events (page_queued is then an interleaving point too)
    detail: bool = False
    #: fixes newer than v6.5 to add, by commit (core/fixes.py)
    fixes: tuple[str, ...] = ()


class Setup:
    """What a Config resolves to, once per process: the arch, a machine
    template whose plugin manager every world shares, the CPUs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.spec: ArchSpec = registry().get(cfg.arch)
        strat = strategies.get(cfg.strategy)
        self.strategy = strat.name
        self.mutant = mutants_mod.get(cfg.mutant) if cfg.mutant else None
        #: the callers' classes: the strategy's, a caller mutant's in front
        self.classes = zap.classes_for(strat.name, self.mutant)
        sc = cfg.scenario
        nr_cpus = cfg.cpus if cfg.cpus is not None else sc.cpus
        top = max((a.cpu for a in sc.actors if a.cpu is not None), default=0)
        if nr_cpus <= top:
            raise ValueError(f"--cpus {nr_cpus}: scenario {sc.name!r} runs an actor on CPU {top}")
        threads = sc.threads if sc.threads is not None else tuple(sorted(
            a.cpu for a in sc.actors if a.kind in THREAD_KINDS and a.cpu is not None))
        plugins = [fixes.get(commit).plugin for commit in cfg.fixes]
        if self.mutant is not None and self.mutant.plugin:
            plugins.append(self.mutant.plugin)
        self.template: Machine = make_machine(
            self.spec, page_size=cfg.page_size, extra_plugins=plugins, strategy=self.strategy,
            cpus=CpuConfig(nr_cpus=nr_cpus, threads=threads))
        if self.mutant is not None and self.mutant.gather is not None:
            self.template.gather_class = self.mutant.gather
        if self.template.cpus.nr_cpus <= top:
            raise ArchError(f"arch {self.spec.name!r} has {self.template.cpus.nr_cpus} CPU "
                            f"(!CONFIG_SMP); scenario {sc.name!r} runs an actor on CPU {top}")
        self.geometry: Geometry = self.template.geometry
        self.page_size = self.geometry.page_size
        check_geometry(sc.base, self.geometry, self.spec.name)
        self.nr_cpus = self.template.cpus.nr_cpus
        self.all_cpus = (1 << self.nr_cpus) - 1
        self.zaps: tuple[ActorSpec, ...] = tuple(a for a in sc.actors if a.kind == "zap")


class ZapRunner:
    """One zapping thread of a world: its callers, checker and greenlet."""

    __slots__ = ("checker", "events", "greenlet", "index", "queued", "spec", "teardown", "want")

    def __init__(self, index: int, spec: ActorSpec) -> None:
        self.index = index
        self.spec = spec
        self.teardown: Any = None
        self.checker: Checker | None = None
        self.greenlet: Any = None
        #: the events of the step under way
        self.events: list[dict[str, Any]] = []
        self.want: Want | None = None
        #: call_rcu() callbacks it queued so far
        self.queued = 0


@attrs.frozen
class RealStep:
    """What one real step did."""

    events: tuple[dict[str, Any], ...]
    #: what the thread waits for before its next step, None: nothing
    want: Want | None
    done: bool
    #: ids of the call_rcu() callbacks it queued
    queued: tuple[tuple[int, int], ...]
    #: (rule, message) of what the checker reported
    violations: tuple[tuple[str, str], ...]
    #: (cells read, arrays read whole, cells written, arrays written whole)
    #: (track.py), or None: not known
    reads: tuple[frozenset[Any], frozenset[Any], frozenset[Any], frozenset[Any]] | None = None


class RealWorld:
    """One modelled kernel with its zapping threads suspended in greenlets."""

    def __init__(self, setup: Setup, *, track: bool = True) -> None:
        self.setup = setup
        cfg = setup.cfg
        emit = make_emit(observers=[self._observe])
        t = setup.template
        self.machine: Machine = attrs.evolve(
            t, emit=emit, detail=emit if cfg.detail else None, rows=None, hw_emit=emit,
            model=None, alloc_failures={**dict.fromkeys(ALLOC_KINDS, 0),
                                        **dict(cfg.scenario.fail_alloc)}, rcu_callbacks=[],
            alloc_stats={k: [0, 0] for k in ALLOC_KINDS}, stale_vma_flags=(False, False, False))
        self.aspace: AddressSpace = build(
            cfg.scenario.base, setup.geometry, setup.spec.name,
            pmd_share="ARCH_WANT_HUGE_PMD_SHARE" in setup.spec.resolved_features())
        #: what the callers' steps read (None: not recorded)
        self.rec: Recorder | None = Recorder() if track else None
        #: a step may have read something the recorder does not see
        self.untracked = not track
        if self.rec is not None:
            store = self.aspace.pages
            for i, field in enumerate(PAGE_FIELDS):
                setattr(store, field, track_array(getattr(store, field), ("p", i), self.rec))
        self.pte_registry: dict[int, PteTable] = {}
        for table in self.aspace.pte_tables.values():
            if self.rec is not None:
                table.entries = track_array(table.entries, ("t", table.id), self.rec)
            self.pte_registry[table.id] = table
        self.vma_registry: dict[tuple[Any, ...], Any] = {}
        self.current: ZapRunner | None = None
        self.sched: Any = None
        #: events emitted outside any zapping thread (start, grace periods)
        self.main_events: list[dict[str, Any]] = []
        self.feed_checkers = True
        #: call_rcu() callbacks by id (thread, ordinal)
        self.callbacks: dict[tuple[int, int], Callable[[], None]] = {}
        self.runners: list[ZapRunner] = []
        mm: MmStruct | None = None
        for k, spec in enumerate(setup.zaps):
            run = ZapRunner(k, spec)
            checker = Checker(setup.spec, setup.page_size, max_reports=1 << 30) \
                if cfg.check else None
            run.checker = checker
            run.teardown = zap.make_teardown(
                self.aspace, self.machine, classes=setup.classes,
                report=checker.report if checker is not None else None,
                rmap_observer=checker.rmap_vma if checker is not None else None, mm=mm)
            if mm is None and self.rec is not None:
                # The first thread's mm, made to record what is read of it;
                # the others share it.
                zap.set_mm(run.teardown, tracked_mm(zap.mm_of(run.teardown), self.rec))
            mm = zap.mm_of(run.teardown)
            if checker is not None:
                checker.emit = emit
            self.runners.append(run)
        assert mm is not None
        self.mm = mm
        self.machine.hw_config(mm)
        self.feed_checkers = False
        self.init_events = tuple(self.main_events)
        for run in self.runners:
            run.greenlet = greenlet.greenlet(self._zap_main(run))
            self._switch_in(run)
        #: the live objects hold something other than ``mem`` (steps ran
        #: whose memory was not taken)
        self.stale = False
        #: the Mem the live objects hold now
        self.mem: Mem = pull(self, None)
        #: where each thread stands (set by the engine)
        self.nodes: tuple[Any, ...] = ()

    # --- the zapping threads ---------------------------------------------

    def _zap_main(self, run: ZapRunner) -> Callable[[], str]:
        teardown = run.teardown

        def main() -> str:
            last = len(run.spec.ops) - 1
            for i, op in enumerate(run.spec.ops):
                kind = op["kind"]
                run.want = ("mmap", "read" if kind == "madvise_dontneed" else "write")
                self.sched.switch(WANT)
                fields = {"op": kind, "start": op.get("start"), "end": op.get("end")}
                run.events.append({**fields, "event": "syscall_enter"})
                zap.run_op(teardown, op)
                run.events.append({**fields, "event": "syscall_return"})
                if i < last:
                    self.sched.switch(POINT)
            return DONE

        return main

    def _switch_in(self, run: ZapRunner) -> str:
        self.machine.model = zap.model_of(run.teardown)
        self.current = run
        self.sched = greenlet.getcurrent()
        try:
            status: str = run.greenlet.switch()
        finally:
            self.current = None
        return status

    def _observe(self, logger: Any, method: str, ev: Any) -> Any:
        run = self.current
        if run is None:
            self.main_events.append(ev)
            if self.feed_checkers:
                for r in self.runners:
                    if r.checker is not None:
                        r.checker(logger, method, ev)
            return ev
        name = ev["event"]
        if name in BEFORE and (name != "tlb_invalidate" or ev["waits"]):
            if name == "ptl_lock":
                run.want = ("lock", ev["table"])
            elif name == "i_mmap_lock":
                run.want = ("lock", ("i_mmap", ev["file"]))
            elif name == "ipi_sync":
                run.want = ("ipi", self.setup.all_cpus)
            else:
                mask = 0
                for cpu in ev["cpus"]:
                    mask |= 1 << cpu
                run.want = ("ipi", mask)
            self.sched.switch(WANT)
        checker = run.checker
        if checker is not None:
            checker(logger, method, ev)
        run.events.append(ev)
        if name in POINTS:
            self.sched.switch(POINT)
        return ev

    def step_zap(self, k: int, mem: Mem, *, take: bool = True) -> RealStep:
        """Run thread ``k`` from where it stands, over ``mem``, to its next
        interleaving point.  ``take=False``: the memory after it is not
        wanted (a thread being brought back to where it stood) and ``mem``
        stays what the world is said to hold."""
        if self.mem is not mem or self.stale:
            push(self, mem)
        run = self.runners[k]
        run.events = []
        run.want = None
        checker = run.checker
        seen = len(checker.violations) if checker is not None else 0
        rec = self.rec
        if rec is not None:
            rec.start()
        try:
            status = self._switch_in(run)
        finally:
            if rec is not None:
                rec.stop()
        queued = self._take_callbacks(run)
        violations = () if checker is None else tuple(
            (v.rule, v.message) for v in checker.violations[seen:])
        if take:
            self.mem = pull(self, mem)
        else:
            self.stale = True
        reads = None
        if rec is not None and not self.untracked:
            reads = (frozenset(rec.cells), frozenset(rec.whole), frozenset(rec.written),
                     frozenset(rec.whole_written))
        return RealStep(tuple(run.events), run.want if status == WANT else None,
                        status == DONE, queued, violations, reads)

    def adopt_table(self, table: PteTable) -> PteTable:
        """A PTE table the callers made (or a push brings back)."""
        if self.rec is not None and not isinstance(table.entries, TrackedArray):
            # Made by the callers, who may still hold its entries: reads of
            # it cannot be recorded from here on.
            self.untracked = True
        self.pte_registry[table.id] = table
        return table

    def _take_callbacks(self, run: ZapRunner) -> tuple[tuple[int, int], ...]:
        cbs = self.machine.rcu_callbacks
        if not cbs:
            return ()
        ids = []
        for cb in cbs:
            cid = (run.index, run.queued)
            run.queued += 1
            self.callbacks[cid] = cb
            ids.append(cid)
        cbs.clear()
        return tuple(ids)

    def step_rcu(self, pending: tuple[tuple[int, int], ...], mem: Mem) -> tuple[
            tuple[dict[str, Any], ...], Mem]:
        """An RCU grace period: the callbacks ``pending`` run, in order."""
        if self.mem is not mem or self.stale:
            push(self, mem)
        self.main_events = []
        self.machine.rcu_callbacks = [self.callbacks[cid] for cid in pending]
        self.machine.rcu_grace_period()
        self.mem = pull(self, mem)
        return tuple(self.main_events), self.mem

    def run_solo(self, sink: Callable[[dict[str, Any]], Any]) -> None:
        """Every thread in turn, from where it stands to its end, each
        resumed at once wherever it stops; then a grace period (as ``mmugather
        run`` ends).  ``sink`` gets every event, in order, from the machine's
        start: with one thread, what ``mmugather run`` emits, plus the
        explorer's ``syscall_enter``/``syscall_return``."""
        for ev in self.init_events:
            sink(ev)
        for run in self.runners:
            while True:
                run.events = []
                status = self._switch_in(run)
                for ev in run.events:
                    sink(ev)
                self._take_callbacks(run)
                if status == DONE:
                    break
        self.main_events = []
        self.machine.rcu_callbacks = [self.callbacks[cid] for cid in sorted(self.callbacks)]
        self.machine.rcu_grace_period()
        for ev in self.main_events:
            sink(ev)

    def close(self) -> None:
        """Unwind the suspended threads (their frames refer to this world)."""
        for run in self.runners:
            g = run.greenlet
            if g is not None and g:
                # GreenletExit unwinds it; it ends there, quietly.
                g.throw()
            run.greenlet = None
