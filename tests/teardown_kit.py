"""Helpers for the caller, checker and scenario tests: a small address space
torn down through the callers (:func:`~mmugather.core.callers.make_callers`)
with its events collected, and a recorder of the engine calls the callers
make.

Not a conftest: the helpers are imported by name where they are used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from mmugather.core import scenario
from mmugather.core.arch import ArchSpec, make_machine, registry
from mmugather.core.aspace import AddressSpace, MmVma
from mmugather.core.callers import Callers, make_callers
from mmugather.core.check import Checker
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather
from mmugather.core.mm import Machine
from mmugather.core.vma import flag_names

#: The five arch configurations of the replay contract.
ARCHES = ("generic-smp", "up", "s390", "page-size", "rcu-table-free")
#: Arches that queue pages until the flush (all but s390).
GATHERING = ("generic-smp", "up", "page-size", "rcu-table-free")
#: Arches that batch rmap removal (CONFIG_SMP and gathering).
BATCHING = ("generic-smp", "page-size", "rcu-table-free")

PS = 4096
MIB = 1 << 20


def spec(arch: str) -> ArchSpec:
    return registry().get(arch)


def parse(vmas: Sequence[dict[str, Any]], ops: Sequence[dict[str, Any]] | None = None,
          path: str = "t.toml") -> scenario.Scenario:
    """A scenario from Python data, validated as a TOML file would be."""
    return scenario.parse(
        {"vma": [dict(v) for v in vmas], "op": [dict(o) for o in (ops or [{"kind": "exit"}])]},
        path,
    )


@attrs.define
class Rig:
    """One arch, one address space, its callers, and what watched it."""

    arch: str
    machine: Machine
    aspace: AddressSpace
    callers: Callers
    collector: Collector
    checker: Checker | None

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.collector.events

    def names(self, *skip: str) -> list[str]:
        return [e["event"] for e in self.events if e["event"] not in skip]

    def vma(self, start: int) -> MmVma:
        return next(v for v in self.aspace.vmas if v.start == start)

    def pmd_index(self, addr: int) -> int:
        return addr >> self.machine.geometry.pmd_shift

    def clear(self) -> None:
        self.collector.events.clear()

    @property
    def violations(self) -> list[Any]:
        return self.checker.violations if self.checker is not None else []


def rig(
    arch: str,
    vmas: Sequence[dict[str, Any]] | scenario.Scenario,
    *,
    check: bool = False,
    detail: bool = False,
    extra_plugins: Sequence[Any] = (),
    classes: dict[str, type] | None = None,
) -> Rig:
    """Build ``vmas`` (scenario VMA tables, or a parsed scenario) for ``arch``,
    with a collector (and optionally the checker) on the event stream."""
    sc = vmas if isinstance(vmas, scenario.Scenario) else parse(vmas)
    arch_spec = spec(arch)
    collector = Collector()
    checker = Checker(arch_spec, PS) if check else None
    observers: list[Any] = [collector] + ([checker] if checker is not None else [])
    emit = make_emit(observers=observers)
    if checker is not None:
        checker.emit = emit
    machine = make_machine(arch_spec, emit=emit, detail=emit if detail else None,
                           extra_plugins=extra_plugins)
    aspace = scenario.build(sc, machine.geometry)
    callers = make_callers(
        aspace,
        machine,
        classes=classes,
        report=checker.report if checker is not None else None,
        rmap_observer=checker.rmap_vma if checker is not None else None,
    )
    return Rig(arch, machine, aspace, callers, collector, checker)


# ----------------------------------------------------------------------
# Recording the engine calls the callers make
# ----------------------------------------------------------------------


def _vma_fields(vma: Any) -> dict[str, Any]:
    return {"start": vma.start, "end": vma.end, "flags": flag_names(vma.flags)}


class RecordingGather:
    """Stands in for an :class:`MmuGather` handed to the callers and logs
    every call as a replay-v1 op (``docs/replay.md``).

    ``tlb_flush_pte_range(a, size)`` (not a replay op) is logged as the two
    ``tlb_remove_tlb_entry`` calls that record exactly the same range and
    level: its first and its last page.  Reads of ``batch_rmap`` are not
    logged: ``tlb_batch_rmap()`` has no effect.
    """

    def __init__(self, tlb: MmuGather, log: list[dict[str, Any]], page_size: int) -> None:
        object.__setattr__(self, "_tlb", tlb)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_ps", page_size)

    def __getattr__(self, name: str) -> Any:
        tlb = self._tlb
        log = self._log
        attr = getattr(tlb, name)
        if name == "remove_page":
            def remove_page(page: int, size: int, flags: int = 0) -> bool:
                log.append({"op": "__tlb_remove_page_size", "page": page, "size": size,
                            "delay_rmap": bool(flags)})
                return bool(attr(page, size, flags))
            return remove_page
        handler = _RECORD.get(name)
        if handler is None:
            return attr

        def call(*args: Any) -> Any:
            log.extend(handler(self._ps, *args))
            return attr(*args)

        return call

    def __setattr__(self, name: str, value: Any) -> None:  # pragma: no cover - unused
        setattr(self._tlb, name, value)


_RECORD: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "tlb_start_vma": lambda ps, vma: [{"op": "tlb_start_vma", **_vma_fields(vma)}],
    "tlb_end_vma": lambda ps, vma: [{"op": "tlb_end_vma", **_vma_fields(vma)}],
    "tlb_flush_rmaps": lambda ps, vma: [{"op": "tlb_flush_rmaps", **_vma_fields(vma)}],
    "tlb_discard_rmaps": lambda ps: [{"op": "tlb_discard_rmaps"}],
    "tlb_change_page_size": lambda ps, size: [{"op": "tlb_change_page_size", "size": size}],
    "tlb_remove_tlb_entry": lambda ps, addr: [{"op": "tlb_remove_tlb_entry", "addr": addr}],
    "tlb_flush_pte_range": lambda ps, addr, size: [
        {"op": "tlb_remove_tlb_entry", "addr": addr},
        {"op": "tlb_remove_tlb_entry", "addr": addr + size - ps},
    ],
    "tlb_remove_pmd_tlb_entry": lambda ps, addr: [{"op": "tlb_remove_pmd_tlb_entry",
                                                   "addr": addr}],
    "tlb_remove_huge_tlb_entry": lambda ps, addr, size: [
        {"op": "tlb_remove_huge_tlb_entry", "addr": addr, "size": size}
    ],
    "tlb_remove_page_size": lambda ps, page, size: [{"op": "tlb_remove_page_size",
                                                     "page": page, "size": size}],
    "tlb_flush_mmu_tlbonly": lambda ps: [{"op": "tlb_flush_mmu_tlbonly"}],
    "tlb_flush_mmu": lambda ps: [{"op": "tlb_flush_mmu"}],
    "pte_free_tlb": lambda ps, table, addr: [{"op": "pte_free_tlb", "table": table,
                                             "addr": addr}],
    "pmd_free_tlb": lambda ps, table, addr: [{"op": "pmd_free_tlb", "table": table,
                                             "addr": addr}],
    "pud_free_tlb": lambda ps, table, addr: [{"op": "pud_free_tlb", "table": table,
                                             "addr": addr}],
    "p4d_free_tlb": lambda ps, table, addr: [{"op": "p4d_free_tlb", "table": table,
                                             "addr": addr}],
    "tlb_finish_mmu": lambda ps, nested=False: [{"op": "tlb_finish_mmu", "nested": nested}],
}


def record_engine_calls(monkeypatch: Any, page_size: int = PS) -> list[dict[str, Any]]:
    """Make every gather the callers start a :class:`RecordingGather`; returns
    the log the calls go to, as replay-v1 ops."""
    from mmugather.core import gather
    from mmugather.core.callers import memory, mmap

    log: list[dict[str, Any]] = []

    def partial(machine: Machine, mm: Any) -> Any:
        log.append({"op": "tlb_gather_mmu", "fullmm": False})
        return RecordingGather(gather.tlb_gather_mmu(machine, mm), log, page_size)

    def full(machine: Machine, mm: Any) -> Any:
        log.append({"op": "tlb_gather_mmu", "fullmm": True})
        return RecordingGather(gather.tlb_gather_mmu_fullmm(machine, mm), log, page_size)

    # exit_mmap() and unmap_region() start theirs in mm/mmap.c,
    # zap_page_range_single() in mm/memory.c.
    monkeypatch.setattr(mmap, "tlb_gather_mmu", partial)
    monkeypatch.setattr(mmap, "tlb_gather_mmu_fullmm", full)
    monkeypatch.setattr(memory, "tlb_gather_mmu", partial)
    return log
