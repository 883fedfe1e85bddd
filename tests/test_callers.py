"""The callers of the gather (``core/callers/``): exact event sequences of
zap_pte_range(), zap_huge_pmd(), __unmap_hugepage_range(), free_pgtables()
and the system calls, checked against v6.5 ``mm/memory.c``,
``mm/huge_memory.c``, ``mm/hugetlb.c``, ``mm/mmap.c`` and ``mm/rmap.c`` with
the seed patch ("mm/mmu_gather: generalize mmu_gather rmap removal
mechanism") applied.

Every expected list is derived from the kernel source named in the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mmugather.core import replay, scenario
from mmugather.core.arch import make_machine
from mmugather.core.aspace import F_ANON, F_DEFERRED_SPLIT, F_DIRTY, F_FREED, F_HUGETLB, PFN_BASE
from mmugather.core.callers import UNMAP_DETAILS, run_ops
from mmugather.core.events import Collector, make_emit
from mmugather.core.gather import MmuGather, tlb_gather_mmu
from mmugather.core.hookspecs import hookimpl
from teardown_kit import ARCHES, BATCHING, GATHERING, MIB, PS, Rig, record_engine_calls, rig

DATA = Path(__file__).parent / "data" / "replay"

#: an ordinary anon VMA, one PMD on every arch's geometry (s390: 1 MiB)
VMA = 0x400000


def start_gather(r: Rig, vma_start: int) -> MmuGather:
    """tlb_gather_mmu() + tlb_start_vma() as unmap_page_range() does; the
    events so far are dropped."""
    tlb = tlb_gather_mmu(r.machine, r.callers.ctx.mm)
    tlb.tlb_start_vma(r.vma(vma_start).gvma)
    r.clear()
    return tlb


def zap_table(r: Rig, tlb: MmuGather, vma_start: int, start: int, end: int) -> int:
    """zap_pte_range() over [start, end) of one PTE table."""
    return r.callers.memory.zap_pte_range(tlb, r.vma(vma_start), r.pmd_index(start), start, end,
                                    UNMAP_DETAILS)


def pfn_at(r: Rig, addr: int) -> int:
    return r.aspace.get_pte(addr) >> 8


def table_at(r: Rig, addr: int) -> int:
    return r.aspace.pte_tables[r.pmd_index(addr)].id


def clear(addr: int, page: int | None, rmap: str | None = None, dirty: bool = False,
          **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"addr": addr, "page": page, "level": "pte", **extra}
    if rmap is not None:
        ev["rmap"] = rmap
        ev["dirty_file"] = dirty
    ev["event"] = "pte_clear"
    return ev


def ev(name: str, **fields: Any) -> dict[str, Any]:
    return {**fields, "event": name}


def flush_range(start: int, end: int, levels: list[str], *, freed_tables: bool = False,
                page_size: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"scope": "range", "start": start, "end": end, "exec": False,
                           "huge": False, "freed_tables": freed_tables, "levels": levels}
    if page_size is not None:
        out["page_size"] = page_size
    out["event"] = "tlb_flush"
    return out


def page_size_field(arch: str, size: int) -> int | None:
    """MMU_GATHER_PAGE_SIZE: tlb_flush() reports the size it flushes."""
    return size if arch == "page-size" else None


# ----------------------------------------------------------------------
# zap_pte_range(): anon pages
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", BATCHING)
def test_zap_pte_range_anon_batches_rmaps_under_the_lock(arch: str) -> None:
    """Seed patch, zap_pte_range(): tlb_discard_rmaps() first; each anon page
    is queued with its rmap removal batched (tlb_batch_rmap()); no forced
    flush; tlb_flush_rmaps() removes exactly those pages' rmaps before
    pte_unmap_unlock(); the invalidate and the free wait for the gather."""
    r = rig(arch, [{"start": VMA, "end": VMA + 2 * MIB,
                    "populate": [{"offset": 0x1000, "pages": 3, "dirty": True}]}], check=True)
    tlb = start_gather(r, VMA)
    addrs = [VMA + 0x1000, VMA + 0x2000, VMA + 0x3000]
    pages = [pfn_at(r, a) for a in addrs]
    table = table_at(r, VMA)
    end = VMA + MIB

    assert zap_table(r, tlb, VMA, VMA, end) == end
    assert r.events == [
        ev("ptl_lock", table=table, vma_start=VMA),
        *(clear(a, p, "batched") for a, p in zip(addrs, pages, strict=True)),
        *(ev("rmap_remove", page=p) for p in pages),
        ev("rmap_walk", walked=3, removed=3),
        ev("ptl_unlock", table=table),
    ]
    store = r.aspace.pages
    # The rmaps are gone, the pages are not: they wait in the queue.
    assert [store.mapcount[p - PFN_BASE] for p in pages] == [0, 0, 0]
    assert [store.refcount[p - PFN_BASE] for p in pages] == [1, 1, 1]
    assert all(r.aspace.get_pte(a) == 0 for a in addrs)

    r.clear()
    tlb.tlb_end_vma(r.vma(VMA).gvma)
    tlb.tlb_finish_mmu()
    assert r.events[:3] == [
        flush_range(addrs[0], addrs[-1] + PS, ["pte"], page_size=page_size_field(arch, PS)),
        ev("mmu_notifier_invalidate", start=addrs[0], end=addrs[-1] + PS),
        ev("free_pages", pages=pages),
    ]
    assert r.events[3] == ev("folio_free", folios=pages)
    assert all(store.flags[p - PFN_BASE] & F_FREED for p in pages)
    assert r.violations == []


def test_zap_pte_range_walks_only_the_pages_of_its_own_table() -> None:
    """tlb_flush_rmaps() walks from the rmap pointer: the second table's walk
    does not revisit the first table's pages still in the queue."""
    r = rig("generic-smp", [{"start": VMA, "end": VMA + 4 * MIB,
                             "populate": [{"pages": 2}, {"offset": 2 * MIB, "pages": 3}]}])
    tlb = start_gather(r, VMA)
    first = [pfn_at(r, VMA + k * PS) for k in range(2)]
    second = [pfn_at(r, VMA + 2 * MIB + k * PS) for k in range(3)]
    zap_table(r, tlb, VMA, VMA, VMA + 2 * MIB)
    zap_table(r, tlb, VMA, VMA + 2 * MIB, VMA + 4 * MIB)
    assert [e["page"] for e in r.events if e["event"] == "rmap_remove"] == first + second
    assert [e["walked"] for e in r.events if e["event"] == "rmap_walk"] == [2, 3]
    assert not r.names("ptl_lock", "pte_clear", "rmap_remove", "rmap_walk", "ptl_unlock",
                       "batch_alloc")


