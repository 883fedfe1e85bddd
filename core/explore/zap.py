"""The explorer's only door to the callers (``core/callers.py``).

Everything the explorer needs from the kernel's callers of the gather goes
through here: which Teardown class a strategy uses, building one that shares
another's mm, and running one scenario operation without the grace period
that ends a ``mmugather run``.  When the callers become a package, this is
the module to re-point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mmugather.core import strategies
from mmugather.core.aspace import AddressSpace
from mmugather.core.callers import CALLER_MUTANTS, Teardown, run_ops
from mmugather.core.mm import Machine, MmStruct

__all__ = ["CALLER_MUTANTS", "Teardown", "make_teardown", "mm_of", "run_op", "set_mm",
           "teardown_class"]


def teardown_class(strategy: str) -> type[Teardown]:
    """The Teardown (sub)class of ``strategy``'s ``zap_pte_range()``."""
    cls: type[Teardown] = strategies.resolve(strategy).teardown_class()
    return cls


def make_teardown(
    aspace: AddressSpace,
    machine: Machine,
    *,
    strategy: str,
    caller_mutants: Sequence[str] = (),
    report: Callable[[str, str], None] | None = None,
    rmap_observer: Callable[[Iterable[int], int], None] | None = None,
    mm: MmStruct | None = None,
) -> Teardown:
    """A zapping thread's callers over ``aspace``.  ``mm``: the mm another
    thread already tears down (two threads of one process share it, and with
    it ``tlb_flush_pending``)."""
    td = teardown_class(strategy)(aspace, machine, mutants=list(caller_mutants), report=report,
                                  rmap_observer=rmap_observer)
    if mm is not None:
        td.mm = mm
    return td


def mm_of(teardown: Teardown) -> MmStruct:
    return teardown.mm


def set_mm(teardown: Teardown, mm: MmStruct) -> None:
    """Give a thread's callers another (equal) mm before they start."""
    teardown.mm = mm


def run_op(teardown: Teardown, op: dict[str, Any]) -> None:
    """One system call of a scenario (``munmap``, ``madvise_dontneed``,
    ``exit``), with no grace period after it: the explorer runs those as an
    actor of their own."""
    run_ops(teardown, [op], rcu_at_end=False)
