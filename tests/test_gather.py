"""The mmu_gather API, call by call, against event sequences derived by hand
from v6.5 ``mm/mmu_gather.c``, ``include/asm-generic/tlb.h``, s390's
``asm/tlb.h``/``asm/tlbflush.h`` and the rmap-removal patch.

Each expected list below is the kernel's sequence of effects for the calls
made; comments name the kernel code that produces them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from conftest import ARCHES, machine
from mmugather.core import api
from mmugather.core.api import __tlb_remove_page_size
from mmugather.core.events import Collector
from mmugather.core.gather import KernelBug, MmuGather
from mmugather.core.mm import MmStruct
from mmugather.core.vma import VM_EXEC, VM_HUGETLB, VM_PFNMAP, Vma

PS = 4096
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
M64 = (1 << 64) - 1
#: TASK_SIZE: a non-fullmm range starts there (x86-64 layout; s390: 2^64 - PAGE_SIZE).
TASK_SIZE = 0x7FFFFFFFF000
S390_TASK_SIZE = (1 << 64) - PS

GATHERING = ("generic-smp", "up", "page-size", "rcu-table-free")
SMP_RMAP = ("generic-smp", "page-size", "rcu-table-free")
NO_RMAP = ("up", "s390")
#: page-table pages go through tlb_remove_table() into the table batch
TABLE_BATCH = ("rcu-table-free", "s390")
#: page-table pages are queued with the ordinary pages (tlb_remove_page())
TABLES_AS_PAGES = ("generic-smp", "up", "page-size")


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------


def gather(
    arch: str, *, fullmm: bool = False, mm: MmStruct | None = None, **kw: Any
) -> tuple[Any, Collector, MmuGather]:
    """A machine for ``arch`` and a gather started on it."""
    m, c = machine(arch, **kw)
    mm = mm if mm is not None else MmStruct()
    tlb = api.tlb_gather_mmu_fullmm(m, mm) if fullmm else api.tlb_gather_mmu(m, mm)
    return m, c, tlb


def _norm(event: dict[str, Any]) -> dict[str, Any]:
    out = dict(event)
    if "levels" in out:
        out["levels"] = frozenset(out["levels"])
    return out


def take(c: Collector) -> list[dict[str, Any]]:
    """The contract events since the last take (levels as a set), then forget them."""
    events = [_norm(e) for e in c.contract()]
    c.events.clear()
    return events


def ev(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}


def flush(
    arch: str,
    scope: str,
    start: int | None = None,
    end: int | None = None,
    *,
    levels: Iterable[str] = (),
    freed_tables: bool = False,
    exec_: bool = False,
    huge: bool = False,
    page_size: int = PS,
) -> dict[str, Any]:
    """The ``tlb_flush`` event: flush_tlb_mm() ("mm") or flush_tlb_range() ("range")."""
    fields: dict[str, Any] = {"event": "tlb_flush", "scope": scope}
    if scope == "range":
        fields["start"] = start
        fields["end"] = end
    fields.update(exec=exec_, huge=huge, freed_tables=freed_tables, levels=frozenset(levels))
    if arch == "page-size":
        fields["page_size"] = page_size
    return fields


def notify(start: int, end: int) -> dict[str, Any]:
    return ev("mmu_notifier_invalidate", start=start, end=end)


def free(pages: Iterable[int]) -> dict[str, Any]:
    return ev("free_pages", pages=list(pages))


def alloc(what: str = "page_batch", ok: bool = True) -> dict[str, Any]:
    return ev("batch_alloc", what=what, ok=ok)


def rmaps(pages: Iterable[int]) -> list[dict[str, Any]]:
    return [ev("rmap_remove", page=p) for p in pages]


def frees_in_chunks(first: int, count: int, chunk: int = 512) -> list[dict[str, Any]]:
    """tlb_batch_pages_flush() of one batch holding pages first..first+count-1."""
    out = []
    while count:
        n = min(chunk, count)
        out.append(free(range(first, first + n)))
        first += n
        count -= n
    return out


def queue_many(tlb: MmuGather, pages: Iterable[int], size: int = PS) -> list[bool]:
    return [__tlb_remove_page_size(tlb, p, size) for p in pages]


# ----------------------------------------------------------------------
# Constants as the kernel derives them from PAGE_SIZE
# ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page_size", "batch", "count", "tables"),
    [(4096, 510, 19, 509), (16384, 2046, 4, 2045), (65536, 8190, 1, 8189)],
)
def test_derived_constants(page_size: int, batch: int, count: int, tables: int) -> None:
    m, _ = machine("rcu-table-free", page_size=page_size)
    geo = m.geometry
    # MAX_GATHER_BATCH = (PAGE_SIZE - sizeof(struct mmu_gather_batch)) / sizeof(void *)
    assert geo.max_gather_batch == batch
    # MAX_GATHER_BATCH_COUNT = 10000UL / MAX_GATHER_BATCH
    assert geo.max_gather_batch_count == count
    # MAX_TABLE_BATCH = (PAGE_SIZE - sizeof(struct mmu_table_batch)) / sizeof(void *)
    assert geo.max_table_batch == tables
    assert geo.queue_capacity == 8 + count * batch


def test_s390_geometry() -> None:
    geo = machine("s390")[0].geometry
    assert (geo.pmd_size, geo.pud_size, geo.p4d_size) == (MIB, 2 * GIB, 4 * TIB)
    assert geo.task_size == S390_TASK_SIZE
    x86 = machine("generic-smp")[0].geometry
    assert (x86.pmd_size, x86.pud_size, x86.p4d_size) == (2 * MIB, GIB, 512 * GIB)
    assert x86.task_size == TASK_SIZE


# ----------------------------------------------------------------------
# __tlb_remove_page_size(): the bundle, the batch pages, the limits
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", GATHERING)
def test_bundle_fills_then_batch_page_allocated(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert queue_many(tlb, range(1, 8)) == [False] * 7
    assert take(c) == []
    # batch->nr == batch->max (8): tlb_next_batch() allocates a batch page.
    assert __tlb_remove_page_size(tlb, 8, PS) is False
    assert take(c) == [alloc()]
    assert __tlb_remove_page_size(tlb, 9, PS) is False
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        free(range(1, 9)),
        free([9]),
    ]
    assert tlb.mm.tlb_flush_pending == 0


@pytest.mark.parametrize("arch", GATHERING)
def test_full_batch_page_then_next_batch(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x5000)
    returns = []
    alloc_after = []
    for page in range(1, 520):
        returns.append(__tlb_remove_page_size(tlb, page, PS))
        if take(c):
            alloc_after.append(page)
    assert not any(returns)
    # The bundle fills at 8, the first batch page (MAX_GATHER_BATCH 510) at 518.
    assert alloc_after == [8, 518]
    api.tlb_flush_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x5000, 0x6000, levels={"pte"}),
        notify(0x5000, 0x6000),
        free(range(1, 9)),
        free(range(9, 519)),
        free([519]),
    ]


@pytest.mark.parametrize("arch", GATHERING)
def test_max_gather_batch_count_reports_full_without_allocating(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    full_at = []
    alloc_after = []
    for page in range(1, 9699):
        if __tlb_remove_page_size(tlb, page, PS):
            full_at.append(page)
        events = take(c)
        if events:
            assert events == [alloc()]
            alloc_after.append(page)
    # 8 + 19 * 510 = 9698: tlb->batch_count == MAX_GATHER_BATCH_COUNT, no allocation.
    assert full_at == [9698]
    assert alloc_after == [8 + 510 * k for k in range(19)]
    api.tlb_flush_mmu(tlb)
    expected = [flush(arch, "range", 0x1000, 0x2000, levels={"pte"}), notify(0x1000, 0x2000)]
    expected.append(free(range(1, 9)))
    for k in range(19):
        expected.append(free(range(9 + 510 * k, 9 + 510 * (k + 1))))
    assert take(c) == expected

    # The batch pages stay chained: the second round reuses them, allocating nothing.
    api.tlb_remove_tlb_entry(tlb, 0x3000)
    returns = queue_many(tlb, range(10001, 10001 + 9698))
    assert returns == [False] * 9697 + [True]
    assert take(c) == []
    # Ignoring the True and queueing once more overruns the last batch page.
    with pytest.raises(KernelBug):
        __tlb_remove_page_size(tlb, 99999, PS)
    events = take(c)
    assert [e["event"] for e in events] == ["bug"]
    assert isinstance(events[0]["what"], str) and events[0]["what"]


@pytest.mark.parametrize("arch", GATHERING)
def test_tlb_remove_page_size_flushes_when_full(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x7000)
    for page in range(1, 9698):
        api.tlb_remove_page_size(tlb, page, PS)
    assert [e["event"] for e in take(c)] == ["batch_alloc"] * 19
    # The 9,698th page fills the queue: tlb_remove_page_size() calls tlb_flush_mmu().
    api.tlb_remove_page_size(tlb, 9698, PS)
    events = take(c)
    assert events[:2] == [
        flush(arch, "range", 0x7000, 0x8000, levels={"pte"}),
        notify(0x7000, 0x8000),
    ]
    assert [len(e["pages"]) for e in events[2:]] == [8] + [510] * 19
    assert [p for e in events[2:] for p in e["pages"]] == list(range(1, 9699))
    # That flush reset the range: tlb->end is 0 again, so the next page is a bug.
    with pytest.raises(KernelBug):
        api.tlb_remove_page_size(tlb, 9699, PS)
    assert [e["event"] for e in take(c)] == ["bug"]


@pytest.mark.parametrize("arch", GATHERING)
def test_batch_alloc_failure_reports_full_after_the_bundle(arch: str) -> None:
    m, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x2000)
    m.fail_alloc("page_batch")
    assert queue_many(tlb, range(1, 9)) == [False] * 7 + [True]
    assert take(c) == [alloc(ok=False)]
    api.tlb_flush_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x2000, 0x3000, levels={"pte"}),
        notify(0x2000, 0x3000),
        free(range(1, 9)),
    ]
    # The failure was used up: the next bundle overflow allocates.
    api.tlb_remove_tlb_entry(tlb, 0x2000)
    assert queue_many(tlb, range(11, 20)) == [False] * 9
    assert take(c) == [alloc(ok=True)]
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x2000, 0x3000, levels={"pte"}),
        notify(0x2000, 0x3000),
        free(range(11, 19)),
        free([19]),
    ]


@pytest.mark.parametrize("arch", GATHERING)
def test_fail_alloc_keeps_the_larger_pending_count(arch: str) -> None:
    m, c, tlb = gather(arch, fullmm=True)
    api.tlb_change_page_size(tlb, PS)
    m.fail_alloc("page_batch", 2)
    m.fail_alloc("page_batch", 1)  # the larger count (2) stays
    m.fail_alloc("page_batch", 0)  # does nothing
    m.fail_alloc("table_batch", 5)  # another kind: no effect on page batches
    outcomes = []
    for round_ in range(3):
        full = queue_many(tlb, range(100 * round_, 100 * round_ + 8))
        outcomes.append((full[-1], [e["ok"] for e in take(c)]))
        api.tlb_flush_mmu(tlb)
        take(c)
    assert outcomes == [(True, [False]), (True, [False]), (False, [True])]


@pytest.mark.parametrize("arch", GATHERING)
def test_overrunning_a_full_bundle_is_a_bug(arch: str) -> None:
    m, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    m.fail_alloc("page_batch")
    assert queue_many(tlb, range(1, 9))[-1] is True
    # VM_BUG_ON_PAGE(batch->nr > batch->max, ...)
    with pytest.raises(KernelBug) as info:
        __tlb_remove_page_size(tlb, 9, PS)
    events = take(c)
    assert [e["event"] for e in events] == ["batch_alloc", "bug"]
    assert events[1]["what"] == info.value.what
    assert info.value.what


@pytest.mark.parametrize("arch", GATHERING)
def test_queueing_with_an_empty_range_is_a_bug(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    with pytest.raises(KernelBug):
        __tlb_remove_page_size(tlb, 1, PS)  # VM_BUG_ON(!tlb->end)
    assert [e["event"] for e in take(c)] == ["bug"]


@pytest.mark.parametrize("arch", GATHERING)
def test_queueing_after_the_range_was_flushed_is_a_bug(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.tlb_flush_mmu_tlbonly(tlb)  # __tlb_reset_range(): tlb->end = 0
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
    ]
    with pytest.raises(KernelBug):
        api.tlb_remove_page_size(tlb, 2, PS)
    assert [e["event"] for e in take(c)] == ["bug"]


def test_empty_range_bug_comes_before_the_page_size_warning() -> None:
    # VM_BUG_ON(!tlb->end) precedes VM_WARN_ON(tlb->page_size != page_size).
    _, c, tlb = gather("page-size")
    with pytest.raises(KernelBug):
        __tlb_remove_page_size(tlb, 1, PS)
    assert [e["event"] for e in take(c)] == ["bug"]


@pytest.mark.parametrize("arch", GATHERING)
def test_fullmm_range_is_never_empty(arch: str) -> None:
    _, c, tlb = gather(arch, fullmm=True)
    api.tlb_change_page_size(tlb, PS)
    assert __tlb_remove_page_size(tlb, 1, PS) is False  # tlb->end == ~0
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    # Nothing was cleared: tlb_flush_mmu_tlbonly() returns early, only the free runs.
    assert take(c) == [free([1])]


@pytest.mark.parametrize(
    ("arch", "page_size", "full_at", "sizes"),
    [
        # MAX_GATHER_BATCH 2046, MAX_GATHER_BATCH_COUNT 4; 512-page free chunks.
        ("generic-smp", 16384, 8 + 4 * 2046, [8] + [512, 512, 512, 510] * 4),
        ("page-size", 16384, 8 + 4 * 2046, [8] + [512, 512, 512, 510] * 4),
        ("up", 16384, 8 + 4 * 2046, [8] + [512, 512, 512, 510] * 4),
        ("rcu-table-free", 16384, 8 + 4 * 2046, [8] + [512, 512, 512, 510] * 4),
        # MAX_GATHER_BATCH 8190, MAX_GATHER_BATCH_COUNT 1.
        ("generic-smp", 65536, 8 + 8190, [8] + [512] * 15 + [510]),
    ],
)
def test_large_pages_free_in_chunks_of_512(
    arch: str, page_size: int, full_at: int, sizes: list[int]
) -> None:
    _, c, tlb = gather(arch, page_size=page_size)
    api.tlb_change_page_size(tlb, page_size)
    api.tlb_remove_tlb_entry(tlb, 4 * page_size)
    full = queue_many(tlb, range(1, full_at + 1), page_size)
    assert full == [False] * (full_at - 1) + [True]
    assert take(c) == [alloc()] * ((full_at - 8) // (page_size // 8 - 2))
    api.tlb_flush_mmu(tlb)
    events = take(c)
    assert events[:2] == [
        flush(arch, "range", 4 * page_size, 5 * page_size, levels={"pte"}, page_size=page_size),
        notify(4 * page_size, 5 * page_size),
    ]
    assert [e["event"] for e in events[2:]] == ["free_pages"] * len(sizes)
    assert [len(e["pages"]) for e in events[2:]] == sizes
    assert [p for e in events[2:] for p in e["pages"]] == list(range(1, full_at + 1))


def test_one_batch_page_of_16k_pages_frees_512_512_512_510() -> None:
    _, c, tlb = gather("generic-smp", page_size=16384)
    api.tlb_remove_tlb_entry(tlb, 0x10000)
    n = 8 + 2046
    assert not any(queue_many(tlb, range(1, n + 1), 16384))
    # The bundle fills at 8, the first batch page at 8 + 2046: a second one is allocated.
    assert take(c) == [alloc(), alloc()]
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush("generic-smp", "range", 0x10000, 0x14000, levels={"pte"}),
        notify(0x10000, 0x14000),
        free(range(1, 9)),
        *frees_in_chunks(9, 2046),
    ]
    assert [len(e["pages"]) for e in frees_in_chunks(9, 2046)] == [512, 512, 512, 510]


def test_s390_frees_every_page_at_once() -> None:
    m, c, tlb = gather("s390")
    m.fail_alloc("page_batch")
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    for page in range(1, 9700):
        assert __tlb_remove_page_size(tlb, page, PS) is False
    api.tlb_remove_page_size(tlb, 9700, PS)
    # No batch page is ever asked for; each page is freed as it comes.
    assert take(c) == [ev("free_page", page=p) for p in range(1, 9701)]
    api.tlb_finish_mmu(tlb)
    # PTE clears were invalidated one by one (IPTE): the lazy tlb_flush()
    # flushes nothing, the notifiers still hear of the range.
    assert take(c) == [notify(0x1000, 0x2000)]


def test_s390_queues_without_a_range() -> None:
    _, c, tlb = gather("s390")
    assert __tlb_remove_page_size(tlb, 5, PS) is False
    api.tlb_remove_page_size(tlb, 6, 2 * MIB)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [ev("free_page", page=5), ev("free_page", page=6)]


# ----------------------------------------------------------------------
# tlb_change_page_size() and MMU_GATHER_PAGE_SIZE
# ----------------------------------------------------------------------


def test_page_size_change_flushes_and_warns() -> None:
    arch = "page-size"
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)  # tlb->page_size was 0: no flush
    assert take(c) == []
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    assert take(c) == []
    api.tlb_change_page_size(tlb, 2 * MIB)  # a change: tlb_flush_mmu() at the old size
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}, page_size=PS),
        notify(0x1000, 0x2000),
        free([1]),
    ]
    api.tlb_remove_pmd_tlb_entry(tlb, 0x200000)
    assert __tlb_remove_page_size(tlb, 2, 2 * MIB) is False
    assert take(c) == []
    # VM_WARN_ON(tlb->page_size != page_size): warned, and queued all the same.
    assert __tlb_remove_page_size(tlb, 3, PS) is False
    assert take(c) == [ev("warning", what="tlb->page_size != page_size")]
    api.tlb_change_page_size(tlb, 2 * MIB)  # the same size: nothing
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x200000, 0x400000, levels={"pmd"}, page_size=2 * MIB),
        notify(0x200000, 0x400000),
        free([2, 3]),
    ]


def test_page_size_is_zero_until_the_first_change() -> None:
    arch = "page-size"
    _, c, tlb = gather(arch)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    assert take(c) == [ev("warning", what="tlb->page_size != page_size")]
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}, page_size=0),
        notify(0x1000, 0x2000),
        free([1]),
    ]


def test_page_size_change_on_an_empty_gather_emits_nothing() -> None:
    _, c, tlb = gather("page-size")
    api.tlb_change_page_size(tlb, PS)
    api.tlb_change_page_size(tlb, 2 * MIB)  # tlb_flush_mmu() with nothing to do
    api.tlb_change_page_size(tlb, GIB)
    assert take(c) == []


def test_page_size_change_does_not_flush_fullmm() -> None:
    arch = "page-size"
    _, c, tlb = gather(arch, fullmm=True)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.tlb_change_page_size(tlb, 2 * MIB)  # fullmm: no flush, but the size is taken
    assert take(c) == []
    assert __tlb_remove_page_size(tlb, 2, 2 * MIB) is False
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(arch, "mm", levels={"pte"}, page_size=2 * MIB),
        notify(0x1000, M64),
        free([1, 2]),
    ]


@pytest.mark.parametrize("arch", ["generic-smp", "up", "rcu-table-free"])
def test_page_size_change_is_a_no_op_elsewhere(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.tlb_change_page_size(tlb, 2 * MIB)
    assert __tlb_remove_page_size(tlb, 2, PS) is False  # no VM_WARN_ON without the option
    api.tlb_change_page_size(tlb, PS)
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    events = take(c)
    assert events == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        free([1, 2]),
    ]
    assert "page_size" not in events[0]


def test_page_size_change_is_a_no_op_on_s390() -> None:
    _, c, tlb = gather("s390")
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_change_page_size(tlb, 2 * MIB)
    assert take(c) == []


# ----------------------------------------------------------------------
# tlb_finish_mmu() and tlb_flush_mmu_tlbonly()
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", GATHERING)
def test_nested_finish_flushes_the_whole_mm(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    vma = Vma(0x400000, 0x600000, VM_EXEC)
    api.tlb_start_vma(tlb, vma)
    api.tlb_remove_tlb_entry(tlb, 0x400000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    assert tlb.mm.tlb_flush_pending == 1
    api.tlb_finish_mmu(tlb, nested=True)
    # mm_tlb_flush_nested(): fullmm = 1, __tlb_reset_range(), freed_tables = 1.
    assert take(c) == [
        ev("flush_cache_range", start=0x400000, end=0x600000),
        flush(arch, "mm", levels=(), freed_tables=True, exec_=True),
        notify(M64, M64),
        free([1]),
    ]
    assert tlb.mm.tlb_flush_pending == 0


@pytest.mark.parametrize("arch", GATHERING)
def test_plain_finish_flushes_the_range(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_start_vma(tlb, Vma(0x400000, 0x600000, VM_EXEC))
    api.tlb_remove_tlb_entry(tlb, 0x400000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        ev("flush_cache_range", start=0x400000, end=0x600000),
        flush(arch, "range", 0x400000, 0x401000, levels={"pte"}, exec_=True),
        notify(0x400000, 0x401000),
        free([1]),
    ]


def test_nested_finish_on_s390() -> None:
    _, c, tlb = gather("s390")
    api.tlb_start_vma(tlb, Vma(0x400000, 0x600000, VM_EXEC))
    api.tlb_remove_tlb_entry(tlb, 0x400000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.tlb_finish_mmu(tlb, nested=True)
    # No page table was freed: __tlb_flush_mm_lazy() finds no flush_mm mark.
    assert take(c) == [
        ev("flush_cache_range", start=0x400000, end=0x600000),
        ev("free_page", page=1),
        notify(M64, M64),
    ]
    # A page-table free marks the mm: the nested finish now flushes it.
    _, c, tlb = gather("s390")
    api.tlb_start_vma(tlb, Vma(0x400000, 0x600000, VM_EXEC))
    api.pte_free_tlb(tlb, 70, 0x400000)
    api.tlb_finish_mmu(tlb, nested=True)
    assert take(c) == [
        ev("flush_cache_range", start=0x400000, end=0x600000),
        alloc("table_batch"),
        flush("s390", "mm", levels=(), freed_tables=True, exec_=True),
        notify(M64, M64),
        ev("rcu_queue", tables=[70]),
    ]
    assert tlb.mm.tlb_flush_pending == 0


def test_nested_finish_with_a_table_batch() -> None:
    arch = "rcu-table-free"
    m, c, tlb = gather(arch)
    api.pte_free_tlb(tlb, 70, 0x400000)
    api.tlb_finish_mmu(tlb, nested=True)
    assert take(c) == [
        alloc("table_batch"),
        flush(arch, "mm", levels=(), freed_tables=True),
        notify(M64, M64),
        # tlb_table_flush(): tlb_table_invalidate() finds nothing left to flush.
        ev("rcu_queue", tables=[70]),
    ]
    m.rcu_grace_period()
    assert take(c) == [ev("table_free", tables=[70])]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("fullmm", [False, True])
def test_nothing_cleared_flushes_nothing(arch: str, fullmm: bool) -> None:
    _, c, tlb = gather(arch, fullmm=fullmm)
    api.tlb_change_page_size(tlb, PS)
    vma = Vma(0x400000, 0x500000, VM_PFNMAP)
    api.tlb_start_vma(tlb, vma)
    api.tlb_flush_mmu_tlbonly(tlb)
    api.tlb_end_vma(tlb, vma)
    api.tlb_flush_mmu(tlb)
    api.tlb_discard_rmaps(tlb)
    api.tlb_flush_rmaps(tlb, vma)
    api.tlb_finish_mmu(tlb)
    expected = [] if fullmm else [ev("flush_cache_range", start=0x400000, end=0x500000)]
    assert take(c) == expected
    assert tlb.mm.tlb_flush_pending == 0


@pytest.mark.parametrize("arch", GATHERING)
def test_tlbonly_resets_the_range(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x3000)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.tlb_flush_mmu_tlbonly(tlb)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x4000, levels={"pte"}),
        notify(0x1000, 0x4000),
    ]
    api.tlb_flush_mmu_tlbonly(tlb)  # nothing cleared since
    assert take(c) == []
    api.tlb_finish_mmu(tlb)  # the queued page is still freed
    assert take(c) == [free([1])]


# ----------------------------------------------------------------------
# s390: immediate frees, the lazy whole-mm flush and its mark
# ----------------------------------------------------------------------


def test_s390_pte_clears_give_only_notifier() -> None:
    _, c, tlb = gather("s390")
    vma = Vma(0x1000000, 0x1100000)
    api.tlb_start_vma(tlb, vma)
    api.tlb_remove_tlb_entry(tlb, 0x1000000)
    assert __tlb_remove_page_size(tlb, 7, PS) is False
    api.tlb_remove_tlb_entry(tlb, 0x1001000)
    api.tlb_remove_page_size(tlb, 8, PS)
    api.tlb_end_vma(tlb, vma)  # MERGE_VMAS, no VM_PFNMAP: no flush
    api.tlb_flush_mmu(tlb)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        ev("flush_cache_range", start=0x1000000, end=0x1100000),
        ev("free_page", page=7),
        ev("free_page", page=8),
        notify(0x1000000, 0x1002000),
    ]


def test_s390_pte_free_marks_the_mm() -> None:
    m, c, tlb = gather("s390")
    api.tlb_remove_tlb_entry(tlb, 0x1000000)
    api.pte_free_tlb(tlb, 50, 0x1000000)
    assert take(c) == [alloc("table_batch")]
    api.tlb_flush_mmu(tlb)
    assert take(c) == [
        flush("s390", "mm", levels={"pte", "pmd"}, freed_tables=True),
        notify(0x1000000, 0x1001000),
        ev("rcu_queue", tables=[50]),
    ]
    # The mark was consumed: a later PTE clear is invalidated without a flush.
    api.tlb_remove_tlb_entry(tlb, 0x2000000)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [notify(0x2000000, 0x2001000)]
    assert tlb.mm.context.get("flush_mm") in (False, 0, None)
    m.rcu_grace_period()
    assert take(c) == [ev("table_free", tables=[50])]


def test_s390_mark_lives_in_the_mm_not_the_gather() -> None:
    m, c = machine("s390")
    mm_a, mm_b = MmStruct(), MmStruct()
    first = api.tlb_gather_mmu(m, mm_a)
    api.pte_free_tlb(first, 60, 0x1000000)  # mm_a->context.flush_mm = 1
    assert take(c) == [alloc("table_batch")]

    other = api.tlb_gather_mmu(m, mm_b)  # another mm: not marked
    api.tlb_remove_tlb_entry(other, 0x5000000)
    api.tlb_finish_mmu(other)
    assert take(c) == [notify(0x5000000, 0x5001000)]

    second = api.tlb_gather_mmu(m, mm_a)  # the same mm: the mark is seen
    assert mm_a.tlb_flush_pending == 2
    api.tlb_remove_tlb_entry(second, 0x3000000)
    api.tlb_flush_mmu(second)
    assert take(c) == [
        flush("s390", "mm", levels={"pte"}),
        notify(0x3000000, 0x3001000),
    ]
    # mm_tlb_flush_nested(): two gathers are in flight on mm_a.
    api.tlb_finish_mmu(second, nested=mm_a.tlb_flush_pending > 1)
    assert take(c) == [notify(M64, M64)]  # the mark is gone: no tlb_flush

    # The first gather's own flush finds the mark already consumed.
    api.tlb_finish_mmu(first, nested=mm_a.tlb_flush_pending > 1)
    assert take(c) == [notify(0x1000000, 0x1001000), ev("rcu_queue", tables=[60])]
    assert (mm_a.tlb_flush_pending, mm_b.tlb_flush_pending) == (0, 0)


# ----------------------------------------------------------------------
# tlb_start_vma() / tlb_end_vma()
# ----------------------------------------------------------------------

VMA_A = Vma(0x400000, 0x500000)
VMA_B = Vma(0x800000, 0x900000, VM_PFNMAP)
VMA_C = Vma(0xA00000, 0xC00000, VM_EXEC | VM_HUGETLB)


def _walk_three_vmas(tlb: MmuGather) -> None:
    api.tlb_change_page_size(tlb, PS)
    api.tlb_start_vma(tlb, VMA_A)
    api.tlb_remove_tlb_entry(tlb, 0x400000)
    api.tlb_remove_tlb_entry(tlb, 0x401000)
    api.tlb_end_vma(tlb, VMA_A)
    api.tlb_start_vma(tlb, VMA_B)
    api.tlb_remove_tlb_entry(tlb, 0x800000)
    api.tlb_end_vma(tlb, VMA_B)
    api.tlb_start_vma(tlb, VMA_C)
    api.tlb_remove_huge_tlb_entry(tlb, 0xA00000, 2 * MIB)
    api.tlb_end_vma(tlb, VMA_C)
    api.tlb_start_vma(tlb, VMA_A)
    api.tlb_end_vma(tlb, VMA_A)


def _fcr(vma: Vma) -> dict[str, Any]:
    return ev("flush_cache_range", start=vma.start, end=vma.end)


@pytest.mark.parametrize("arch", GATHERING)
def test_end_vma_flushes_every_vma(arch: str) -> None:
    _, c, tlb = gather(arch)
    _walk_three_vmas(tlb)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        _fcr(VMA_A),
        flush(arch, "range", 0x400000, 0x402000, levels={"pte"}),
        notify(0x400000, 0x402000),
        _fcr(VMA_B),
        flush(arch, "range", 0x800000, 0x801000, levels={"pte"}),
        notify(0x800000, 0x801000),
        _fcr(VMA_C),
        flush(arch, "range", 0xA00000, 0xC00000, levels={"pmd"}, exec_=True, huge=True),
        notify(0xA00000, 0xC00000),
        _fcr(VMA_A),
    ]


def test_end_vma_on_s390_flushes_only_pfnmap() -> None:
    _, c, tlb = gather("s390")
    _walk_three_vmas(tlb)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        _fcr(VMA_A),
        _fcr(VMA_B),
        # vma_pfn: tlb_flush_mmu_tlbonly() over both VMAs (merged), no mark: no tlb_flush.
        notify(0x400000, 0x801000),
        _fcr(VMA_C),
        _fcr(VMA_A),
        # 2 MiB >= PMD_SIZE (1 MiB on s390): a PMD-level entry, flushed at the end.
        notify(0xA00000, 0xC00000),
    ]


def test_end_vma_reads_the_flags_of_start_vma() -> None:
    _, c, tlb = gather("s390")
    api.tlb_start_vma(tlb, VMA_B)  # VM_PFNMAP recorded in tlb->vma_pfn
    api.tlb_remove_tlb_entry(tlb, 0x800000)
    api.tlb_end_vma(tlb, Vma(VMA_B.start, VMA_B.end))  # the argument's flags are not read
    assert take(c) == [_fcr(VMA_B), notify(0x800000, 0x801000)]
    api.tlb_start_vma(tlb, VMA_A)
    api.tlb_remove_tlb_entry(tlb, 0x400000)
    api.tlb_end_vma(tlb, VMA_B)
    assert take(c) == [_fcr(VMA_A)]


@pytest.mark.parametrize("arch", ARCHES)
def test_fullmm_skips_vma_hooks(arch: str) -> None:
    _, c, tlb = gather(arch, fullmm=True)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_start_vma(tlb, VMA_C)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    api.tlb_end_vma(tlb, VMA_C)
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    expected = [] if arch == "s390" else [flush(arch, "mm", levels={"pte"})]
    # tlb_start_vma() returned before tlb_update_vma_flags(): exec/huge stay false.
    assert take(c) == [*expected, notify(0x1000, M64)]


# ----------------------------------------------------------------------
# Page tables: the table batch, RCU, the single-table fallback
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", TABLE_BATCH)
def test_table_batch_fills_at_509(arch: str) -> None:
    m, c, tlb = gather(arch)
    pmd = 2 * MIB
    for i in range(508):
        api.pte_free_tlb(tlb, 1000 + i, (i + 1) * pmd)
    assert take(c) == [alloc("table_batch")]
    # The 509th table fills the batch: tlb_table_flush() -> tlb_table_invalidate()
    # -> tlb_flush_mmu_tlbonly(), then tlb_remove_table_free() -> call_rcu().
    api.pte_free_tlb(tlb, 1508, 509 * pmd)
    end = 509 * pmd + PS
    invalidate = (
        flush(arch, "range", pmd, end, levels={"pmd"}, freed_tables=True)
        if arch == "rcu-table-free"
        else flush(arch, "mm", levels={"pmd"}, freed_tables=True)
    )
    assert take(c) == [
        invalidate,
        notify(pmd, end),
        ev("rcu_queue", tables=list(range(1000, 1509))),
    ]
    api.pte_free_tlb(tlb, 1509, 510 * pmd)
    assert take(c) == [alloc("table_batch")]
    api.tlb_finish_mmu(tlb)
    start, end = 510 * pmd, 510 * pmd + PS
    invalidate = (
        flush(arch, "range", start, end, levels={"pmd"}, freed_tables=True)
        if arch == "rcu-table-free"
        else flush(arch, "mm", levels={"pmd"}, freed_tables=True)
    )
    assert take(c) == [invalidate, notify(start, end), ev("rcu_queue", tables=[1509])]
    assert tlb.batch is None
    # Nothing is freed before the grace period ends.
    m.rcu_grace_period()
    assert take(c) == [
        ev("table_free", tables=list(range(1000, 1509))),
        ev("table_free", tables=[1509]),
    ]
    m.rcu_grace_period()
    assert take(c) == []


@pytest.mark.parametrize("arch", TABLE_BATCH)
def test_single_table_fallback(arch: str) -> None:
    m, c, tlb = gather(arch)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    m.fail_alloc("table_batch")
    api.pte_free_tlb(tlb, 77, 0x200000)
    invalidate = (
        flush(arch, "range", 0x1000, 0x201000, levels={"pte", "pmd"}, freed_tables=True)
        if arch == "rcu-table-free"
        else flush(arch, "mm", levels={"pte", "pmd"}, freed_tables=True)
    )
    # tlb_remove_table(): no batch page -> tlb_table_invalidate(), tlb_remove_table_one().
    assert take(c) == [
        alloc("table_batch", ok=False),
        invalidate,
        notify(0x1000, 0x201000),
        ev("ipi_sync"),
        ev("table_free", tables=[77]),
    ]
    api.pte_free_tlb(tlb, 78, 0x400000)
    assert take(c) == [alloc("table_batch")]
    api.tlb_finish_mmu(tlb)
    invalidate = (
        flush(arch, "range", 0x400000, 0x401000, levels={"pmd"}, freed_tables=True)
        if arch == "rcu-table-free"
        else flush(arch, "mm", levels={"pmd"}, freed_tables=True)
    )
    assert take(c) == [invalidate, notify(0x400000, 0x401000), ev("rcu_queue", tables=[78])]
    m.rcu_grace_period()
    assert take(c) == [ev("table_free", tables=[78])]


@pytest.mark.parametrize("arch", TABLE_BATCH)
def test_single_table_fallback_with_nothing_recorded(arch: str) -> None:
    m, c, tlb = gather(arch)
    m.fail_alloc("table_batch")
    api.tlb_remove_table(tlb, 5)
    assert take(c) == [
        alloc("table_batch", ok=False),
        ev("ipi_sync"),
        ev("table_free", tables=[5]),
    ]
    api.tlb_finish_mmu(tlb)
    assert take(c) == []


@pytest.mark.parametrize("arch", TABLES_AS_PAGES)
def test_page_tables_are_queued_as_pages(arch: str) -> None:
    m, c, tlb = gather(arch)
    m.fail_alloc("table_batch", 3)  # no table batch here: nothing asks for one
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x200000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.pte_free_tlb(tlb, 500, 0x200000)  # tlb_flush_pmd_range(): level pmd
    api.pmd_free_tlb(tlb, 501, 0x40000000)  # tlb_flush_pud_range(): level pud
    api.pud_free_tlb(tlb, 502, 0x8000000000)  # tlb_flush_p4d_range(): level p4d
    api.p4d_free_tlb(tlb, 503, 0x10000000000)  # __tlb_adjust_range() only
    assert take(c) == []
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(
            arch,
            "range",
            0x200000,
            0x10000001000,
            levels={"pte", "pmd", "pud", "p4d"},
            freed_tables=True,
        ),
        notify(0x200000, 0x10000001000),
        free([1, 500, 501, 502, 503]),
    ]


@pytest.mark.parametrize("arch", TABLES_AS_PAGES)
def test_page_table_filling_the_queue_flushes(arch: str) -> None:
    m, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    m.fail_alloc("page_batch")
    assert queue_many(tlb, range(1, 8)) == [False] * 7
    # tlb_remove_table() is tlb_remove_page(): the 8th entry finds no batch page,
    # and tlb_remove_page_size() flushes at once.
    api.pte_free_tlb(tlb, 900, 0x200000)
    assert take(c) == [
        alloc(ok=False),
        flush(arch, "range", 0x1000, 0x201000, levels={"pte", "pmd"}, freed_tables=True),
        notify(0x1000, 0x201000),
        free([1, 2, 3, 4, 5, 6, 7, 900]),
    ]


def test_page_tables_on_page_size_warn_before_a_size_is_set() -> None:
    _, c, tlb = gather("page-size")
    api.pte_free_tlb(tlb, 500, 0x200000)
    assert take(c) == [ev("warning", what="tlb->page_size != page_size")]


def test_rcu_table_free_keeps_tables_out_of_the_page_queue() -> None:
    arch = "rcu-table-free"
    m, c, tlb = gather(arch)
    api.tlb_remove_tlb_entry(tlb, 0x200000)
    assert __tlb_remove_page_size(tlb, 1, PS) is False
    api.pte_free_tlb(tlb, 500, 0x200000)
    assert take(c) == [alloc("table_batch")]
    api.tlb_finish_mmu(tlb)
    # tlb_flush_mmu_free(): tlb_table_flush() before tlb_batch_pages_flush().
    assert take(c) == [
        flush(arch, "range", 0x200000, 0x201000, levels={"pte", "pmd"}, freed_tables=True),
        notify(0x200000, 0x201000),
        ev("rcu_queue", tables=[500]),
        free([1]),
    ]
    m.rcu_grace_period()
    assert take(c) == [ev("table_free", tables=[500])]


# ----------------------------------------------------------------------
# The rmap pointer (rmap_pend / rmap_pend_first)
# ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", SMP_RMAP)
def test_rmap_pointer_walk(arch: str) -> None:
    _, c, tlb = gather(arch)
    vma = Vma(0x0, 0x10000000)
    assert api.tlb_batch_rmap(tlb) is True
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    api.tlb_discard_rmaps(tlb)
    queue_many(tlb, range(1, 6))
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps(range(1, 6))
    queue_many(tlb, [6, 7])
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps([6, 7])  # never the prefix already removed
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == []
    # Page 8 fills the bundle; 9..20 go to the new batch page. The walk starts
    # in the bundle at index 7 and goes on into the batch page.
    queue_many(tlb, range(8, 21))
    assert take(c) == [alloc()]
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps(range(8, 21))
    # Discarded pages are skipped for good.
    api.tlb_discard_rmaps(tlb)
    queue_many(tlb, [21, 22])
    api.tlb_discard_rmaps(tlb)
    queue_many(tlb, [23])
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps([23])
    # Across the end of the first batch page (9..518) into a second one.
    queue_many(tlb, range(24, 521))
    assert take(c) == [alloc()]
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps(range(24, 521))
    # tlb_flush_mmu() -> tlb_batch_pages_flush() -> tlb_discard_rmaps().
    api.tlb_discard_rmaps(tlb)
    queue_many(tlb, [521])
    api.tlb_flush_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        free(range(1, 9)),
        free(range(9, 519)),
        free([519, 520, 521]),
    ]
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == []
    # The pointer is back at the bundle's start; reused batch pages are walked,
    # the empty one after them ends the walk.
    api.tlb_remove_tlb_entry(tlb, 0x3000)
    queue_many(tlb, range(600, 609))
    assert take(c) == []  # batch pages are reused, not allocated
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps(range(600, 609))
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x3000, 0x4000, levels={"pte"}),
        notify(0x3000, 0x4000),
        free(range(600, 608)),
        free([608]),
    ]


@pytest.mark.parametrize("arch", SMP_RMAP)
def test_rmap_removal_ignores_the_encoded_flags(arch: str) -> None:
    # The patch's tlb_flush_rmap_batch() removes every page from `first` on,
    # whatever encode_page() flags it carries.
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    assert __tlb_remove_page_size(tlb, 1, PS, 1) is False
    assert __tlb_remove_page_size(tlb, 2, PS, 0) is False
    assert __tlb_remove_page_size(tlb, 3, PS, 1) is False
    api.tlb_flush_rmaps(tlb, Vma(0, 0x100000))
    assert take(c) == rmaps([1, 2, 3])


@pytest.mark.parametrize("arch", SMP_RMAP)
def test_page_flush_resets_the_rmap_pointer(arch: str) -> None:
    # tlb_batch_pages_flush() ends with tlb_discard_rmaps(): rmap_pend = &tlb->local,
    # rmap_pend_first = 0, wherever the pointer stood before.
    _, c, tlb = gather(arch)
    vma = Vma(0x0, 0x100000)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    queue_many(tlb, [1, 2, 3])
    api.tlb_discard_rmaps(tlb)  # the pointer: bundle, index 3
    api.tlb_flush_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        free([1, 2, 3]),
    ]
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    queue_many(tlb, range(4, 9))
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps(range(4, 9))

    queue_many(tlb, range(9, 15))  # 9..11 fill the bundle, 12..14 in a batch page
    assert take(c) == [alloc()]
    api.tlb_discard_rmaps(tlb)  # the pointer: first batch page, index 3
    api.tlb_flush_mmu(tlb)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        free(range(4, 12)),
        free([12, 13, 14]),
    ]
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    queue_many(tlb, range(15, 27))  # bundle 15..22, the reused batch page 23..26
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == rmaps(range(15, 27))


@pytest.mark.parametrize("arch", SMP_RMAP)
def test_tlbonly_keeps_pending_rmaps(arch: str) -> None:
    # zap_pte_range(): force_flush -> tlb_flush_mmu_tlbonly(), then tlb_flush_rmaps().
    _, c, tlb = gather(arch)
    vma = Vma(0x0, 0x100000)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_discard_rmaps(tlb)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    queue_many(tlb, [1, 2])
    api.tlb_flush_mmu_tlbonly(tlb)
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == [
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        *rmaps([1, 2]),
    ]


@pytest.mark.parametrize("arch", SMP_RMAP)
def test_flush_inside_remove_page_discards_rmaps(arch: str) -> None:
    m, c, tlb = gather(arch)
    vma = Vma(0x0, 0x100000)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    m.fail_alloc("page_batch")
    api.tlb_discard_rmaps(tlb)
    queue_many(tlb, range(1, 8))
    api.tlb_remove_page_size(tlb, 8, PS)  # full: tlb_flush_mmu()
    assert take(c) == [
        alloc(ok=False),
        flush(arch, "range", 0x1000, 0x2000, levels={"pte"}),
        notify(0x1000, 0x2000),
        free(range(1, 9)),
    ]
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == []


@pytest.mark.parametrize("arch", SMP_RMAP)
def test_rmaps_of_a_full_queue(arch: str) -> None:
    m, c, tlb = gather(arch)
    vma = Vma(0x0, 0x100000)
    api.tlb_change_page_size(tlb, PS)
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    m.fail_alloc("page_batch")
    assert queue_many(tlb, range(1, 9))[-1] is True
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == [alloc(ok=False), *rmaps(range(1, 9))]
    api.tlb_flush_rmaps(tlb, vma)
    assert take(c) == []


@pytest.mark.parametrize("arch", NO_RMAP)
def test_no_rmap_batching(arch: str) -> None:
    _, c, tlb = gather(arch)
    vma = Vma(0x0, 0x100000)
    assert api.tlb_batch_rmap(tlb) is False
    api.tlb_remove_tlb_entry(tlb, 0x1000)
    api.tlb_discard_rmaps(tlb)
    queue_many(tlb, range(1, 12))
    api.tlb_flush_rmaps(tlb, vma)
    api.tlb_finish_mmu(tlb)
    assert all(e["event"] != "rmap_remove" for e in take(c))


@pytest.mark.parametrize("arch", ARCHES)
def test_batch_rmap_answer(arch: str, tmp_path: Any) -> None:
    from mmugather.core.replay import parse_file, run

    _, _, tlb = gather(arch)
    assert api.tlb_batch_rmap(tlb) is (arch in SMP_RMAP)
    path = tmp_path / "q.ops.jsonl"
    path.write_text(
        '{"op":"tlb_batch_rmap"}\n{"op":"tlb_gather_mmu"}\n{"op":"tlb_batch_rmap"}\n'
        '{"op":"tlb_finish_mmu"}\n'
    )
    m, c = machine(arch)
    run(parse_file(str(path), 4096), m)
    want = arch in SMP_RMAP
    assert c.contract() == [ev("return", op="tlb_batch_rmap", value=want)] * 2


# ----------------------------------------------------------------------
# __tlb_adjust_range(): unsigned int sizes, 64-bit addresses, levels by size
# ----------------------------------------------------------------------


def _geometry(arch: str) -> dict[str, int]:
    if arch == "s390":
        return {"pmd": MIB, "pud": 2 * GIB, "p4d": 4 * TIB, "task": S390_TASK_SIZE}
    return {"pmd": 2 * MIB, "pud": GIB, "p4d": 512 * GIB, "task": TASK_SIZE}


def _huge_cases(arch: str) -> list[tuple[int, str, int]]:
    """(huge page size, level, bytes added to the range) by the kernel's macro."""
    if arch == "s390":
        return [
            (64 * KIB, "pte", 64 * KIB),
            (MIB, "pmd", MIB),
            (2 * MIB, "pmd", 2 * MIB),
            (2 * GIB, "pud", 2 * GIB),
            (4 * GIB, "pud", 0),  # (unsigned int)4 GiB == 0
            ((1 << 32) + 8 * KIB, "pud", 8 * KIB),
            (4 * TIB, "p4d", 0),
        ]
    return [
        (64 * KIB, "pte", 64 * KIB),
        (2 * MIB, "pmd", 2 * MIB),
        (32 * MIB, "pmd", 32 * MIB),
        (GIB, "pud", GIB),
        ((1 << 32) - PS, "pud", (1 << 32) - PS),
        (4 * GIB, "pud", 0),
        (16 * GIB, "pud", 0),
        ((1 << 32) + 8 * KIB, "pud", 8 * KIB),
        (512 * GIB, "p4d", 0),
    ]


