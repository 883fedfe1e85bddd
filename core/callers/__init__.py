"""The callers of the gather, split along the kernel's own files.

Each module follows one kernel file and names it, with the version it
follows, in its docstring; functions keep the kernel's names.

=====================  =====================================================
module                 kernel file
=====================  =====================================================
``memory``             mm/memory.c: the zap walk, ``zap_pte_range()``
``memory_pgtables``    mm/memory.c: ``free_pgtables()`` and its walk
``memory_v6_9``        mm/memory.c of v6.9: the ``folio_pte_batch()`` loop
``mmap``               mm/mmap.c: ``exit_mmap()``, ``munmap()``
``huge_memory``        mm/huge_memory.c: ``zap_huge_pmd()``, THP split
``hugetlb``            mm/hugetlb.c: ``__unmap_hugepage_range()``
``madvise``            mm/madvise.c: MADV_DONTNEED
``rmap``               mm/rmap.c: ``page_remove_rmap()`` and friends
``swap``               mm/swap.c, swap_state.c, swapfile.c: references
``model``              the gather's calls into rmap and swap (``MmModel``)
``context``            the state they share (:class:`ZapContext`)
=====================  =====================================================

:func:`make_callers` builds one object per file over one
:class:`ZapContext`, with the classes a strategy picks (which
``zap_pte_range()``, which ``mm/rmap.c``) and any class a caller mutant
puts in their place (:mod:`mmugather.mutants`).  ``docs/concepts.md``
maps every modelled kernel function to its class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from mmugather.core.aspace import AddressSpace
from mmugather.core.callers.context import UNMAP_DETAILS, ZapContext, ZapDetails
from mmugather.core.callers.huge_memory import HugeMemory
from mmugather.core.callers.hugetlb import Hugetlb
from mmugather.core.callers.madvise import Madvise
from mmugather.core.callers.memory import LegacyMemory, Memory
from mmugather.core.callers.memory_pgtables import FreePgtables
from mmugather.core.callers.memory_v6_9 import FolioBatchMemory
from mmugather.core.callers.mmap import Mmap
from mmugather.core.callers.model import GatherModel
from mmugather.core.callers.rmap import Rmap, SeriesRmap
from mmugather.core.callers.swap import Swap
from mmugather.core.mm import Machine

__all__ = [
    "PARTS",
    "UNMAP_DETAILS",
    "Callers",
    "ZapContext",
    "ZapDetails",
    "caller_classes",
    "make_callers",
    "run_ops",
]

#: Strategy.caller -> the class whose zap_pte_range() it runs
MEMORY: dict[str, type[Memory]] = {
    "seed": Memory,
    "legacy": LegacyMemory,
    "folio-batch": FolioBatchMemory,
}

#: Strategy.rmap -> its mm/rmap.c
RMAP: dict[str, type[Rmap]] = {"v6.5": Rmap, "series": SeriesRmap}

#: The parts a teardown is made of, each the class of one kernel file (the
#: names are Callers' fields), with the class every strategy starts from.
PARTS: dict[str, type] = {
    "memory": Memory,
    "pgtables": FreePgtables,
    "mmap": Mmap,
    "huge_memory": HugeMemory,
    "hugetlb": Hugetlb,
    "madvise": Madvise,
    "rmap": Rmap,
    "swap": Swap,
}


def caller_classes(caller: str = "seed", rmap: str = "v6.5") -> dict[str, type]:
    """The class of each part for a strategy's ``caller`` and ``rmap``."""
    try:
        classes = {**PARTS, "memory": MEMORY[caller], "rmap": RMAP[rmap]}
    except KeyError as exc:
        raise ValueError(f"unknown caller flavour {exc.args[0]!r}") from None
    return classes


@attrs.define(slots=True, eq=False)
class Callers:
    """One teardown's callers: an object per kernel file over one context."""

    ctx: ZapContext
    memory: Memory
    pgtables: FreePgtables
    mmap: Mmap
    huge_memory: HugeMemory
    hugetlb: Hugetlb
    madvise: Madvise
    rmap: Rmap
    swap: Swap
    #: the machine's MmModel
    model: GatherModel


def make_callers(
    aspace: AddressSpace,
    machine: Machine,
    *,
    classes: Mapping[str, type] | None = None,
    report: Callable[[str, str], None] | None = None,
    rmap_observer: Callable[[Iterable[int], int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    fast: bool = False,
) -> Callers:
    """The callers that tear ``aspace`` down through ``machine``'s gather,
    which from now on keeps the address space in step (``machine.model``).

    ``classes`` maps parts (:data:`PARTS`) to the class to use; by default
    those of the seed patch (:func:`caller_classes`).  ``fast``: take the
    table-at-a-time fast paths where they apply (``mmugather run`` does);
    off by default, since they clear a table's run of entries at once, where
    the explorer stops after each entry.
    """
    cls: dict[str, Any] = {**PARTS, **(classes or {})}
    ctx = ZapContext(aspace, machine, report=report, rmap_observer=rmap_observer,
                     progress=progress, fast=fast)
    rmap = cls["rmap"](ctx)
    swap = cls["swap"](ctx, rmap)
    huge_memory = cls["huge_memory"](ctx, rmap, swap)
    rmap.huge_memory = huge_memory
    hugetlb = cls["hugetlb"](ctx, rmap)
    memory = cls["memory"](ctx, rmap, swap, huge_memory, hugetlb)
    pgtables = cls["pgtables"](ctx)
    callers = Callers(
        ctx=ctx,
        memory=memory,
        pgtables=pgtables,
        mmap=cls["mmap"](ctx, memory, pgtables, hugetlb),
        huge_memory=huge_memory,
        hugetlb=hugetlb,
        madvise=cls["madvise"](ctx, memory),
        rmap=rmap,
        swap=swap,
        model=GatherModel(ctx, rmap, swap),
    )
    machine.model = callers.model
    return callers


def run_ops(callers: Callers, ops: Sequence[dict[str, Any]], rcu_at_end: bool = True) -> None:
    """Run scenario operations in order; a grace period ends the run so that
    RCU-freed tables are freed too.

    An operation with ``nested`` runs while another thread's gather is in
    flight on the mm (inc_tlb_flush_pending() by a concurrent
    MADV_DONTNEED, mprotect() or migration under the mmap read lock, which
    munmap() also holds once it has detached its VMAs): its own
    tlb_finish_mmu() then finds mm_tlb_flush_nested() true."""
    complete = callers.ctx.complete
    mm = callers.ctx.mm
    for op in ops:
        kind = op["kind"]
        zapped: list[tuple[int, int]] = []
        nested = op.get("nested", False)
        if nested:
            mm.tlb_flush_pending += 1
        if kind == "exit":
            callers.mmap.exit_mmap()
        elif kind == "munmap":
            callers.mmap.munmap(op["start"], op["end"])
        elif kind == "madvise_dontneed":
            zapped = callers.madvise.madvise_dontneed(op["start"], op["end"])
        else:  # pragma: no cover - the scenario validator rejects others
            raise ValueError(f"unknown operation {kind!r}")
        if nested:
            mm.tlb_flush_pending -= 1
        if complete is not None:
            complete.after_op(op, zapped)
    if rcu_at_end:
        callers.ctx.machine.rcu_grace_period()
