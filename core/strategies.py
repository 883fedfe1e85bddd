"""Rmap-removal strategies: the seed patch and its alternatives, by name.

A strategy is a set of engine plugins that take the place of the seed
patch's rmap pointer (``plugins/rmap_pointer.py``, the ``SMP`` feature),
a caller flavour (which ``zap_pte_range()``) and an ``mm/rmap.c`` (the
classes of :mod:`mmugather.core.callers` they name).  The plugins are registered
over the arch's own (``make_machine(..., extra_plugins=strategy.plugins)``)
and change only arches whose rmap removal is batched, CONFIG_SMP with
gathering (``tlb.batch_rmap``): on ``up`` and ``s390`` every strategy is the
same behaviour.  ``docs/strategies.md`` describes them and what they cost.

Select one with ``run_arch(..., strategy=NAME)``, ``make_machine(...,
strategy=NAME)``, ``mmugather run/replay/compare --strategy NAME``, or for a
whole block of code with :func:`selected`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from types import ModuleType

import attrs

DEFAULT_STRATEGY = "pointer"

#: caller flavours: which zap_pte_range() (mmugather.core.callers.MEMORY)
CALLERS = ("seed", "legacy", "folio-batch")


@attrs.frozen
class Strategy:
    name: str
    description: str
    #: the kernel code it models
    kernel: str
    #: engine plugins registered over the arch's (replacing rmap_pointer)
    plugins: tuple[ModuleType, ...]
    #: which zap_pte_range(): "seed" (callers.memory.Memory), "legacy"
    #: (callers.memory.LegacyMemory) or "folio-batch" (v6.9,
    #: callers.memory_v6_9.FolioBatchMemory)
    caller: str
    #: which mm/rmap.c: "v6.5" (callers.rmap.Rmap) or "series"
    #: (callers.rmap.SeriesRmap)
    rmap: str = "v6.5"
    #: why a replay cannot run under it; "" when it can
    no_replay: str = ""
    #: it changes only arches whose rmap removal is batched (SMP, gathering)
    batched_only: bool = True


def _strategies() -> dict[str, Strategy]:
    from mmugather.plugins import rmap_folio_batch, rmap_legacy, rmap_ranges

    return {
        s.name: s
        for s in (
            Strategy(
                "pointer",
                "the seed patch: every page's rmap batched; tlb_flush_rmaps() walks from "
                "the rmap pointer (rmap_pend, rmap_pend_first) to the end of the queue",
                "v6.5 + \"mm/mmu_gather: generalize mmu_gather rmap removal mechanism\" "
                "(Ryan Roberts, v1 2/4)",
                (),
                "seed",
            ),
            Strategy(
                "legacy",
                "v6.5 before the seed patch: only dirty file pages delayed (delayed_rmap, "
                "the encoded page flag); tlb_next_batch() refuses a new batch while they "
                "are pending; tlb_flush_rmaps() walks tlb->local and tlb->active",
                "v6.5 mm/mmu_gather.c, include/asm-generic/tlb.h, mm/memory.c "
                "(commit 5df397dec7c4)",
                (rmap_legacy,),
                "legacy",
            ),
            Strategy(
                "ranges",
                "the rest of the series: the gather stores runs of contiguous pages of one "
                "folio (struct pfn_range); one folio_remove_rmap_range() per run, swap cache "
                "and reference drops per run",
                "\"Optimize mmap_exit for large folios\" v2 (Ryan Roberts): "
                "folio_remove_rmap_range(), \"mm/mmu_gather: Store and process pages in "
                "contig ranges\"",
                (rmap_ranges,),
                "seed",
                rmap="series",
                no_replay="a replay file records page ids, not folios: the ranges strategy "
                "needs page_folio() and folio_nr_pages() to bound its runs",
            ),
            Strategy(
                "folio-batch",
                "upstream (v6.9): legacy's delayed rmaps, plus the caller batching the PTEs "
                "of a large folio: one folio_remove_rmap_ptes() and one "
                "__tlb_remove_folio_pages() (page + nr_pages entries) per run; on every arch",
                "v6.9 mm/memory.c (zap_present_ptes), mm/mmu_gather.c "
                "(__tlb_remove_folio_pages_size), mm/rmap.c (__folio_remove_rmap): "
                "\"mm/memory: optimize unmap/zap with PTE-mapped THP\" (David Hildenbrand)",
                (rmap_folio_batch,),
                "folio-batch",
                batched_only=False,
            ),
        )
    }


_registry: dict[str, Strategy] | None = None


def strategies() -> dict[str, Strategy]:
    """Every strategy by name, ``pointer`` (the default) first."""
    global _registry
    if _registry is None:
        _registry = _strategies()
    return _registry


def names() -> list[str]:
    return list(strategies())


def get(name: str) -> Strategy:
    try:
        return strategies()[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r} (known: {', '.join(strategies())})"
        ) from None


#: The strategy in force where none is named (see :func:`selected`).
_ACTIVE: ContextVar[str] = ContextVar("mmugather_strategy", default=DEFAULT_STRATEGY)


def active() -> Strategy:
    return get(_ACTIVE.get())


@contextlib.contextmanager
def selected(name: str) -> Iterator[Strategy]:
    """Make ``name`` the strategy of every ``make_machine()``/``run_arch()``
    call in the block that names none (how ``--strategy`` reaches the
    ``run`` and ``replay`` commands)."""
    strategy = get(name)
    token = _ACTIVE.set(name)
    try:
        yield strategy
    finally:
        _ACTIVE.reset(token)


def resolve(name: str | None) -> Strategy:
    """The named strategy, or the one in force."""
    return active() if name is None else get(name)
