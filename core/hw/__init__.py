"""The hardware the gather runs on: CPUs, their TLBs and walk caches, and the
invalidation primitives (``docs/hardware.md``).

:mod:`.cpus` says who runs the mm; :mod:`.invalidate` what one flush
primitive removes (:class:`Invalidate`) and what an arch promises beyond it
(:class:`HwSemantics`); :mod:`.tlb` keeps what may still be cached
(:class:`TlbModel`), for the checker and the explorer.
"""

from mmugather.core.hw.cpus import DEFAULT_CPUS, ZAPPING_CPU, CpuConfig, cpus_of, mask_of
from mmugather.core.hw.invalidate import (
    LEVELS,
    WALK_ASID,
    WALK_NONE,
    WALK_VA,
    HwSemantics,
    Invalidate,
)
from mmugather.core.hw.tlb import Reach, TlbModel

__all__ = ["DEFAULT_CPUS", "LEVELS", "WALK_ASID", "WALK_NONE", "WALK_VA", "ZAPPING_CPU",
           "CpuConfig", "HwSemantics", "Invalidate", "Reach", "TlbModel", "cpus_of", "mask_of"]
