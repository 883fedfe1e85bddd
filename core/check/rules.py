"""The rules the checker enforces, by name (``docs/checker.md``).

A run judges by what the hardware can still reach (``hw_config`` starts the
hardware model) and by what the teardown leaves behind (the completeness
rules); a replay, which has no page tables, by the order of the gather's own
events.  The rules common to both are about the rmap API and the gather's
bookkeeping.  Each hardware rule names, in brackets, the hardware fact it
rests on.
"""

from __future__ import annotations

#: Rules judged against the hardware model (``mmugather run``), each with the
#: hardware fact it rests on.
HARDWARE_RULES: dict[str, str] = {
    "page-reachable": "no page leaves the mm (the gather drops the mm's reference) while a "
    "CPU may still load or store through a stale TLB entry mapping it (a TLB entry stays "
    "usable until an invalidation reaches that CPU)",
    "dirty-page-reachable": "no dirty shared file page loses its rmap while another CPU may "
    "still store through a stale dirty TLB entry (a dirty entry is written through without "
    "a page walk, so writeback's folio_mkclean() cannot stop it)",
    "table-reachable": "no page-table page is freed, or handed to RCU to be freed, while a "
    "walk-cache entry a CPU may walk still points to it (hardware walkers use cached "
    "upper-level entries, speculatively too)",
    "stale-after-unmap": "munmap() and madvise() of a live mm return, and tlb_end_vma() of a "
    "VM_PFNMAP VMA returns, only when no CPU may still use a stale entry of what they unmapped "
    "(a stale entry stays usable until an invalidation reaches its CPU: once the call "
    "returns, the range may be mapped again, and a PFN map's frames go back to their "
    "driver, b67fbebd4cf9)",
    "stale-after-exit": "the teardown of a dead mm ends with no stale entry held, unless the "
    "arch never hands its ASID to another mm without invalidating it (TLB entries are tagged "
    "with the ASID: another mm given the same one would hit them)",
}

#: The order rules of a replay (``mmugather replay --check``): no page tables,
#: so they ask whether a flush came in between.
REPLAY_RULES: dict[str, str] = {
    "free-before-flush": "no page is freed before a TLB flush covered every PTE that mapped it",
    "dirty-rmap-before-flush": "no rmap is removed from a dirty file page before that flush",
    "flush-covers": "every TLB flush covers every entry cleared since the last one",
}

#: Completeness rules (``mmugather run``, ``complete.py``): what a teardown
#: leaves behind, in the spirit of the kernel's check_mm().
COMPLETENESS_RULES: dict[str, str] = {
    "left-mapped": "munmap() and madvise(MADV_DONTNEED) return with no present or swap entry "
    "left in the range they unmapped, and exit with none anywhere (each entry a zap skips "
    "keeps its page mapped and accounted to the mm)",
    "table-not-empty": "free_pte_range() frees a PTE table only when every entry in it is none "
    "(it frees the table, not what the table maps: a page still mapped there is leaked, its "
    "mapcount and reference never dropped)",
    "rss-counter": "after exit every rss counter (MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS) is "
    "back to 0: each page and swap entry the mm mapped was zapped exactly once (check_mm(): "
    "\"Bad rss-counter state\")",
    "mapped-at-exit": "after exit no page the mm mapped is still mapped: every mapcount and "
    "entire mapcount is back to 0",
    "pgtables-bytes": "after exit no page table is still hooked in the mm, deposited THP tables "
    "included (check_mm(): \"non-zero pgtables_bytes on freeing mm\")",
}

#: Rules of both.
COMMON_RULES: dict[str, str] = {
    "table-free-walkers": "no page-table page is freed while a lockless walker (gup_fast, "
    "IRQs off) may still be inside it: only an IPI that waits for it, a synchronising IPI or "
    "an RCU grace period since the unhook proves it left (a replay: a TLB flush, and where "
    "the arch frees tables through RCU, a grace period or the IPI after it)",
    "rmap-outside-ptl": "a rmap goes before the lock that guarded its cleared entry is "
    "dropped: tlb_flush_rmaps() under the PTE table's lock, a removal at once (hugetlb, a "
    "THP, up, s390) under the lock held at the clear",
    "rmap-wrong-vma": "the pages between tlb_discard_rmaps() and tlb_flush_rmaps() were all "
    "mapped by the VMA passed",
    "rmap-not-pending": "tlb_flush_rmaps() removes rmaps only from pages whose PTE was cleared "
    "with rmap removal batched (not a page-table page, not a THP whose compound rmap is gone)",
    "rmap-dropped": "no queued page is freed while its rmap removal is still pending",
    "rmap-once": "every cleared mapping has its rmap removed exactly once",
    "free-once": "every page handed to the gather is freed exactly once",
    "pending-after-finish": "nothing is pending after tlb_finish_mmu()",
    "mapcount": "no mapcount falls below zero",
    "refcount": "no reference count falls below zero",
}

RULES: dict[str, str] = {**HARDWARE_RULES, **REPLAY_RULES, **COMPLETENESS_RULES,
                         **COMMON_RULES}
