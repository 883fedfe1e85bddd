"""``arm64-ttl-off``: arm64's TTL hint names the level above the entries
cleared (PTEs hinted as level 2, PMD blocks as level 1).

With FEAT_TTL, a TLBI whose hint names the wrong level need invalidate
nothing (Arm ARM, TLBI VAE1/VALE1, TTL field): the leaf entries of the
unmapped range stay usable on every CPU.  52218fcd61cb ("arm64: tlb: fix
the TTL value of tlb_get_level") fixed a hint of this kind: level 2 for a
flush whose entries were no level-2 leaves.  Caught by ``page-reachable``.
"""

from __future__ import annotations

import attrs

from mmugather.arches.arm64 import Arm64
from mmugather.core.gather import MmuGather
from mmugather.mutants._arm64 import applies as _applies
from mmugather.mutants._arm64 import flush_with
from mmugather.mutants.base import Mutant


@attrs.frozen(slots=True)
class TtlOneLevelUp(Arm64):
    def tlb_get_level(self, tlb: MmuGather) -> int:
        level = Arm64.tlb_get_level(self, tlb)
        return level - 1 if level else 0


PLUGIN = flush_with(TtlOneLevelUp)


MUTANT = Mutant(
    name="arm64-ttl-off",
    description="arm64's TTL hint names the level above the entries cleared; with a wrong hint "
    "the TLBI need invalidate nothing",
    rule="page-reachable",
    breaks="the TTL hint must name the level of the entries invalidated (Arm ARM, TLBI VAE1: "
    "with a wrong TTL no entries are required to be invalidated)",
    applies=_applies,
    fixed_by="52218fcd61cb (\"arm64: tlb: fix the TTL value of tlb_get_level\")",
    plugin=PLUGIN,
    scenario="default",
)
