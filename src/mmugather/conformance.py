"""The arch conformance kit: rules every arch plugin must keep.

Run it against any installed arch with ``pytest --mmu-arch NAME`` (the
``mmugather`` pytest plugin, :mod:`mmugather.pytest_plugin`, adds this
module to the session).  Each ``test_*`` function checks one rule and fails
with a message that starts with the rule's name in brackets.

The same checks are plain functions (:func:`check_all`) for use outside
pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mmugather.core.arch import ArchSpec, make_machine, plugin_manager, registry
from mmugather.core.constants import MMU_GATHER_BUNDLE
from mmugather.core.events import ALL_EVENTS, CONTRACT_EVENTS, Collector, make_emit
from mmugather.core.gather import KernelBug, MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.mm import MmStruct
from mmugather.core.run import run_arch
from mmugather.core.scenario import ScenarioError, load_builtin
from mmugather.core.vma import Vma


class ConformanceError(AssertionError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"[{rule}] {message}")
        self.rule = rule


def _fail(rule: str, message: str) -> None:
    raise ConformanceError(rule, message)


def _gather(spec: ArchSpec, fullmm: bool = False, **kw: Any) -> tuple[MmuGather, Collector]:
    events = Collector()
    machine = make_machine(spec, emit=make_emit(observers=[events]), **kw)
    start = tlb_gather_mmu_fullmm if fullmm else tlb_gather_mmu
    return start(machine, MmStruct()), events


def _gathers_pages(spec: ArchSpec) -> bool:
    tlb, events = _gather(spec)
    tlb.tlb_remove_tlb_entry(0x400000)
    tlb.remove_page(0x1000, tlb.geometry.page_size, 0)
    return not events.named("free_page")


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------


def check_registered(spec: ArchSpec) -> None:
    """The arch is found by name, and its plugins implement only known hooks."""
    try:
        found = registry().get(spec.name)
    except Exception as exc:
        _fail("registered", f"arch {spec.name!r} is not in the registry: {exc}")
    if found.name != spec.name:
        _fail("registered", f"registry returned {found.name!r} for {spec.name!r}")
    try:
        plugin_manager(spec)
    except Exception as exc:
        _fail("registered", f"its plugins do not load: {exc}")
    if not spec.page_sizes:
        _fail("registered", "it supports no PAGE_SIZE")


def check_geometry(spec: ArchSpec) -> None:
    """Batch sizes are the kernel's arithmetic on PAGE_SIZE."""
    for size in spec.page_sizes:
        geo = make_machine(spec, page_size=size).geometry
        if geo.page_size != size:
            _fail("geometry", f"PAGE_SIZE {size} gives a geometry of {geo.page_size}")
        if geo.max_gather_batch != (size - 16) // 8:
            _fail("geometry", f"MAX_GATHER_BATCH is {geo.max_gather_batch} at PAGE_SIZE {size}")
        if geo.max_gather_batch_count != 10000 // geo.max_gather_batch:
            _fail("geometry", f"MAX_GATHER_BATCH_COUNT is {geo.max_gather_batch_count}")
        # A folded level maps what the level above it maps (pgtable-nopud.h).
        if not geo.page_size < geo.pmd_size <= geo.pud_size <= geo.p4d_size <= geo.pgdir_size:
            _fail("geometry", "page-table levels do not grow: "
                  "PAGE < PMD <= PUD <= P4D <= PGDIR")


def check_queue_capacity(spec: ArchSpec) -> None:
    """A gathering arch reports a full queue after exactly the kernel's
    capacity, without a VM_BUG_ON; a non-gathering one never does."""
    tlb, _events = _gather(spec)
    tlb.tlb_remove_tlb_entry(0x400000)
    cap = tlb.geometry.queue_capacity
    gathering = _gathers_pages(spec)
    try:
        for n in range(cap + (0 if gathering else 16)):
            if tlb.remove_page(0x10000 + n, tlb.geometry.page_size, 0):
                if not gathering:
                    _fail("queue-capacity", "a non-gathering arch reported a full queue")
                if n + 1 != cap:
                    _fail("queue-capacity", f"the queue reported full after {n + 1} pages, "
                          f"not {cap} ({MMU_GATHER_BUNDLE} + MAX_GATHER_BATCH_COUNT batches)")
                break
        else:
            if gathering:
                _fail("queue-capacity", f"the queue never reported full in {cap} pages")
    except KernelBug as bug:
        _fail("queue-capacity", f"VM_BUG_ON while filling the queue: {bug.what}")


def check_flush_before_free(spec: ArchSpec) -> None:
    """Pages whose PTEs were cleared are freed only after a TLB invalidate
    reported by tlb_flush (or at once by an arch that invalidates as it clears)."""
    tlb, events = _gather(spec)
    vma = Vma(0x400000, 0x800000)
    tlb.tlb_start_vma(vma)
    for k in range(4):
        tlb.tlb_remove_tlb_entry(0x400000 + k * tlb.geometry.page_size)
        tlb.remove_page(0x2000 + k, tlb.geometry.page_size, 0)
    tlb.tlb_flush_rmaps(vma)
    tlb.tlb_end_vma(vma)
    tlb.tlb_finish_mmu()
    names = [e["event"] for e in events.events]
    if "free_pages" in names:
        first_free = names.index("free_pages")
        if "mmu_notifier_invalidate" not in names[:first_free]:
            _fail("flush-before-free", "queued pages were freed before the invalidate: "
                  f"{names[: first_free + 1]}")
    elif names.count("free_page") != 4:
        _fail("flush-before-free", f"4 pages queued, freed: {names}")


