"""Feature plugins: the behaviours Kconfig selects, one module each.

An arch is composed from these (``ArchSpec.features``) plus its own module
for what only it does.  :mod:`.generic` holds the defaults and is registered
``trylast`` so that every other plugin overrides it.
"""

from __future__ import annotations

from types import ModuleType

from mmugather.plugins import (
    batched_unmap,
    huge_pmd_share,
    merge_vmas,
    no_gather,
    page_size,
    rcu_table_free,
    rmap_pointer,
    table_free,
)

#: Kconfig-style feature name -> the plugin that implements it.
FEATURES: dict[str, ModuleType] = {
    "SMP": rmap_pointer,
    "MMU_GATHER_PAGE_SIZE": page_size,
    "MMU_GATHER_TABLE_FREE": table_free,
    "MMU_GATHER_RCU_TABLE_FREE": rcu_table_free,
    "MMU_GATHER_NO_GATHER": no_gather,
    "MMU_GATHER_MERGE_VMAS": merge_vmas,
    "ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH": batched_unmap,
    "ARCH_WANT_HUGE_PMD_SHARE": huge_pmd_share,
}

#: Features that bring others with them, as Kconfig ``select`` does.
SELECTS: dict[str, tuple[str, ...]] = {
    "MMU_GATHER_RCU_TABLE_FREE": ("MMU_GATHER_TABLE_FREE",),
}