def test_huge_entry_level_and_unsigned_int_size(arch: str) -> None:
    addr = 0x40000000000  # 4 TiB
    for size, level, added in _huge_cases(arch):
        _, c, tlb = gather(arch)
        api.tlb_remove_huge_tlb_entry(tlb, addr, size)
        assert (tlb.start, tlb.end) == (addr, addr + added), hex(size)
        bits = (tlb.cleared_ptes, tlb.cleared_pmds, tlb.cleared_puds, tlb.cleared_p4ds)
        assert bits == tuple(lv == level for lv in ("pte", "pmd", "pud", "p4d")), hex(size)
        api.tlb_finish_mmu(tlb)
        expected = [notify(addr, addr + added)]
        if arch != "s390":
            # An empty [addr, addr) range still has tlb->end != 0: flush_tlb_range().
            expected.insert(
                0, flush(arch, "range", addr, addr + added, levels={level}, page_size=0)
            )
        assert take(c) == expected, hex(size)


def test_pmd_and_pud_entries_use_the_arch_geometry(arch: str) -> None:
    geo = _geometry(arch)
    _, c, tlb = gather(arch)
    api.tlb_remove_pmd_tlb_entry(tlb, 8 * geo["pmd"])
    assert (tlb.start, tlb.end) == (8 * geo["pmd"], 9 * geo["pmd"])
    api.tlb_flush_mmu_tlbonly(tlb)
    api.tlb_remove_pud_tlb_entry(tlb, 4 * geo["pud"])
    assert (tlb.start, tlb.end) == (4 * geo["pud"], 5 * geo["pud"])
    api.tlb_finish_mmu(tlb)
    if arch == "s390":
        assert take(c) == [
            notify(8 * MIB, 9 * MIB),
            notify(8 * GIB, 10 * GIB),
        ]
    else:
        assert take(c) == [
            flush(arch, "range", 16 * MIB, 18 * MIB, levels={"pmd"}, page_size=0),
            notify(16 * MIB, 18 * MIB),
            flush(arch, "range", 4 * GIB, 5 * GIB, levels={"pud"}, page_size=0),
            notify(4 * GIB, 5 * GIB),
        ]