# ----------------------------------------------------------------------
# zap_pte_range(): dirty MAP_SHARED file pages
# ----------------------------------------------------------------------


def shared_file_rig(arch: str) -> Rig:
    return rig(arch, [{"start": VMA, "end": VMA + 2 * MIB, "kind": "file-shared", "file": "db",
                       "populate": [{"offset": 0x1000, "pages": 2, "dirty": True},
                                    {"offset": 0x3000, "pages": 1}]}], check=True)


@pytest.mark.parametrize("arch", BATCHING)
def test_dirty_shared_file_pages_force_the_flush_before_rmap_removal(arch: str) -> None:
    """Seed patch, zap_pte_range(): a dirty page of a file forces the flush
    (force_flush = 1 when batch_rmap); after the loop
    tlb_flush_mmu_tlbonly() runs, then tlb_flush_rmaps() (every queued page,
    the clean one too), then pte_unmap_unlock(), then tlb_flush_mmu() frees."""
    r = shared_file_rig(arch)
    tlb = start_gather(r, VMA)
    addrs = [VMA + 0x1000, VMA + 0x2000, VMA + 0x3000]
    pages = [pfn_at(r, a) for a in addrs]
    table = table_at(r, VMA)

    assert zap_table(r, tlb, VMA, VMA, VMA + MIB) == VMA + MIB
    assert r.events == [
        ev("ptl_lock", table=table, vma_start=VMA),
        clear(addrs[0], pages[0], "batched", dirty=True),
        clear(addrs[1], pages[1], "batched", dirty=True),
        clear(addrs[2], pages[2], "batched", dirty=False),
        ev("force_flush", dirty=True, full=False),
        flush_range(addrs[0], addrs[2] + PS, ["pte"], page_size=page_size_field(arch, PS)),
        ev("mmu_notifier_invalidate", start=addrs[0], end=addrs[2] + PS),
        *(ev("rmap_remove", page=p) for p in pages),
        ev("rmap_walk", walked=3, removed=3),
        ev("ptl_unlock", table=table),
        ev("free_pages", pages=pages),
    ]
    store = r.aspace.pages
    # set_page_dirty() on the dirty ones; the page cache keeps its reference.
    assert [bool(store.flags[p - PFN_BASE] & F_DIRTY) for p in pages] == [True, True, False]
    assert [store.refcount[p - PFN_BASE] for p in pages] == [1, 1, 1]
    assert not any(store.flags[p - PFN_BASE] & F_FREED for p in pages)
    tlb.tlb_end_vma(r.vma(VMA).gvma)
    tlb.tlb_finish_mmu()
    assert r.violations == []


