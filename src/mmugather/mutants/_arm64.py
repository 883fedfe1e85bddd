"""What the arm64 mutants share: a plugin that runs arm64's ``tlb_flush()``
with one of its steps replaced, on an arch whose flush is arm64's."""

from __future__ import annotations

from types import SimpleNamespace

from mmugather.arches.arm64 import Arm64, arm64_of
from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl


def applies(spec: ArchSpec) -> bool:
    """arm64 and arm64-tlbirange (any configuration whose flush is arm64's)."""
    return arm64_of(spec) is not None


def flush_with(mutant: type[Arm64]) -> SimpleNamespace:
    """A plugin whose ``tlb_flush`` is arm64's with ``mutant``'s steps, on
    the arch's own range support; elsewhere it leaves the arch's flush."""

    @hookimpl(tryfirst=True)
    def tlb_flush(tlb: MmuGather) -> bool | None:
        arch = arm64_of(tlb.machine.arch)
        if arch is None:
            return None
        return mutant(tlb_range=arch.tlb_range).tlb_flush(tlb)

    return SimpleNamespace(tlb_flush=tlb_flush)
