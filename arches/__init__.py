"""The built-in arch configurations: the five of the replay contract and the
real arches as v6.5 builds them (x86-64, arm64, powerpc radix).

Each is a composition of feature plugins (as Kconfig selects them) and, for
s390 and the real arches, a plugin of its own.  Third-party arches provide
the same hook, ``mmugather_add_arches``, from a module named in the
``mmugather.arches`` entry-point group.
"""

from __future__ import annotations

from mmugather.arches import arm64, powerpc, s390, x86_64
from mmugather.core.arch import ArchSpec
from mmugather.core.constants import Geometry
from mmugather.core.hookspecs import hookimpl

GENERIC_SMP = ArchSpec(
    name="generic-smp",
    description="CONFIG_SMP, generic range tlb_flush(), page tables queued as pages, "
    "rmap removal batched",
    features=("SMP",),
    geometry=Geometry,
)

UP = ArchSpec(
    name="up",
    description="!CONFIG_SMP: no rmap batching, the caller removes rmaps one by one",
    features=(),
    geometry=Geometry,
)

PAGE_SIZE = ArchSpec(
    name="page-size",
    description="generic-smp plus MMU_GATHER_PAGE_SIZE (a page-size change flushes)",
    features=("SMP", "MMU_GATHER_PAGE_SIZE"),
    geometry=Geometry,
)

RCU_TABLE_FREE = ArchSpec(
    name="rcu-table-free",
    description="generic-smp plus MMU_GATHER_RCU_TABLE_FREE: page tables batched and "
    "freed after RCU, single-table fallback with an IPI",
    features=("SMP", "MMU_GATHER_RCU_TABLE_FREE"),
    geometry=Geometry,
)

BUILTIN = (
    GENERIC_SMP, UP, s390.SPEC, PAGE_SIZE, RCU_TABLE_FREE,
    x86_64.SPEC,
    arm64.SPEC, arm64.SPEC_TLBIRANGE,
    powerpc.SPEC,
)

#: The arch used when none is named (the tox matrix sets MMUGATHER_ARCH).
DEFAULT_ARCH = "generic-smp"


@hookimpl
def mmugather_add_arches() -> list[ArchSpec]:
    return list(BUILTIN)
