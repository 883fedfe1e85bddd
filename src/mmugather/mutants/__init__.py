"""Mutants: deliberately broken variants that prove the checker can fail.

Each lives in a module of its own and overrides one step of the correct
model, which knows nothing of them:

* an engine or arch mutant is a pluggy plugin registered after the arch's
  own (and the strategy's), so its hooks win;
* a caller mutant is a subclass of one of the callers' classes
  (:mod:`mmugather.core.callers`) that overrides a step, put in front of the
  class the strategy uses.  A strategy whose class already overrides that
  step (another kernel version of the function) cannot take it.

Select one by name: ``run_arch(..., mutant=NAME)``, ``mmugather run
--mutant NAME``.  ``applies`` says on which arches the broken order is
actually wrong: on ``up`` removing a dirty page's rmap before the flush is
what the kernel does, and rightly so.

To add one: a module here defining ``MUTANT``, and a line in
:data:`MODULES`.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from mmugather.mutants import (
    arm64_last_level,
    arm64_no_rcu_table_free,
    arm64_range_round_down,
    arm64_ttl_off,
    ceiling_next_end,
    direct_table_free,
    flush_rmaps_after_unlock,
    free_before_flush,
    free_before_flush_rmaps,
    nested_drops_freed_tables,
    no_discard_rmaps,
    no_flush_batched_pending,
    no_nested_flush,
    no_pmd_revisit,
    pfnmap_no_flush,
    rmap_before_flush,
    thp_rmap_after_unlock,
    unshare_no_flush,
    x86_pmd_stride,
)
from mmugather.mutants.base import Mutant

if TYPE_CHECKING:
    from mmugather.core.strategies import Strategy

__all__ = ["MUTANTS", "Mutant", "caller_classes", "check_strategy", "get"]

#: The registry, in the order ``mmugather mutants`` lists them.
MODULES: tuple[ModuleType, ...] = (
    rmap_before_flush,
    free_before_flush,
    flush_rmaps_after_unlock,
    no_discard_rmaps,
    direct_table_free,
    x86_pmd_stride,
    arm64_last_level,
    arm64_ttl_off,
    arm64_range_round_down,
    arm64_no_rcu_table_free,
    no_flush_batched_pending,
    no_nested_flush,
    nested_drops_freed_tables,
    pfnmap_no_flush,
    thp_rmap_after_unlock,
    ceiling_next_end,
    no_pmd_revisit,
    free_before_flush_rmaps,
    unshare_no_flush,
)

MUTANTS: dict[str, Mutant] = {m.MUTANT.name: m.MUTANT for m in MODULES}


def get(name: str) -> Mutant:
    try:
        return MUTANTS[name]
    except KeyError:
        raise ValueError(f"unknown mutant {name!r} (known: {', '.join(MUTANTS)})") from None


def check_strategy(mutant: Mutant, strategy: Strategy) -> None:
    """Refuse a caller mutant whose step the strategy's caller does not run
    as the mutant expects (its class overrides the step itself)."""
    from mmugather.core.callers import PARTS
    from mmugather.core.callers import caller_classes as strategy_classes

    classes = strategy_classes(strategy.caller, strategy.rmap)
    for part, step in mutant.steps():
        if getattr(classes[part], step) is not getattr(PARTS[part], step):
            raise ValueError(
                f"mutant {mutant.name!r} changes {mutant.changes}; strategy "
                f"{strategy.name!r} has another caller"
            )


def caller_classes(mutant: Mutant | None, strategy: Strategy) -> dict[str, type]:
    """The callers' classes for ``strategy``, with ``mutant``'s overrides in
    front (:func:`check_strategy` first)."""
    from mmugather.core.callers import caller_classes as strategy_classes

    classes = strategy_classes(strategy.caller, strategy.rmap)
    if mutant is None:
        return classes
    check_strategy(mutant, strategy)
    for part, override in mutant.callers.items():
        base = classes[part]
        if not issubclass(base, override):
            classes[part] = type(f"{override.__name__}+{base.__name__}", (override, base),
                                 {"__slots__": ()})
    return classes
