"""The fix 1013af4f585f ("mm/hugetlb: fix huge_pmd_unshare() vs GUP-fast
race", 2025, CVE-2025-38085), newer than v6.5: selected as a fix
(``core/fixes.py``), never by an arch.

``huge_pmd_unshare()`` clears this mm's PUD entry to a PMD table shared
with another process and drops its reference: from then on the other
process may own the table alone, change it or free it.  A gup_fast()
walker of this mm that read the PUD entry before the clear, interrupts
off, may still be inside the table, and on an arch whose TLB flush does
not wait for it nothing makes it leave.  The fix waits for every such
walker between the clear and the reference drop, as khugepaged does before
it frees a table it retracted: ``tlb_remove_table_sync_one()``, an IPI to
every CPU where tables are freed through RCU (elsewhere the flush's own IPI
waits, and it is empty).
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather
from mmugather.core.hookspecs import hookimpl


@hookimpl
def huge_pmd_unshare_sync(tlb: MmuGather) -> bool:
    tlb.hook.tlb_remove_table_sync_one(tlb=tlb)
    return True
