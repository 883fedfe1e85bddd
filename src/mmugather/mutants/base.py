"""The mutant record and the arch conditions mutants apply under."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather


def gathering(spec: ArchSpec) -> bool:
    """where pages are queued until the flush (not MMU_GATHER_NO_GATHER)"""
    return "MMU_GATHER_NO_GATHER" not in spec.resolved_features()


def batching(spec: ArchSpec) -> bool:
    """where rmap removal is batched (CONFIG_SMP with gathering)"""
    return gathering(spec) and "SMP" in spec.resolved_features()


def always(spec: ArchSpec) -> bool:
    """on every arch configuration"""
    return True


@attrs.frozen
class Mutant:
    """A deliberately broken variant of the model: one step overridden.

    One of: ``plugin``, engine or arch hooks registered after the arch's and
    the strategy's own, so they override them; ``callers``, for a part of
    the callers (:data:`mmugather.core.callers.PARTS`) a subclass of its
    class that overrides one step, put in front of whatever class the
    strategy uses for that part; ``gather``, a subclass of ``MmuGather``
    that overrides one step of the engine.
    """

    name: str
    description: str
    #: the checker rule (core/check RULES) it must trip in ``mmugather run``
    #: on ``scenario``; "" when the sequential checker cannot see it (only
    #: an interleaving shows it: ``explore`` and ``prop`` say where)
    rule: str
    #: the kernel's rule it breaks, in words
    breaks: str
    #: on which arch configurations the broken order is actually wrong
    applies: Callable[[ArchSpec], bool]
    #: the commit that fixed it in the kernel ("id (title)"); "" when the
    #: broken order was never in a released kernel
    fixed_by: str = ""
    plugin: Any = None
    callers: Mapping[str, type] = attrs.field(factory=dict)
    #: an engine step overridden in the gather itself: a subclass of
    #: MmuGather that tlb_gather_mmu() makes instead (Machine.gather_class)
    gather: type[MmuGather] | None = None
    #: what a caller mutant changes, for messages ("the seed patch's
    #: zap_pte_range()")
    changes: str = ""
    #: the built-in scenario that exposes it to the checker ("" if none)
    scenario: str = "default"
    #: the built-in concurrent scenario that exposes it to the explorer
    #: (``mmugather explore``), and the property it breaks there ("" if none)
    explore: str = ""
    prop: str = ""

    @property
    def where(self) -> str:
        """Where it applies, in words (the ``applies`` condition's docstring)."""
        return " ".join((self.applies.__doc__ or "").split())

    def overrides(self) -> str:
        """What it overrides, in words."""
        if self.plugin is not None:
            hooks = sorted(n for n in dir(self.plugin) if not n.startswith("_"))
            return "engine plugin: " + ", ".join(f"hook {h}" for h in hooks)
        if self.gather is not None:
            own = sorted(n for n, v in vars(self.gather).items()
                         if callable(v) and not n.startswith("__"))
            return "engine step: " + ", ".join(f"MmuGather.{n}()" for n in own)
        return "caller step: " + ", ".join(
            f"{self.callers[part].__mro__[1].__name__}.{name}()" for part, name in self.steps()
        )

    def caught_by(self) -> str:
        """Who catches it, in words."""
        out = []
        if self.rule:
            out.append(f"the checker's {self.rule} (mmugather run {self.scenario})")
        if self.explore:
            out.append(f"the explorer's {self.prop} (mmugather explore {self.explore})")
        return "; ".join(out)

    def as_json(self, specs: Iterable[ArchSpec]) -> dict[str, Any]:
        """What ``mmugather mutants --json`` says of it, with the arches of
        ``specs`` it applies to."""
        return {
            "name": self.name,
            "description": self.description,
            "rule": self.rule,
            "breaks": self.breaks,
            "where": self.where,
            "arches": [s.name for s in specs if self.applies(s)],
            "fixed_by": self.fixed_by or None,
            "scenario": self.scenario or None,
            "explore": self.explore or None,
            "property": self.prop or None,
            "overrides": self.overrides(),
        }

    def steps(self) -> list[tuple[str, str]]:
        """(part, method) of each caller step it overrides."""
        return [
            (part, name)
            for part, cls in self.callers.items()
            for name, value in vars(cls).items()
            if callable(value) and not name.startswith("__")
        ]
