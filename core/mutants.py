"""Mutants: deliberately broken behaviours that prove the checker can fail.

Each is selectable by name (``mmugather run --mutant NAME``).  Engine-level
mutants are plugins registered after the arch's own, so they override it;
caller-level ones change what :class:`~mmugather.core.callers.Teardown` does.
``applies`` says on which arches the broken ordering is actually wrong: on
``up`` removing a dirty page's rmap before the flush is what the kernel does,
and rightly so.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import attrs
from mmugather.core.arch import ArchSpec
from mmugather.core.gather import MmuGather, PageRemover
from mmugather.core.hookspecs import hookimpl

from mmugather.mutants import x86_pmd_stride


def _gathering(spec: ArchSpec) -> bool:
    return "MMU_GATHER_NO_GATHER" not in spec.resolved_features()


def _batching(spec: ArchSpec) -> bool:
    return _gathering(spec) and "SMP" in spec.resolved_features()


def _always(spec: ArchSpec) -> bool:
    return True


@hookimpl(tryfirst=True)
def _free_at_once(tlb: MmuGather) -> PageRemover:
    free = tlb.free_page_and_swap_cache

    def free_now(page: int, page_size: int, flags: int = 0) -> bool:
        free(page)
        return False

    return free_now


@hookimpl(tryfirst=True)
def _free_table_at_once(tlb: MmuGather, table: int) -> bool:
    tlb.tlb_remove_table_free_now([table])
    return True


@attrs.frozen
class Mutant:
    name: str
    description: str
    #: what the checker should report
    rule: str
    applies: Callable[[ArchSpec], bool]
    plugin: Any = None
    caller: str = ""
    #: the built-in scenario that exposes it
    scenario: str = "default"


def _arm64_mutants() -> tuple[Mutant, ...]:
    """arm64's tlb_flush() and table freeing, one step broken each
    (``mmugather.mutants``); they apply to arm64 and arm64-tlbirange."""
    from mmugather.mutants import (
        _arm64,
        arm64_last_level,
        arm64_no_rcu_table_free,
        arm64_range_round_down,
        arm64_ttl_off,
    )

    return (
        Mutant(
            "arm64-last-level",
            "arm64's tlb_flush() takes last_level even after page tables were freed: "
            "leaf-only TLBI VALE1IS, and no TLBI at all at exit, leave walk-cache entries to "
            "the freed tables (the hazard 7a30df49f63a removed)",
            "table-reachable",
            _arm64.applies,
            plugin=arm64_last_level.PLUGIN,
            scenario="order0-anon",
        ),
        Mutant(
            "arm64-ttl-off",
            "arm64's TTL hint names the level above the entries cleared; with a wrong hint "
            "the TLBI need invalidate nothing (the kind of hint 52218fcd61cb fixed)",
            "page-reachable",
            _arm64.applies,
            plugin=arm64_ttl_off.PLUGIN,
        ),
        Mutant(
            "arm64-range-round-down",
            "__flush_tlb_range() rounds the end down to the stride: the last freed table's "
            "stride is not invalidated (67a902a rounds the end up)",
            "table-reachable",
            _arm64.applies,
            plugin=arm64_range_round_down.PLUGIN,
            scenario="order0-anon",
        ),
        Mutant(
            "arm64-no-rcu-table-free",
            "arm64 frees page tables right after its broadcast TLBI, which waits for no "
            "gup_fast() walker (5e5f6dc10546 frees them after RCU)",
            "table-free-walkers",
            _arm64.applies,
            plugin=arm64_no_rcu_table_free,
            scenario="order0-anon",
        ),
    )


MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant(
            "rmap-before-flush",
            "remove each rmap at once, dirty file pages included, and do not force the "
            "flush: the ordering commit 5df397dec7c4 fixed",
            "dirty-page-reachable",
            _batching,
            caller="rmap-before-flush",
            # Only an unmap while another thread runs can lose a write.
            scenario="dirty-shared",
        ),
        Mutant(
            "free-before-flush",
            "free each page as it is handed to the gather, before any TLB flush",
            "page-reachable",
            _gathering,
            plugin=SimpleNamespace(tlb_page_remover=_free_at_once),
        ),
        Mutant(
            "flush-rmaps-after-unlock",
            "call tlb_flush_rmaps() after the page-table lock is dropped",
            "rmap-outside-ptl",
            _batching,
            caller="flush-rmaps-after-unlock",
        ),
        Mutant(
            "no-discard-rmaps",
            "leave out tlb_discard_rmaps() at the start of each PTE table",
            "rmap-not-pending",
            _batching,
            caller="no-discard-rmaps",
        ),
        Mutant(
            x86_pmd_stride.NAME,
            "x86-64 flushes a range holding PTEs with the PMD stride (PMD_SHIFT whenever a "
            "PMD-level entry was cleared too): one INVLPG per 2 MiB misses the 4K entries in "
            "between.  No fixing commit: it breaks the rule flush_tlb_mm_range() relies on, "
            "tlb_get_unmap_shift() giving the smallest level cleared",
            "page-reachable",
            x86_pmd_stride.applies,
            plugin=x86_pmd_stride,
            # Half of a heap munmapped: its PTE tables go too (cleared_pmds).
            scenario="order0-anon",
        ),
        Mutant(
            "direct-table-free",
            "free page-table pages at once instead of after the flush (and RCU)",
            "table-reachable",
            _always,
            plugin=SimpleNamespace(tlb_remove_table=_free_table_at_once),
        ),
        *_arm64_mutants(),
    )
}


def get(name: str) -> Mutant:
    try:
        return MUTANTS[name]
    except KeyError:
        raise ValueError(f"unknown mutant {name!r} (known: {', '.join(MUTANTS)})") from None