def test_range_end_wraps_to_zero(arch: str) -> None:
    task = _geometry(arch)["task"]
    _, c, tlb = gather(arch)
    api.tlb_change_page_size(tlb, PS)
    top = (1 << 64) - PS
    api.tlb_remove_tlb_entry(tlb, top)  # address + PAGE_SIZE == 0: end stays 0
    assert (tlb.start, tlb.end) == (min(task, top), 0)
    assert tlb.cleared_ptes
    if arch != "s390":
        with pytest.raises(KernelBug):  # VM_BUG_ON(!tlb->end)
            __tlb_remove_page_size(tlb, 1, PS)
        assert [e["event"] for e in take(c)] == ["bug"]
        return
    api.tlb_finish_mmu(tlb)
    # The generic tlb_flush() skips flush_tlb_range() when tlb->end is 0.
    assert take(c) == [notify(task, 0)]


@pytest.mark.parametrize("arch", GATHERING)
def test_range_end_wraps_to_zero_without_a_tlb_flush(arch: str) -> None:
    _, c, tlb = gather(arch)
    api.tlb_remove_tlb_entry(tlb, (1 << 64) - PS)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [notify(TASK_SIZE, 0)]


def test_range_end_wraps_past_zero(arch: str) -> None:
    task = _geometry(arch)["task"]
    _, c, tlb = gather(arch)
    addr = (1 << 64) - 2 * MIB
    api.tlb_remove_huge_tlb_entry(tlb, addr, 4 * MIB)  # end = 2 MiB after the wrap
    start = min(task, addr)
    assert (tlb.start, tlb.end) == (start, 2 * MIB)
    assert tlb.cleared_pmds and not tlb.cleared_ptes
    api.tlb_finish_mmu(tlb)
    expected = [notify(start, 2 * MIB)]
    if arch != "s390":
        expected.insert(0, flush(arch, "range", start, 2 * MIB, levels={"pmd"}, page_size=0))
    assert take(c) == expected


