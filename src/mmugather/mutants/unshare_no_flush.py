"""``unshare-no-flush``: ``__unmap_hugepage_range()`` unshares a hugetlb PMD
table and records nothing to flush, as before a4a118f2eead
(CVE-2021-4002).

``huge_pmd_unshare()`` clears this mm's PUD entry to a PMD table shared with
another process and drops its reference; no huge entry is cleared, so the
gather's range does not grow.  The TLBs of this mm's CPUs still hold the
huge pages (and the PUD-level walk-cache entry to the table) once
``i_mmap_rwsem`` is dropped: the other process may then unmap, free and
reuse the pages and the table while this one still reaches them.  v6.5
records the whole PUD range (``tlb_flush_pmd_range()``) and forces the
flush before the lock goes.  Caught by the checker's ``stale-after-unmap``
(``hugetlb-shared``) and by the explorer (``hugetlb-unshare-munmap``).
"""

from __future__ import annotations

from mmugather.core.arch import ArchSpec
from mmugather.core.callers.hugetlb import Hugetlb
from mmugather.core.gather import MmuGather
from mmugather.mutants.base import Mutant


class UnshareNoFlush(Hugetlb):
    """An unshare leaves the gather as it was."""

    __slots__ = ()

    def huge_pmd_unshare_flush(self, tlb: MmuGather, address: int) -> bool:
        return False


def shares_pmd_tables(spec: ArchSpec) -> bool:
    """where hugetlb PMD tables are shared between processes
    (ARCH_WANT_HUGE_PMD_SHARE: x86-64, arm64)"""
    return "ARCH_WANT_HUGE_PMD_SHARE" in spec.resolved_features()


MUTANT = Mutant(
    name="unshare-no-flush",
    description="__unmap_hugepage_range() unshares a hugetlb PMD table without recording "
    "the PUD range it unmapped: no flush before i_mmap_rwsem is dropped",
    rule="stale-after-unmap",
    breaks="after huge_pmd_unshare() the whole PUD range it unmapped is flushed before "
    "i_mmap_rwsem is dropped: then the other sharer may free and reuse the pages and "
    "the table",
    applies=shares_pmd_tables,
    fixed_by="a4a118f2eead (\"hugetlbfs: flush TLBs correctly after huge_pmd_unshare\", "
    "v5.16, CVE-2021-4002)",
    callers={"hugetlb": UnshareNoFlush},
    changes="__unmap_hugepage_range()",
    scenario="hugetlb-shared",
    explore="hugetlb-unshare-munmap",
    prop="stale-after-return",
)