def test_up_removes_each_rmap_at_once_and_forces_no_flush() -> None:
    """!CONFIG_SMP: tlb_batch_rmap() is false, so page_remove_rmap() runs
    right after each clear and a dirty file page forces nothing; the pages
    wait in the queue for the gather's own flush."""
    r = shared_file_rig("up")
    tlb = start_gather(r, VMA)
    addrs = [VMA + 0x1000, VMA + 0x2000, VMA + 0x3000]
    pages = [pfn_at(r, a) for a in addrs]
    table = table_at(r, VMA)

    assert zap_table(r, tlb, VMA, VMA, VMA + MIB) == VMA + MIB
    assert r.events == [
        ev("ptl_lock", table=table, vma_start=VMA),
        clear(addrs[0], pages[0], "now", dirty=True),
        ev("rmap_remove_now", page=pages[0]),
        clear(addrs[1], pages[1], "now", dirty=True),
        ev("rmap_remove_now", page=pages[1]),
        clear(addrs[2], pages[2], "now", dirty=False),
        ev("rmap_remove_now", page=pages[2]),
        ev("ptl_unlock", table=table),
    ]
    r.clear()
    tlb.tlb_end_vma(r.vma(VMA).gvma)
    tlb.tlb_finish_mmu()
    assert r.names("gather_end") == ["tlb_flush", "mmu_notifier_invalidate", "free_pages"]
    assert r.violations == []


@pytest.mark.parametrize("kind", ["anon", "file-shared"])
def test_s390_frees_each_page_at_once_without_tlb_flush(kind: str) -> None:
    """s390 (MMU_GATHER_NO_GATHER): __tlb_remove_page_size() is
    free_page_and_swap_cache(); the rmap goes right after the clear; its
    tlb_flush() is __tlb_flush_mm_lazy() and flushes nothing for PTE clears
    (IPTE invalidated them), not even at tlb_finish_mmu()."""
    r = rig("s390", [{"start": VMA, "end": VMA + MIB, "kind": kind,
                      "populate": [{"offset": 0x1000, "pages": 2, "dirty": True}]}], check=True)
    tlb = start_gather(r, VMA)
    addrs = [VMA + 0x1000, VMA + 0x2000]
    pages = [pfn_at(r, a) for a in addrs]
    table = table_at(r, VMA)
    zap_table(r, tlb, VMA, VMA, VMA + MIB)
    dirty = kind != "anon"
    expected: list[dict[str, Any]] = [ev("ptl_lock", table=table, vma_start=VMA)]
    for a, p in zip(addrs, pages, strict=True):
        expected += [clear(a, p, "now", dirty=dirty), ev("rmap_remove_now", page=p),
                     ev("free_page", page=p)]
        if kind == "anon":
            expected.append(ev("folio_free", folios=[p]))
    expected.append(ev("ptl_unlock", table=table))
    assert r.events == expected
    r.clear()
    tlb.tlb_end_vma(r.vma(VMA).gvma)
    tlb.tlb_finish_mmu()
    assert "tlb_flush" not in r.names()
    assert r.violations == []


# ----------------------------------------------------------------------
# A full queue
# ----------------------------------------------------------------------


def _recording_remover(returns: list[tuple[int, bool]]) -> Any:
    @hookimpl(tryfirst=True)
    def tlb_page_remover(tlb: MmuGather) -> Any:
        inner = tlb.queue_page

        def remove(page: int, page_size: int, flags: int = 0) -> bool:
            full = inner(page, page_size, flags)
            returns.append((page, full))
            return full

        return remove

    return SimpleNamespace(tlb_page_remover=tlb_page_remover)


@pytest.mark.parametrize("arch", GATHERING)
def test_full_queue_flushes_and_the_walk_resumes_at_the_next_address(arch: str) -> None:
    """zap_pte_range(): when __tlb_remove_page() reports a full queue, the
    loop stops after that page (addr += PAGE_SIZE; break), the TLB is
    flushed and the rmaps removed under the lock, tlb_flush_mmu() frees the
    queue after the unlock, and zap_pmd_range() calls zap_pte_range() again
    on the same table from the next address (addr != next: pmd--)."""
    returns: list[tuple[int, bool]] = []
    n = 20 * 512
    start = 0x10000000
    r = rig(arch, [{"start": start, "end": start + n * PS, "populate": [{"pages": n}]}],
            check=True, extra_plugins=[_recording_remover(returns)])
    capacity = r.machine.geometry.queue_capacity
    assert capacity == 9698
    full_addr = start + (capacity - 1) * PS
    full_page = pfn_at(r, full_addr)
    table = table_at(r, full_addr)
    batched = arch in BATCHING

    r.callers.mmap.munmap(start, start + n * PS)

    assert [i for i, (_p, full) in enumerate(returns) if full] == [capacity - 1]
    assert returns[capacity - 1][0] == full_page
    evs = r.events
    at = next(i for i, e in enumerate(evs) if e["event"] == "pte_clear" and e["addr"] == full_addr)
    k = at + 1
    if not batched:
        assert evs[k] == ev("rmap_remove_now", page=full_page)
        k += 1
    assert evs[k] == ev("force_flush", dirty=False, full=True)
    k += 1
    assert evs[k]["event"] == "tlb_flush"
    assert (evs[k]["start"], evs[k]["end"]) == (start, full_addr + PS)
    assert evs[k + 1] == ev("mmu_notifier_invalidate", start=start, end=full_addr + PS)
    k += 2
    if batched:
        # Every page of this table cleared so far, and no other.
        table_first = full_addr & ~(2 * MIB - 1)
        count = (full_addr - table_first) // PS + 1
        expect = list(range(full_page - count + 1, full_page + 1))
        assert [e["page"] for e in evs[k:k + count]] == expect
        assert all(e["event"] == "rmap_remove" for e in evs[k:k + count])
        k += count
        assert evs[k] == ev("rmap_walk", walked=count, removed=count)
        k += 1
    assert evs[k] == ev("ptl_unlock", table=table)
    k += 1
    freed: list[int] = []
    while evs[k]["event"] in ("free_pages", "folio_free"):
        if evs[k]["event"] == "free_pages":
            freed += evs[k]["pages"]
        k += 1
    assert len(freed) == capacity and freed[-1] == full_page
    # Back to the same table, from the next address.
    assert evs[k] == ev("ptl_lock", table=table, vma_start=start)
    assert evs[k + 1]["event"] == "pte_clear" and evs[k + 1]["addr"] == full_addr + PS
    assert r.violations == []
    store = r.aspace.pages
    assert all(store.flags[i] & F_FREED for i in range(n))


