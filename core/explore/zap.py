"""The explorer's only door to the callers (``core/callers/``).

Everything the explorer needs from the kernel's callers of the gather goes
through here: the callers' classes of a strategy with a mutant's overrides,
building one zapping thread's callers that share another's mm, and running
one scenario operation without the grace period that ends a ``mmugather
run``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mmugather.core import strategies
from mmugather.core.aspace import AddressSpace
from mmugather.core.callers import Callers, make_callers, run_ops
from mmugather.core.mm import Machine, MmModel, MmStruct

from mmugather.mutants import Mutant, caller_classes

__all__ = ["Callers", "classes_for", "make_teardown", "mm_of", "model_of", "run_op", "set_mm"]


def classes_for(strategy: str, mutant: Mutant | None) -> dict[str, type]:
    """The callers' classes of ``strategy``, with ``mutant``'s overrides in
    front (a ValueError when its step is not the strategy's)."""
    return caller_classes(mutant, strategies.get(strategy))


def make_teardown(
    aspace: AddressSpace,
    machine: Machine,
    *,
    classes: Mapping[str, type],
    report: Callable[[str, str], None] | None = None,
    rmap_observer: Callable[[Iterable[int], int], None] | None = None,
    mm: MmStruct | None = None,
) -> Callers:
    """A zapping thread's callers over ``aspace``.  ``mm``: the mm another
    thread already tears down (two threads of one process share it, and with
    it ``tlb_flush_pending``)."""
    callers = make_callers(aspace, machine, classes=classes, report=report,
                           rmap_observer=rmap_observer)
    if mm is not None:
        callers.ctx.mm = mm
    return callers


def mm_of(callers: Callers) -> MmStruct:
    return callers.ctx.mm


def set_mm(callers: Callers, mm: MmStruct) -> None:
    """Give a thread's callers another (equal) mm before they start."""
    callers.ctx.mm = mm


def model_of(callers: Callers) -> MmModel:
    """What the gather tells when this thread's gather removes rmaps and
    frees pages (``machine.model`` while the thread runs)."""
    return callers.model


def run_op(callers: Callers, op: dict[str, Any]) -> None:
    """One system call of a scenario (``munmap``, ``madvise_dontneed``,
    ``exit``), with no grace period after it: the explorer runs those as an
    actor of their own."""
    run_ops(callers, [op], rcu_at_end=False)