def check_rmap_batching(spec: ArchSpec) -> None:
    """tlb_batch_rmap() true: tlb_flush_rmaps() removes exactly the pages
    queued since the last discard.  False: it removes none."""
    tlb, events = _gather(spec)
    vma = Vma(0x400000, 0x800000)
    tlb.tlb_start_vma(vma)
    page_size = tlb.geometry.page_size
    tlb.tlb_remove_tlb_entry(0x400000)
    tlb.tlb_discard_rmaps()
    tlb.remove_page(0x3000, page_size, 0)
    tlb.tlb_flush_rmaps(vma)
    tlb.tlb_discard_rmaps()
    queued = [0x3100 + k for k in range(20)]
    for page in queued:
        tlb.remove_page(page, page_size, 0)
    events.events.clear()
    tlb.tlb_flush_rmaps(vma)
    removed = [e["page"] for e in events.named("rmap_remove")]
    if tlb.batch_rmap and removed != queued:
        _fail("rmap-batching", f"tlb_flush_rmaps() removed {removed}, not the pages queued "
              f"since the last discard {queued}")
    if not tlb.batch_rmap and removed:
        _fail("rmap-batching", "tlb_batch_rmap() is false, yet tlb_flush_rmaps() removed rmaps")
    tlb.tlb_finish_mmu()


def check_nothing_pending(spec: ArchSpec) -> None:
    """After tlb_finish_mmu() the queue and the table batch are empty and
    the mm has no gather in flight."""
    for fullmm in (False, True):
        tlb, _events = _gather(spec, fullmm=fullmm)
        vma = Vma(0x400000, 0x800000)
        tlb.tlb_start_vma(vma)
        tlb.tlb_remove_tlb_entry(0x400000)
        for k in range(40):
            tlb.remove_page(0x5000 + k, tlb.geometry.page_size, 0)
        tlb.pte_free_tlb(1 << 40, 0x400000)
        tlb.tlb_end_vma(vma)
        tlb.tlb_finish_mmu()
        batch: Any = tlb.local
        while batch is not None:
            if batch.nr:
                _fail("nothing-pending", f"a batch still holds {batch.nr} pages after finish")
            batch = batch.next
        if tlb.batch is not None:
            _fail("nothing-pending", "the table batch is still allocated after finish")
        if tlb.mm.tlb_flush_pending:
            _fail("nothing-pending", "mm.tlb_flush_pending is not back to 0")


def check_events_documented(spec: ArchSpec) -> None:
    """The arch emits only documented events, with the contract's fields."""
    run_events = Collector()
    run_arch(load_builtin("default"), spec, extra_observers=[run_events])
    for ev in run_events.events:
        name = ev["event"]
        if name not in ALL_EVENTS:
            _fail("events-documented", f"undocumented event {name!r}: {ev}")
        if name == "tlb_flush" and ev.get("scope") not in ("mm", "range"):
            _fail("events-documented", f"tlb_flush scope must be mm or range: {ev}")
        if name == "tlb_flush" and ev["scope"] == "range" and not ev["start"] < ev["end"]:
            _fail("events-documented", f"an empty range flush: {ev}")
    if not any(e["event"] in CONTRACT_EVENTS for e in run_events.events):
        _fail("events-documented", "no contract event at all in the default scenario")


#: The built-in scenarios the ``invariants`` rule runs: ``default`` (every
#: kind of mapping, munmaps that free no page table) and ``order0-anon``
#: (a munmap that frees page tables while another thread runs: what
#: walk-cache and lockless-walker bugs need).
INVARIANT_SCENARIOS = ("default", "order0-anon")


def check_invariants(spec: ArchSpec) -> None:
    """The scenarios of :data:`INVARIANT_SCENARIOS` tear down with no
    violation of the checker's rules (what CPUs can still reach), at
    PAGE_SIZE 4096 (the size they are written in) where the arch has it."""
    size = 4096 if 4096 in spec.page_sizes else spec.page_sizes[0]
    for name in INVARIANT_SCENARIOS:
        try:
            scenario = load_builtin(name, size)
        except ScenarioError as exc:
            _fail("invariants", f"scenario {name!r} does not fit PAGE_SIZE {size}: {exc}")
        result = run_arch(scenario, spec, page_size=size)
        if result.violations:
            v = result.violations[0]
            run = "mmugather run" + ("" if name == "default" else f" {name}")
            _fail(v.rule, f"{v.message} (invariants: {sum(result.violation_counts.values())} "
                  f"violations in scenario {name!r}; {run} --arch {spec.name} shows them)")


def check_checker_sees_broken_order(spec: ArchSpec) -> None:
    """The checker still works on this arch: freeing pages before the flush
    is reported where pages are gathered."""
    if not _gathers_pages(spec):
        return
    result = run_arch(load_builtin("default"), spec, mutant="free-before-flush")
    if "page-reachable" not in result.violation_counts:
        _fail("checker-effective", "freeing pages before the flush went unreported")


RULES: dict[str, Callable[[ArchSpec], None]] = {
    "registered": check_registered,
    "geometry": check_geometry,
    "queue-capacity": check_queue_capacity,
    "flush-before-free": check_flush_before_free,
    "rmap-batching": check_rmap_batching,
    "nothing-pending": check_nothing_pending,
    "events-documented": check_events_documented,
    "invariants": check_invariants,
    "checker-effective": check_checker_sees_broken_order,
}


def check_all(spec: ArchSpec) -> list[str]:
    """Every rule; returns the failure messages (empty when conformant)."""
    failures = []
    for check in RULES.values():
        try:
            check(spec)
        except ConformanceError as exc:
            failures.append(str(exc))
    return failures


# --------------------------------------------------------------------------
# The pytest face: one test per rule, against the --mmu-arch arch
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", list(RULES))
def test_conformance(mmu_arch: ArchSpec, rule: str) -> None:
    RULES[rule](mmu_arch)

