"""``ceiling-next-end``: munmap() gives ``free_pgtables()`` a ceiling taken
from the end of the next VMA instead of its start.

``unmap_region()`` frees only the page tables that no VMA outside
[floor, ceiling) can use: the ceiling is ``next->vm_start``.  With
``next->vm_end``, every table that covers the gap and the start of the next
VMA passes the test: a PTE table still holding the next VMA's live PTEs is
unhooked and freed, with no page-table lock taken (free_pgtables() assumes
nobody else can reach that span).  The next VMA's pages lose their mappings
(an anonymous page's data is gone at the next fault), and a fault there,
under the downgraded mmap_lock, may be filling the table while it is
freed.  No kernel commit: the rule of ``free_pgd_range()``'s ceiling.

The checker has no rule for a table freed with live entries (the
completeness rules of check_mm() will); the explorer's ``munmap-ceiling``
shows the lost mapping (``lost-mapping``).
"""

from __future__ import annotations

from mmugather.core.aspace import MmVma
from mmugather.core.callers.mmap import FIRST_USER_ADDRESS, USER_PGTABLES_CEILING, Mmap
from mmugather.mutants.base import Mutant, always


class CeilingNextEnd(Mmap):
    """unmap_region()'s bounds with the next VMA's end as the ceiling."""

    __slots__ = ()

    def unmap_region_bounds(self, prev: MmVma | None, nxt: MmVma | None) -> tuple[int, int]:
        floor = prev.end if prev is not None else FIRST_USER_ADDRESS
        ceiling = nxt.end if nxt is not None else USER_PGTABLES_CEILING
        return floor, ceiling


MUTANT = Mutant(
    name="ceiling-next-end",
    description="munmap() frees page tables up to the end of the next VMA, not its start",
    rule="",
    breaks="free_pgtables() frees only tables no VMA outside [floor, ceiling) can use: the "
    "ceiling is the next VMA's start, or a table still mapping it goes",
    applies=always,
    callers={"mmap": CeilingNextEnd},
    changes="unmap_region()",
    scenario="",
    explore="munmap-ceiling",
    prop="lost-mapping",
)