# ----------------------------------------------------------------------
# Entries without a page to gather
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_swap_entries_are_freed_in_place_and_never_gathered(arch: str) -> None:
    """zap_pte_range(): a genuine swap entry (!non_swap_entry) goes through
    free_swap_and_cache() under the lock; it has no page to hand over and no
    TLB entry to invalidate."""
    r = rig(arch, [{"start": VMA, "end": VMA + MIB, "populate": [
        {"pages": 1, "dirty": True},
        {"offset": 0x1000, "pages": 3, "state": "swap"},
    ]}], check=True, detail=True)
    slots = sorted(r.aspace.swap_map)
    assert len(slots) == 3
    present = pfn_at(r, VMA)
    r.callers.mmap.munmap(VMA, VMA + MIB)
    frees = [e for e in r.events if e["event"] == "swap_free"]
    assert frees == [ev("swap_free", addr=VMA + (1 + k) * PS, entry=slot)
                     for k, slot in enumerate(slots)]
    handed = [e["page"] for e in r.events if e["event"] in ("page_queued", "free_page")
              and e["page"] < (1 << 40)]
    assert handed == [present]
    assert [e["addr"] for e in r.events if e["event"] == "pte_clear"] == [VMA]
    assert r.aspace.swap_map == {}
    # The swap frees happen under the lock, in address order with the clear.
    names = [e["event"] for e in r.events
             if e["event"] in ("ptl_lock", "pte_clear", "swap_free", "ptl_unlock")]
    assert names == ["ptl_lock", "pte_clear", "swap_free", "swap_free", "swap_free",
                     "ptl_unlock"]
    assert r.violations == []


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kind", ["zero", "pfnmap"])
def test_zero_page_and_pfnmap_entries_are_only_a_range(arch: str, kind: str) -> None:
    """vm_normal_page() is NULL for the zero page and for VM_PFNMAP: the
    entry is cleared and recorded for the flush (tlb_remove_tlb_entry()),
    then ``continue``: no rmap, nothing queued or freed."""
    vma: dict[str, Any] = {"start": VMA, "end": VMA + MIB, "populate": [{"pages": 4}]}
    if kind == "zero":
        vma["populate"][0]["state"] = "zero"
    else:
        vma["kind"] = "pfnmap"
    r = rig(arch, [vma], check=True, detail=True)
    tlb = start_gather(r, VMA)
    table = table_at(r, VMA)
    zap_table(r, tlb, VMA, VMA, VMA + MIB)
    walk = ["rmap_walk"] if arch in BATCHING else []
    assert r.names("rmap_pend") == ["ptl_lock", *["pte_clear"] * 4, *walk, "ptl_unlock"]
    assert [e for e in r.events if e["event"] == "pte_clear"] == [
        clear(VMA + k * PS, None) for k in range(4)]
    assert r.events[-1] == ev("ptl_unlock", table=table)
    r.clear()
    tlb.tlb_end_vma(r.vma(VMA).gvma)
    tlb.tlb_finish_mmu()
    assert not [e for e in r.events if e["event"] in ("free_pages", "free_page", "page_queued")]
    flushes = [e for e in r.events if e["event"] == "tlb_flush"]
    if arch == "s390":
        assert flushes == []
    else:
        assert [(f["start"], f["end"]) for f in flushes] == [(VMA, VMA + 4 * PS)]
    assert r.violations == []


# ----------------------------------------------------------------------
# Transparent huge pages
# ----------------------------------------------------------------------


def thp_rig(arch: str, **kw: Any) -> Rig:
    """[2M, 4M): PMD-order anon folios, each mapped by a PMD (one on x86-64
    geometry, two 1 MiB ones on s390)."""
    return rig(arch, [{"start": 2 * MIB, "end": 4 * MIB, "populate": [
        {"pages": 512, "folio_order": "pmd", "pmd_mapped": True, "dirty": True}]}],
        check=True, **kw)


