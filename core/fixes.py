"""Fixes: kernel commits newer than v6.5 that the model can add, by commit.

The model is v6.5 with the seed patch.  Where v6.5 has a bug that upstream
fixed later, the fix is a plugin apart from the correct-as-of-v6.5 code,
selected by its commit id (``mmugather explore --fix ID``,
``Config(fixes=...)``, ``run_arch(fixes=...)``, ``make_machine(extra_plugins=
get(ID).plugin)``): the explorer finds the race on v6.5 and, with the fix,
not.  ``docs/explorer.md`` lists them.
"""

from __future__ import annotations

from types import ModuleType

import attrs


@attrs.frozen
class Fix:
    #: the commit's short id
    commit: str
    #: its title
    title: str
    #: what v6.5 lacks, in words
    description: str
    #: the plugin that adds it (registered after the arch's and the strategy's)
    plugin: ModuleType


def _fixes() -> dict[str, Fix]:
    from mmugather.plugins import unshare_sync

    return {f.commit: f for f in (
        Fix("1013af4f585f", "mm/hugetlb: fix huge_pmd_unshare() vs GUP-fast race",
            "huge_pmd_unshare() waits for interrupts-off gup_fast() walkers "
            "(tlb_remove_table_sync_one()) before it drops its reference on a shared PMD "
            "table (CVE-2025-38085)", unshare_sync),
    )}


def names() -> list[str]:
    return list(_fixes())


def get(commit: str) -> Fix:
    try:
        return _fixes()[commit]
    except KeyError:
        raise ValueError(f"unknown fix {commit!r} (known: {', '.join(names())})") from None
