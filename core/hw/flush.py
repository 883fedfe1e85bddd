"""The generic flush primitives: ``flush_tlb_mm()`` and ``flush_tlb_range()``
of an arch that has nothing more specific to say.

Both reach every CPU of ``mm_cpumask()`` and drop every level: leaf entries
and the walk-cache entries used to translate what they name.  Whether they
wait for the CPUs (an IPI) is the arch's :class:`HwSemantics.flush_waits`.
Real arches build their own :class:`Invalidate` records (``arches/``).
"""

from __future__ import annotations

from mmugather.core.hw.invalidate import WALK_ASID, WALK_VA, Invalidate
from mmugather.core.mm import Machine, MmStruct


def flush_tlb_mm(machine: Machine, mm: MmStruct) -> Invalidate:
    """Everything of the mm's ASID, on every CPU that holds the mm."""
    return Invalidate("flush_tlb_mm", cpus=mm.cpumask, walk=WALK_ASID,
                      waits=machine.hw.flush_waits)


def flush_tlb_range(machine: Machine, mm: MmStruct, start: int, end: int) -> Invalidate:
    """Every entry translating an address of [start, end), on every CPU that
    holds the mm."""
    return Invalidate("flush_tlb_range", cpus=mm.cpumask, start=start, end=end, walk=WALK_VA,
                      waits=machine.hw.flush_waits)
