"""Arch configurations: what they are made of, where they come from, and how
one becomes a running :class:`~mmugather.core.mm.Machine`.

An :class:`ArchSpec` names its Kconfig-style features (each implemented by a
plugin in :mod:`mmugather.plugins`) and its own plugin modules for what only
it does.  Specs are collected through the ``mmugather_add_arches`` hook from
the built-in :mod:`mmugather.arches` and from every module registered in the
``mmugather.arches`` entry-point group, the way pytest finds ``pytest11``
plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import attrs
import pluggy
from mmugather.core import hookspecs
from mmugather.core.constants import PAGE_SIZES, Geometry
from mmugather.core.events import Emit, PageRows
from mmugather.core.hw.cpus import DEFAULT_CPUS, CpuConfig
from mmugather.core.mm import Machine

ENTRY_POINT_GROUP = "mmugather.arches"


class ArchError(Exception):
    """An unknown arch, a bad page size, or a broken arch plugin."""


@attrs.frozen(slots=True)
class ArchSpec:
    """One arch configuration: what an arch author writes (``docs/hooks.md``,
    "Arch configurations"; ``docs/tutorial-new-arch.md`` builds one).

    A machine for it (:func:`make_machine`) registers the generic plugin,
    then one plugin per feature, then ``plugins``: each later one overrides
    the hooks of those before.  Hooks reach the spec of the machine they
    run on as ``tlb.machine.arch``.
    """

    #: the name commands and tests select it by (``--arch NAME``); unique
    #: in the registry
    name: str
    #: one line for ``mmugather arches``: what the arch does that others do not
    description: str
    #: the Kconfig-style features it selects, each a plugin of
    #: :mod:`mmugather.plugins` (``SMP``, ``MMU_GATHER_RCU_TABLE_FREE``...;
    #: :meth:`resolved_features` adds what each selects)
    features: tuple[str, ...] = ()
    #: its own plugins (modules or objects with ``hookimpl`` functions):
    #: what only this arch does, ``tlb_flush()`` first of all
    plugins: tuple[Any, ...] = ()
    #: PAGE_SIZE -> the :class:`~mmugather.core.constants.Geometry` the
    #: arch compiles in (its shifts, folded levels and TASK_SIZE); the
    #: default derives a five-level x86-like one
    geometry: Callable[[int], Geometry] = Geometry
    #: the PAGE_SIZEs it supports; the first is the default (``mmugather
    #: run`` falls back to 4096 when a scenario does not fit the first)
    page_sizes: tuple[int, ...] = PAGE_SIZES
    #: where it came from: "built-in", "entry point NAME (DIST VERSION)" or
    #: "plugin NAME" (set by the registry, not by the author)
    origin: str = "built-in"

    def resolved_features(self) -> list[str]:
        """Features with what they select, in a stable order."""
        from mmugather.plugins import SELECTS

        out: list[str] = []
        for feat in self.features:
            for dep in (feat, *SELECTS.get(feat, ())):
                if dep not in out:
                    out.append(dep)
        return out


def _builtin_module() -> ModuleType:
    from mmugather import arches

    return arches


class ArchRegistry:
    """Every arch the installation knows, by name."""

    def __init__(self, *, entry_points: bool = True, extra: Sequence[Any] = ()) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(_builtin_module(), name="mmugather.arches")
        origins: dict[str, str] = {}
        if entry_points:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            for plugin, dist in pm.list_plugin_distinfo():
                origins[pm.get_name(plugin) or ""] = (
                    f"entry point {pm.get_name(plugin)} ({dist.project_name} {dist.version})"
                )
        for plugin in extra:
            pm.register(plugin)
            origins[pm.get_name(plugin) or ""] = f"plugin {getattr(plugin, '__name__', plugin)}"
        self._specs: dict[str, ArchSpec] = {}
        for impl in pm.hook.mmugather_add_arches.get_hookimpls():
            where = origins.get(impl.plugin_name, "built-in")
            provided: list[Any] = impl.function() or []  # type: ignore[operator,assignment]
            for spec in provided:
                if not isinstance(spec, ArchSpec):
                    raise ArchError(f"{impl.plugin_name}: mmugather_add_arches returned {spec!r}")
                if spec.name in self._specs:
                    raise ArchError(
                        f"arch {spec.name!r} from {where} is already provided by "
                        f"{self._specs[spec.name].origin}"
                    )
                if where != "built-in":
                    spec = attrs.evolve(spec, origin=where)
                self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return list(self._specs)

    def get(self, name: str) -> ArchSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs)
            raise ArchError(f"unknown arch {name!r} (known: {known})") from None

    def __iter__(self) -> Any:
        return iter(self._specs.values())


_default_registry: ArchRegistry | None = None


def registry() -> ArchRegistry:
    """The process-wide registry (built-ins plus entry points), built once."""
    global _default_registry
    if _default_registry is None:
        _default_registry = ArchRegistry()
    return _default_registry


def plugin_manager(spec: ArchSpec, *, extra_plugins: Sequence[Any] = ()) -> pluggy.PluginManager:
    """The hooks of one arch: generic defaults, its features, its own plugins,
    then ``extra_plugins`` (strategies, mutants, observers), each overriding
    what came before."""
    from mmugather.plugins import FEATURES, generic

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(generic, name="generic")
    for feat in spec.resolved_features():
        try:
            module = FEATURES[feat]
        except KeyError:
            raise ArchError(
                f"arch {spec.name!r} selects unknown feature {feat!r} "
                f"(known: {', '.join(FEATURES)})"
            ) from None
        pm.register(module, name=f"feature:{feat}")
    for i, plugin in enumerate(spec.plugins):
        pm.register(plugin, name=f"arch:{spec.name}:{i}")
    for i, plugin in enumerate(extra_plugins):
        pm.register(plugin, name=f"extra:{i}:{getattr(plugin, '__name__', type(plugin).__name__)}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ArchError(f"arch {spec.name!r}: {exc}") from None
    return pm


def make_machine(
    arch: str | ArchSpec,
    *,
    page_size: int | None = None,
    emit: Emit | None = None,
    detail: Emit | None = None,
    extra_plugins: Sequence[Any] = (),
    strategy: str | None = None,
    rows: PageRows | None = None,
    cpus: CpuConfig | None = None,
    hw_emit: Emit | None = None,
) -> Machine:
    """A modelled kernel for ``arch`` at ``page_size`` (the arch's first
    supported size by default).

    ``strategy`` names the rmap-removal strategy (``core/strategies.py``);
    its engine plugins are registered before ``extra_plugins``.  ``None``:
    the one in force (``strategies.selected()``), ``pointer`` by default.
    ``rows`` goes with ``emit`` when both come from ``events.make_stream``.
    ``cpus`` says who runs the mm (two CPUs with a thread each by default;
    a !CONFIG_SMP arch has CPU 0 alone); ``hw_emit`` receives the hardware
    events (``tlb_invalidate``...), for a hardware model to follow.
    """
    from mmugather.core import strategies

    extra_plugins = (*strategies.resolve(strategy).plugins, *extra_plugins)
    spec = registry().get(arch) if isinstance(arch, str) else arch
    size = spec.page_sizes[0] if page_size is None else page_size
    if size not in spec.page_sizes:
        sizes = ", ".join(str(s) for s in spec.page_sizes)
        raise ArchError(f"arch {spec.name!r} supports PAGE_SIZE {sizes}, not {size}")
    pm = plugin_manager(spec, extra_plugins=extra_plugins)
    geometry = spec.geometry(size)
    if "MMU_GATHER_RCU_TABLE_FREE" not in spec.resolved_features():
        # struct mmu_table_batch has an rcu_head only under RCU table free:
        # without it the header is the (padded) count alone.
        geometry = attrs.evolve(geometry, table_batch_header=8)
    smp = "SMP" in spec.resolved_features()
    machine_cpus = (cpus or DEFAULT_CPUS).for_arch(None if smp else 1)
    semantics = pm.hook.mmu_hw_semantics(arch=spec)
    return Machine(arch=spec, geometry=geometry, hook=pm.hook, emit=emit, detail=detail,
                   rows=rows, cpus=machine_cpus, hw=semantics, hw_emit=hw_emit)
