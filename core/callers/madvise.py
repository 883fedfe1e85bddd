"""mm/madvise.c of v6.5: MADV_DONTNEED.

:class:`Madvise` walks the VMAs of the range (``madvise_walk_vmas()``)
and zaps each one's part (``madvise_dontneed_single_vma()`` →
``zap_page_range_single()``); the page tables stay.
"""

from __future__ import annotations

import attrs
from mmugather.core.callers.context import ZapContext
from mmugather.core.callers.memory import Memory


@attrs.define(slots=True, eq=False)
class Madvise:
    """madvise(MADV_DONTNEED)."""

    ctx: ZapContext
    memory: Memory

    def madvise_dontneed(self, start: int, end: int) -> list[tuple[int, int]]:
        """MADV_DONTNEED on [start, end): zap_page_range_single() per VMA.
        Returns the ranges zapped."""
        zapped: list[tuple[int, int]] = []
        for vma in [v for v in self.ctx.aspace.vmas if v.start < end and v.end > start]:
            # madvise_walk_vmas() stops at the first VMA it refuses (EINVAL):
            # VM_PFNMAP, or a hugetlb range not starting on a huge page.
            if vma.kind == "pfnmap":
                break
            lo, hi = max(start, vma.start), min(end, vma.end)
            if vma.is_hugetlb:
                mask = vma.hpage_size - 1
                if lo & mask:
                    break
                hi &= ~mask
                if hi <= lo:
                    continue
            self.memory.zap_page_range_single(vma, lo, hi, None)
            zapped.append((lo, hi))
        return zapped
