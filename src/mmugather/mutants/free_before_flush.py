"""free-before-flush: pages freed as they are handed to the gather.

An engine plugin: its ``__tlb_remove_page_size()`` frees the page at once
and never reports a full queue, as s390's does, on an arch whose TLB still
holds the entry.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl
from mmugather.mutants.base import Mutant, gathering


class FreeBeforeFlush:
    """The plugin."""

    @staticmethod
    @hookimpl(tryfirst=True)
    def tlb_page_remover(tlb: MmuGather) -> PageRemover:
        free = tlb.free_page_and_swap_cache

        def free_now(page: int, page_size: int, flags: int = 0) -> bool:
            free(page)
            return False

        return free_now


MUTANT = Mutant(
    name="free-before-flush",
    description="free each page as it is handed to the gather, before any TLB flush",
    rule="page-reachable",
    breaks="unhook, invalidate the TLB, then free (asm-generic/tlb.h): a page freed while "
    "a TLB may still map it can be read or written after it is reused",
    applies=gathering,
    plugin=FreeBeforeFlush(),
)