def test_fullmm_range(arch: str) -> None:
    _, _, tlb = gather(arch, fullmm=True)
    assert (tlb.start, tlb.end) == (M64, M64)
    api.tlb_remove_tlb_entry(tlb, (1 << 64) - PS)  # wraps to 0: max(~0, 0) stays ~0
    assert (tlb.start, tlb.end) == ((1 << 64) - PS, M64)
    api.tlb_remove_pmd_tlb_entry(tlb, 0x200000)
    assert (tlb.start, tlb.end) == (0x200000, M64)


def test_page_table_ranges(arch: str) -> None:
    """pXd_free_tlb(): PAGE_SIZE at the address, the level one up (generic);
    s390's own macros: pud_free_tlb() records no range, p4d_free_tlb() no level."""
    cases = {
        "pte": ("pmd", True),
        "pmd": ("pud", True),
        "pud": ("p4d", arch != "s390"),
        "p4d": (None, True),
    }
    frees = {
        "pte": api.pte_free_tlb,
        "pmd": api.pmd_free_tlb,
        "pud": api.pud_free_tlb,
        "p4d": api.p4d_free_tlb,
    }
    task = _geometry(arch)["task"]
    addr = 0x80000000
    for table, (level_kind, ranged) in cases.items():
        m, c, tlb = gather(arch)
        api.tlb_change_page_size(tlb, PS)
        frees[table](tlb, 7, addr)
        assert tlb.freed_tables
        assert (tlb.start, tlb.end) == ((addr, addr + PS) if ranged else (task, 0)), table
        levels = {level_kind} if level_kind else set()
        bits = (tlb.cleared_ptes, tlb.cleared_pmds, tlb.cleared_puds, tlb.cleared_p4ds)
        assert bits == tuple(lv in levels for lv in ("pte", "pmd", "pud", "p4d")), table
        api.tlb_finish_mmu(tlb)
        m.rcu_grace_period()
        start, end = (addr, addr + PS) if ranged else (task, 0)
        if arch == "s390":
            tlbi = flush(arch, "mm", levels=levels, freed_tables=True)
        else:
            tlbi = flush(arch, "range", start, end, levels=levels, freed_tables=True)
        if arch in TABLE_BATCH:
            expected = [
                alloc("table_batch"),
                tlbi,
                notify(start, end),
                ev("rcu_queue", tables=[7]),
                ev("table_free", tables=[7]),
            ]
        else:
            expected = [tlbi, notify(start, end), free([7])]
        assert take(c) == expected, table


def test_s390_pud_free_records_no_range() -> None:
    _, c, tlb = gather("s390")
    api.pud_free_tlb(tlb, 11, 0x80000000)
    assert (tlb.start, tlb.end) == (S390_TASK_SIZE, 0)
    api.tlb_finish_mmu(tlb)
    assert take(c) == [
        alloc("table_batch"),
        flush("s390", "mm", levels={"p4d"}, freed_tables=True),
        notify(S390_TASK_SIZE, 0),
        ev("rcu_queue", tables=[11]),
    ]
