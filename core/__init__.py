"""The mmu_gather engine: state, API, hookspecs, events and replay.

Start here::

    from mmugather.core import make_machine, MmStruct, tlb_gather_mmu, Vma

    machine = make_machine("generic-smp")
    tlb = tlb_gather_mmu(machine, MmStruct())
    tlb.tlb_start_vma(Vma(0x400000, 0x800000))
    ...
    tlb.tlb_finish_mmu()
"""

from mmugather.core.arch import ArchError, ArchRegistry, ArchSpec, make_machine, registry
from mmugather.core.batch import MmuGatherBatch
from mmugather.core.constants import Geometry
from mmugather.core.events import Collector, make_emit, make_stream
from mmugather.core.gather import (
    GatherError,
    KernelBug,
    MmuGather,
    tlb_gather_mmu,
    tlb_gather_mmu_fullmm,
)
from mmugather.core.mm import Machine, MmStruct
from mmugather.core.table import MmuTableBatch
from mmugather.core.vma import VM_EXEC, VM_HUGETLB, VM_PFNMAP, Vma

__all__ = [
    "VM_EXEC",
    "VM_HUGETLB",
    "VM_PFNMAP",
    "ArchError",
    "ArchRegistry",
    "ArchSpec",
    "Collector",
    "GatherError",
    "Geometry",
    "KernelBug",
    "Machine",
    "MmStruct",
    "MmuGather",
    "MmuGatherBatch",
    "MmuTableBatch",
    "Vma",
    "make_emit",
    "make_machine",
    "make_stream",
    "registry",
    "tlb_gather_mmu",
    "tlb_gather_mmu_fullmm",
]