@pytest.mark.parametrize("arch", ARCHES)
def test_pmd_mapped_thp_is_one_compound_rmap_and_one_queue_entry(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zap_huge_pmd(): tlb_change_page_size(HPAGE_PMD_SIZE), clear the PMD
    and record it (tlb_remove_pmd_tlb_entry()), page_remove_rmap(page, vma,
    true) at once under the PMD lock, withdraw and pte_free() the deposited
    table (anon), then tlb_remove_page_size(page, HPAGE_PMD_SIZE): one queue
    entry for the whole folio."""
    log = record_engine_calls(monkeypatch)
    r = thp_rig(arch)
    geo = r.machine.geometry
    addrs = list(range(2 * MIB, 4 * MIB, geo.pmd_size))
    heads = [r.aspace.huge_pmds[a >> geo.pmd_shift] >> 8 for a in addrs]
    assert heads == [PFN_BASE + k * geo.ptrs_per_pte for k in range(len(addrs))]
    deposited = {r.aspace.deposited[a >> geo.pmd_shift] for a in addrs}
    pmd_table = r.aspace.pmd_tables[0]
    r.callers.mmap.munmap(2 * MIB, 4 * MIB)

    start = log.index({"op": "tlb_start_vma", "start": 2 * MIB, "end": 4 * MIB, "flags": []})
    expected: list[dict[str, Any]] = []
    for a, h in zip(addrs, heads, strict=True):
        expected += [{"op": "tlb_change_page_size", "size": geo.pmd_size},
                     {"op": "tlb_remove_pmd_tlb_entry", "addr": a},
                     {"op": "tlb_remove_page_size", "page": h, "size": geo.pmd_size}]
    assert log[start + 1:start + 1 + len(expected)] == expected
    queued = [o["page"] for o in log
              if o["op"] in ("__tlb_remove_page_size", "tlb_remove_page_size")
              and o["page"] < (1 << 40)]
    assert queued == heads

    expected_evs: list[dict[str, Any]] = []
    for a, h in zip(addrs, heads, strict=True):
        expected_evs += [
            ev("ptl_lock", table=pmd_table, vma_start=2 * MIB),
            {"addr": a, "page": h, "level": "pmd", "size": geo.pmd_size, "rmap": "now",
             "dirty_file": False, "event": "pte_clear"},
            ev("rmap_remove_now", page=h),
            ev("ptl_unlock", table=pmd_table),
        ]
    got = [e for e in r.events
           if e["event"] in ("ptl_lock", "pte_clear", "rmap_remove_now", "ptl_unlock")]
    assert got == expected_evs
    assert "rmap_remove" not in r.names()
    freed = [p for e in r.events if e["event"] == "free_pages" for p in e["pages"]] + [
        e["page"] for e in r.events if e["event"] == "free_page"]
    assert [p for p in freed if p < (1 << 40)] == heads
    store = r.aspace.pages
    for h in heads:
        i = h - PFN_BASE
        assert store.entire_mapcount[i] == 0 and store.refcount[i] == 0
        assert store.flags[i] & F_FREED
    assert [f for e in r.events if e["event"] == "folio_free" for f in e["folios"]] == heads
    # The deposited tables were never reachable: freed directly, not gathered.
    assert not deposited & set(r.aspace.tables)
    assert all(e.get("table") not in deposited for e in r.events)
    assert all(p not in deposited for p in freed)
    r.machine.rcu_grace_period()
    assert r.violations == []


@pytest.mark.parametrize("arch", ARCHES)
def test_munmap_of_half_a_thp_splits_it_and_defers_the_split_of_the_folio(arch: str) -> None:
    """zap_pmd_range(): a range that covers part of a huge PMD splits it
    (__split_huge_pmd()) and falls through to zap_pte_range(); the first
    PTE unmapped of the now PTE-mapped anon PMD-order folio queues it for a
    deferred split (page_remove_rmap(): !compound, folio still partly
    mapped), exactly once."""
    r = thp_rig(arch)
    geo = r.machine.geometry
    half = geo.pmd_size // 2
    nr = geo.ptrs_per_pte
    deposited = r.aspace.deposited[r.pmd_index(2 * MIB)]
    r.callers.mmap.munmap(2 * MIB, 2 * MIB + half)

    # The split PMD now points to the deposited table, which the zap locks.
    evs = r.events
    locks = [e for e in evs if e["event"] == "ptl_lock"]
    assert locks == [ev("ptl_lock", table=deposited, vma_start=2 * MIB)]
    clears = [e for e in evs if e["event"] == "pte_clear"]
    assert [e["addr"] for e in clears] == [2 * MIB + k * PS for k in range(nr // 2)]
    assert [e["page"] for e in clears] == [PFN_BASE + k for k in range(nr // 2)]
    assert {e["level"] for e in clears} == {"pte"}
    splits = [e for e in evs if e["event"] == "deferred_split"]
    assert splits == [ev("deferred_split", folio=PFN_BASE)]
    names = r.names()
    removal = "rmap_remove" if arch in BATCHING else "rmap_remove_now"
    assert names.index(removal) < names.index("deferred_split") < names.index("ptl_unlock")
    store = r.aspace.pages
    assert store.flags[0] & F_DEFERRED_SPLIT
    assert store.entire_mapcount[0] == 0
    assert store.nr_mapped[0] == nr // 2
    assert list(store.mapcount[: nr]) == [0] * (nr // 2) + [1] * (nr // 2)
    # One reference per mapped page is left; the folio lives on.
    assert store.refcount[0] == nr // 2
    assert not store.flags[0] & F_FREED
    assert r.pmd_index(2 * MIB) not in r.aspace.huge_pmds

    r.clear()
    r.callers.mmap.exit_mmap()
    r.machine.rcu_grace_period()
    assert "deferred_split" not in r.names()
    assert store.refcount[0] == 0 and store.flags[0] & F_FREED
    assert r.aspace.tables == {}
    assert r.violations == []


@pytest.mark.parametrize("kind", ["file", "file-shared"])
def test_splitting_a_file_thp_unmaps_the_whole_pmd(kind: str) -> None:
    """__split_huge_pmd_locked(), !vma_is_anonymous(vma): the huge PMD is
    cleared and flushed (pmdp_huge_clear_flush_notify()), the compound rmap
    and the mapping's reference dropped (page_remove_rmap(page, vma, true);
    put_page()), and nothing is mapped by PTEs: the rest of the range refaults
    from the page cache.  So after munmap() of the first half no PTE maps
    the folio and only the page cache holds it."""
    r = rig("generic-smp", [{"start": 2 * MIB, "end": 4 * MIB, "kind": kind, "file": "lib",
                             "populate": [{"pages": 512, "folio_order": "pmd",
                                           "pmd_mapped": True}]}], check=True)
    store = r.aspace.pages
    assert (store.refcount[0], store.entire_mapcount[0]) == (2, 1)
    r.callers.mmap.munmap(2 * MIB, 3 * MIB)
    assert [(v.start, v.end) for v in r.aspace.vmas] == [(3 * MIB, 4 * MIB)]
    assert all(r.aspace.get_pte(a) == 0 for a in range(2 * MIB, 4 * MIB, PS))
    assert store.entire_mapcount[0] == 0
    assert not any(store.mapcount[:512])
    assert store.refcount[0] == 1
    assert not store.flags[0] & F_FREED
    assert r.violations == []


# ----------------------------------------------------------------------
# hugetlb
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_hugetlb_pages_are_huge_entries_and_huge_queue_entries(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """__unmap_hugepage_range(): tlb_change_page_size(sz), tlb_start_vma();
    per entry under huge_pte_lock(): clear, tlb_remove_huge_tlb_entry(),
    page_remove_rmap(page, vma, true); then, after the unlock,
    tlb_remove_page_size(tlb, page, sz)."""
    log = record_engine_calls(monkeypatch)
    r = rig(arch, [{"start": 0x40000000, "end": 0x40800000, "kind": "hugetlb",
                    "populate": [{"offset": 0x400000, "pages": 1024, "dirty": True}]}],
            check=True)
    geo = r.machine.geometry
    sz = geo.pmd_size
    addrs = list(range(0x40400000, 0x40800000, sz))
    heads = [r.aspace.huge_pmds[a >> geo.pmd_shift] >> 8 for a in addrs]
    lock = r.aspace.pmd_tables[0x40000000 >> geo.pud_shift]
    r.callers.mmap.munmap(0x40000000, 0x40800000)

    vma = {"start": 0x40000000, "end": 0x40800000, "flags": ["hugetlb"]}
    expected_ops: list[dict[str, Any]] = [
        {"op": "tlb_gather_mmu", "fullmm": False},
        {"op": "tlb_change_page_size", "size": sz},
        {"op": "tlb_start_vma", **vma},
    ]
    for a, h in zip(addrs, heads, strict=True):
        expected_ops += [{"op": "tlb_remove_huge_tlb_entry", "addr": a, "size": sz},
                         {"op": "tlb_remove_page_size", "page": h, "size": sz}]
    expected_ops.append({"op": "tlb_end_vma", **vma})
    assert log[: len(expected_ops)] == expected_ops

    expected_evs: list[dict[str, Any]] = []
    for a, h in zip(addrs, heads, strict=True):
        expected_evs += [
            ev("ptl_lock", table=lock, vma_start=0x40000000),
            {"addr": a, "page": h, "level": "huge", "size": sz, "rmap": "now",
             "dirty_file": False, "event": "pte_clear"},
            ev("rmap_remove_now", page=h),
            ev("ptl_unlock", table=lock),
        ]
        if arch == "s390":
            expected_evs.append(ev("free_page", page=h))
    got = [e for e in r.events if e["event"] in ("ptl_lock", "pte_clear", "rmap_remove_now",
                                                 "ptl_unlock", "free_page")]
    assert got == expected_evs
    if arch != "s390":
        flush = next(e for e in r.events if e["event"] == "tlb_flush")
        assert (flush["start"], flush["end"], flush["huge"]) == (addrs[0], addrs[-1] + sz, True)
    store = r.aspace.pages
    for h in heads:
        i = h - PFN_BASE
        # hugetlbfs' page cache keeps the folio: mapping gone, not freed.
        assert store.flags[i] & F_HUGETLB and store.flags[i] & F_DIRTY
        assert store.entire_mapcount[i] == 0 and store.refcount[i] == 1
        assert not store.flags[i] & F_FREED
    r.machine.rcu_grace_period()
    assert r.violations == []


def test_munmap_inside_a_huge_page_is_refused() -> None:
    """__split_vma() asks vm_ops->may_split(): hugetlb_vm_op_split() returns
    -EINVAL for an address not aligned to the huge page size (mm/hugetlb.c
    hugetlb_vm_op_split(), mm/mmap.c __split_vma()), so munmap() of a range
    inside a huge page unmaps nothing: no gather, the VMA and its huge
    entries stay."""
    r = rig("generic-smp", [{"start": 0x40000000, "end": 0x40400000, "kind": "hugetlb",
                             "populate": [{"pages": 1024}]}], check=True)
    before = dict(r.aspace.huge_pmds)
    r.callers.mmap.munmap(0x40001000, 0x40002000)
    assert r.events == []
    assert [(v.start, v.end) for v in r.aspace.vmas] == [(0x40000000, 0x40400000)]
    assert r.aspace.huge_pmds == before


# ----------------------------------------------------------------------
# free_pgtables() / free_pgd_range()
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ("generic-smp", "rcu-table-free", "up", "page-size"))
def test_munmap_keeps_the_tables_its_neighbours_use(arch: str) -> None:
    """unmap_region() frees the tables of the unmapped range between floor =
    prev->vm_end and ceiling = next->vm_start: free_pgd_range() rounds addr
    up past a PMD shared with prev and brings end down off one shared with
    next, and free_pmd_range() keeps the PMD table (start & PUD_MASK below
    the ceiling's PUD)."""
    a, b, c = 0x200000, 0x201000, 0x800000
    r = rig(arch, [
        {"start": a, "end": b, "populate": [{"pages": 1}]},
        {"start": b, "end": c, "populate": [{"pages": 1}, {"offset": 0x1ff000, "pages": 1},
                                             {"offset": 0x3ff000, "pages": 1},
                                             {"offset": 0x5fe000, "pages": 1}]},
        {"start": c, "end": c + PS, "populate": [{"pages": 1}]},
    ], check=True)
    kept = {r.aspace.pte_tables[r.pmd_index(x)].id for x in (a, c)}
    gone = {r.aspace.pte_tables[r.pmd_index(x)].id for x in (0x400000, 0x600000)}
    uppers = {r.aspace.pmd_tables[0], r.aspace.pud_tables[0], r.aspace.p4d_tables[0]}
    r.callers.mmap.munmap(b, c)
    r.machine.rcu_grace_period()
    unhooks = [e for e in r.events if e["event"] == "table_unhook"]
    assert [(e["level"], e["addr"]) for e in unhooks] == [("pte", 0x400000), ("pte", 0x600000)]
    assert {e["table"] for e in unhooks} == gone
    assert kept | uppers <= set(r.aspace.tables)
    assert not gone & set(r.aspace.tables)
    # The page of the shared table that munmap unmapped is gone, its table stays.
    assert r.aspace.get_pte(b) == 0 and r.aspace.get_pte(a) != 0

    r.clear()
    r.callers.mmap.exit_mmap()
    r.machine.rcu_grace_period()
    # exit_mmap(): free_pgtables(0, 0) per group of nearby VMAs; a and c are
    # more than PMD_SIZE apart, so two calls: ceiling c for the first.
    unhooks = [(e["level"], e["addr"]) for e in r.events if e["event"] == "table_unhook"]
    assert unhooks == [("pte", 0x200000), ("pte", 0x800000), ("pmd", 0), ("pud", 0), ("p4d", 0)]
    assert r.aspace.tables == {}
    assert r.violations == []


@pytest.mark.parametrize("arch", ARCHES)
def test_exit_frees_every_level_as_the_kernel_did(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine calls exit_mmap() makes over the layout the kernel's own
    callers recorded in ``flow_exit_tiny.ops.jsonl`` (same VMAs, same
    present pages) are the recorded calls, table frees and their addresses
    included.  Page and table ids are compared by order of first use;
    tlb_batch_rmap() queries are left out (no effect)."""
    kernel = [json.loads(line) for line in
              (DATA / arch / "flow_exit_tiny.ops.jsonl").read_text().splitlines() if line.strip()]
    vmas: list[dict[str, Any]] = []
    for op in kernel:
        if op["op"] == "tlb_start_vma":
            vmas.append({"start": op["start"], "end": op["end"], "exec": "exec" in op["flags"],
                         "populate": []})
        elif op["op"] == "tlb_remove_tlb_entry":
            vmas[-1]["populate"].append({"offset": op["addr"] - vmas[-1]["start"], "pages": 1})
    log = record_engine_calls(monkeypatch)
    r = rig(arch, vmas, check=True)
    run_ops(r.callers, [{"kind": "exit"}])
    log.append({"op": "rcu_grace_period"})
    assert _canonical(log) == _canonical(kernel)
    frees = [o for o in log if o["op"].endswith("_free_tlb")]
    assert [o["op"] for o in frees][-3:] == ["pmd_free_tlb", "pud_free_tlb", "p4d_free_tlb"]
    assert r.aspace.tables == {}
    assert r.violations == []


_QUEUE = (replay.C_QUEUE, replay.C_REMOVE_PAGE)
_FREE = (replay.C_FREE_PTE, replay.C_FREE_PMD, replay.C_FREE_PUD, replay.C_FREE_P4D)


def _canonical(ops: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Ops compiled by the replay parser (defaults filled in), ids renumbered."""
    pages: dict[int, int] = {}
    tables: dict[int, int] = {}
    out = []
    for op in ops:
        compiled = replay.parse_line(json.dumps(op).encode(), 0, "ops", PS)
        assert compiled is not None
        _line, code, name, a, b, c = compiled
        if code == replay.C_BATCH_RMAP:
            continue
        if code in _QUEUE:
            a = ("page", pages.setdefault(a, len(pages)))
        elif code in _FREE:
            a = ("table", tables.setdefault(a, len(tables)))
        out.append((name, a, b, c))
    return out


# ----------------------------------------------------------------------
# The state an exit leaves
# ----------------------------------------------------------------------


def owned_folios(aspace: Any) -> tuple[set[int], set[int]]:
    """(folios the mm's mappings own, page-cache folios), as head indexes."""
    store = aspace.pages
    cache = {store.head[pfn - PFN_BASE] for pfn in aspace.page_cache.values()}
    heads = {store.head[i] for i in range(len(store))}
    cache |= {h for h in heads if store.flags[h] & F_HUGETLB}
    owned = {h for h in heads if h not in cache and store.refcount[h] > 0}
    return owned, cache


@pytest.mark.parametrize("arch", ARCHES)
def test_default_scenario_leaves_nothing_behind(arch: str) -> None:
    """After the default scenario (munmaps, madvise, exit) and the final
    grace period: every folio the mappings held is freed (anon, swap cache,
    THPs, mTHPs), page-cache folios keep exactly the cache's reference and no
    mapping, the swap map is empty and every page-table page is freed."""
    sc = scenario.load_builtin("default")
    r = rig(arch, sc, check=True)
    owned, cache = owned_folios(r.aspace)
    assert owned and cache
    run_ops(r.callers, sc.ops)
    r.checker.finish()  # type: ignore[union-attr]
    store = r.aspace.pages
    assert all(store.flags[h] & F_FREED and store.refcount[h] == 0 for h in owned)
    assert all(not store.flags[h] & F_FREED and store.refcount[h] == 1 for h in cache)
    assert not any(store.mapcount)
    assert not any(store.entire_mapcount)
    assert r.aspace.swap_map == {}
    assert r.aspace.tables == {}
    for level in ("pte_tables", "pmd_tables", "pud_tables", "p4d_tables", "huge_pmds",
                  "huge_puds", "deposited"):
        assert getattr(r.aspace, level) == {}, level
    assert r.aspace.vmas == []
    freed = {f for e in r.events if e["event"] == "folio_free" for f in e["folios"]}
    assert freed == {h + PFN_BASE for h in owned}
    assert any(store.flags[h] & F_ANON for h in owned)
    assert r.violations == []


# ----------------------------------------------------------------------
# The callers' engine calls, replayed
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_replaying_the_callers_engine_calls_gives_the_same_effects(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record every engine call the callers make on the default scenario, as
    replay-v1 ops; ``core/replay.py`` running them on a fresh machine emits
    the same contract events as the live run (the replay's ``return``
    events aside, which the live run has no use for)."""
    log = record_engine_calls(monkeypatch)
    sc = scenario.load_builtin("default")
    r = rig(arch, sc)
    run_ops(r.callers, sc.ops)
    monkeypatch.undo()
    log.append({"op": "rcu_grace_period"})
    live = r.collector.contract()
    assert any(e["event"] == "rmap_remove" for e in live) == (arch in BATCHING)

    compiled = replay.parse(iter(json.dumps(o).encode() for o in log), "recorded", PS)
    collector = Collector()
    machine = make_machine(arch, emit=make_emit(observers=[collector]))
    result = replay.run(compiled, machine)
    assert result.bug is None and result.ops == len(log)
    replayed = [e for e in collector.contract() if e["event"] != "return"]
    assert replayed == live
