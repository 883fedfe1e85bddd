"""Random valid call sequences on every arch, checked against the kernel's rules.

A Hypothesis state machine plays a kernel caller: it opens gathers (fullmm or
not), walks VMAs, clears entries at every level, queues pages with fresh ids,
frees page tables with fresh ids, flushes, removes rmaps, injects allocation
failures and ends RCU grace periods.  It keeps to the caller's contract: it
queues a page only while the range is non-empty (or fullmm), and after
``__tlb_remove_page_size()`` returned True it calls ``tlb_flush_mmu()`` before
queueing again.

It reads the event stream after every call and checks:

* pages: each queued page is freed exactly once, in queue order, at most 512
  per ``free_pages``; on the gathering arches a page whose PTE clear was
  recorded is freed only after a ``tlb_flush`` and an
  ``mmu_notifier_invalidate`` that both came after it was queued; on s390 it
  is freed at once (``free_page``) during the call;
* ``__tlb_remove_page_size()`` returns True exactly when the kernel's bundle,
  batch pages, MAX_GATHER_BATCH_COUNT and injected failures say so, with a
  ``batch_alloc`` exactly when ``tlb_next_batch()`` allocates;
* rmaps: ``tlb_flush_rmaps()`` removes exactly the pages queued since the last
  discard, ``tlb_flush_rmaps()`` or page flush (generic-smp, page-size,
  rcu-table-free), each at most once; never on up and s390;
* page tables: each is freed exactly once, after a ``tlb_flush`` that followed
  its unhooking; a batched one only after ``rcu_queue`` and a grace period, a
  single one right after ``ipi_sync``;
* s390's lazy flush: a ``tlb_flush`` (whole mm) exactly when a page-table free
  marked the mm;
* after ``tlb_finish_mmu()`` nothing is pending (queue empty, no table batch,
  batch pages released) and ``mm.tlb_flush_pending`` is back to 0.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from conftest import ARCHES, machine
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from mmugather.core import api
from mmugather.core.api import __tlb_remove_page_size as queue_page
from mmugather.core.events import CONTRACT_EVENTS
from mmugather.core.gather import MmuGather
from mmugather.core.mm import MmStruct
from mmugather.core.vma import VM_EXEC, VM_HUGETLB, VM_PFNMAP, Vma

PS = 4096
MIB = 1 << 20
GIB = 1 << 30
M64 = (1 << 64) - 1
BUNDLE = 8
MAX_GATHER_BATCH = 510
MAX_GATHER_BATCH_COUNT = 19
MAX_TABLE_BATCH = 509

SMP_RMAP = ("generic-smp", "page-size", "rcu-table-free")
#: the contract events, plus the model's marker of a grace period
WATCHED = CONTRACT_EVENTS | {"rcu_grace_period"}
TABLE_BATCH = ("rcu-table-free", "s390")

SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

F = TypeVar("F", bound=Callable[..., Any])


def checked(fn: F) -> F:
    """Remember that a step failed, so that teardown does not mask the failure."""

    @functools.wraps(fn)
    def wrapper(self: GatherCaller, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return wrapper  # type: ignore[return-value]


addresses = st.integers(1, 1 << 34).map(lambda n: n * PS)  # [4 KiB, 64 TiB], page aligned
huge_sizes = st.sampled_from([64 << 10, MIB, 2 * MIB, 32 * MIB, GIB, 2 * GIB, 16 * GIB])
page_sizes = st.sampled_from([PS, PS, PS, 2 * MIB])
vmas = st.builds(
    lambda start, pages, flags: Vma(start, start + pages * PS, flags),
    addresses,
    st.integers(1, 4096),
    st.sampled_from([0, 0, VM_EXEC, VM_PFNMAP, VM_HUGETLB, VM_EXEC | VM_PFNMAP]),
)


class GatherCaller(RuleBasedStateMachine):
    def __init__(self, arch: str = "generic-smp") -> None:
        super().__init__()
        self.arch = arch
        self.failed = False
        self.gathers = arch != "s390"
        self.smp_rmap = arch in SMP_RMAP
        self.table_batch = arch in TABLE_BATCH
        self.tracks_size = arch == "page-size"
        self.merge_vmas = arch == "s390"
        self.m, self.c = machine(arch)
        self.mm = MmStruct()
        self.tlb: MmuGather | None = None
        self.pos = 0
        self.ids = itertools.count(1)
        self.fail = {"page_batch": 0, "table_batch": 0}
        # pages: the queue as (page, event index when queued, PTE clear recorded)
        self.queue: list[tuple[int, int, bool]] = []
        self.queued_ever: set[int] = set()
        self.freed: set[int] = set()
        self.rmapped: set[int] = set()
        self.pending_rmap: list[int] = []
        self.nbatches = 0
        self.last_full = False
        # page tables: state "called" -> "batched" -> "rcu" -> "freed"
        self.tables: dict[int, str] = {}
        self.table_seq: dict[int, int] = {}
        self.tables_as_pages: set[int] = set()
        self.tbatch: list[int] | None = None
        self.rcu_waiting: list[tuple[list[int], int]] = []
        # what the event stream said last
        self.last_tlbi = -1
        self.last_inval = -1
        self.last_grace = -1
        self.mark = False  # s390: mm->context.flush_mm
        # the open gather
        self.fullmm = False
        self.recorded = False  # a cleared_* bit or freed_tables is set
        self.range_live = False  # tlb->end != 0 (non-fullmm)
        self.page_size = 0
        self.vma: Vma | None = None
        self.vma_pfn = False

    # ------------------------------------------------------------------
    # The event stream
    # ------------------------------------------------------------------

    def _new(self) -> list[tuple[int, dict[str, Any]]]:
        events = self.c.events
        new = list(enumerate(events[self.pos :], self.pos))
        self.pos = len(events)
        return [(i, e) for i, e in new if e["event"] in WATCHED]

    @staticmethod
    def _names(new: list[tuple[int, dict[str, Any]]]) -> list[str]:
        return [e["event"] for _, e in new]

    def _absorb(self, new: list[tuple[int, dict[str, Any]]]) -> None:
        """Follow the watched events of one call, in order, checking each."""
        freed_any = False
        for k, (i, e) in enumerate(new):
            name = e["event"]
            prev = new[k - 1][1]["event"] if k else None
            nxt = new[k + 1][1]["event"] if k + 1 < len(new) else None
            assert name != "bug", e
            if name == "tlb_flush":
                if not self.gathers:
                    assert self.mark and e["scope"] == "mm", e
                    self.mark = False
                assert nxt == "mmu_notifier_invalidate", new
                self.last_tlbi = i
            elif name == "mmu_notifier_invalidate":
                # The generic tlb_flush() always flushes a live range; s390's lazy
                # one only when the mm is marked.
                assert prev == "tlb_flush" or (not self.gathers and not self.mark), new
                self.last_inval = i
                self.recorded = False
                self.range_live = self.fullmm
            elif name == "free_pages":
                assert self.gathers
                pages = e["pages"]
                assert 0 < len(pages) <= 512
                head = self.queue[: len(pages)]
                assert pages == [p for p, _, _ in head], (pages, head)
                for page, qseq, needs in head:
                    assert page not in self.freed
                    if needs:
                        assert self.last_tlbi >= qseq and self.last_inval >= qseq, page
                    self.freed.add(page)
                del self.queue[: len(pages)]
                freed_any = True
            elif name == "free_page":
                assert not self.gathers
            elif name == "rmap_remove":
                assert self.smp_rmap
                assert e["page"] not in self.rmapped
                self.rmapped.add(e["page"])
            elif name == "rcu_queue":
                assert self.table_batch
                assert e["tables"] == self.tbatch, (e, self.tbatch)
                for t in e["tables"]:
                    assert self.tables[t] == "batched"
                    assert self.last_tlbi >= self.table_seq[t]
                    assert self.last_inval >= self.table_seq[t]
                    self.tables[t] = "rcu"
                self.rcu_waiting.append((list(e["tables"]), i))
                self.tbatch = None
            elif name == "ipi_sync":
                assert self.table_batch
                assert nxt == "table_free" and len(new[k + 1][1]["tables"]) == 1
            elif name == "table_free":
                tables = e["tables"]
                if prev == "ipi_sync":
                    (t,) = tables
                    assert self.tables[t] == "called"
                    assert self.last_tlbi >= self.table_seq[t]
                else:
                    assert self.rcu_waiting, e
                    waiting, queued_at = self.rcu_waiting.pop(0)
                    assert tables == waiting
                    assert queued_at < self.last_grace < i
                    assert all(self.tables[t] == "rcu" for t in tables)
                for t in tables:
                    self.tables[t] = "freed"
            elif name == "rcu_grace_period":
                self.last_grace = i
        if freed_any:
            # tlb_batch_pages_flush() frees the whole queue, then discards rmaps.
            assert not self.queue
            self.pending_rmap = []
            self.last_full = False

    def _alloc(self, what: str) -> bool:
        if self.fail[what]:
            self.fail[what] -= 1
            return False
        return True

    # ------------------------------------------------------------------
    # Queueing pages
    # ------------------------------------------------------------------

    def _predict_queue(self, size: int) -> tuple[list[dict[str, Any]], bool]:
        """The events __tlb_remove_page_size() emits itself, and its result."""
        expected: list[dict[str, Any]] = []
        if self.tracks_size and self.page_size != size:
            expected.append({"event": "warning", "what": "tlb->page_size != page_size"})
        n = len(self.queue) + 1
        full = False
        if n >= BUNDLE and (n - BUNDLE) % MAX_GATHER_BATCH == 0:
            filled = (n - BUNDLE) // MAX_GATHER_BATCH  # 0: the bundle
            if filled < self.nbatches:
                pass  # tlb_next_batch(): batch->next is there
            elif self.nbatches == MAX_GATHER_BATCH_COUNT:
                full = True
            else:
                ok = self._alloc("page_batch")
                expected.append({"event": "batch_alloc", "what": "page_batch", "ok": ok})
                if ok:
                    self.nbatches += 1
                else:
                    full = True
        return expected, full

    def _queue(self, page: int, size: int, call: Callable[[], Any], flushes_if_full: bool) -> bool:
        """Queue ``page`` through ``call`` and check what happened."""
        assert self.tlb is not None
        qseq = len(self.c.events)
        if not self.gathers:
            result = call()
            new = self._new()
            assert self._names(new) == ["free_page"] and new[0][1]["page"] == page
            assert page not in self.freed
            self.freed.add(page)
            self.queued_ever.add(page)
            assert result in (None, False)
            return False
        expected, full = self._predict_queue(size)
        self.queue.append((page, qseq, self.recorded))
        self.queued_ever.add(page)
        if self.smp_rmap:
            self.pending_rmap.append(page)
        result = call()
        new = self._new()
        assert [e for _, e in new[: len(expected)]] == expected
        rest = self._names(new[len(expected) :])
        if flushes_if_full and full:
            # tlb_remove_page_size(): tlb_flush_mmu() at once (the table batch too).
            allowed = {"tlb_flush", "mmu_notifier_invalidate", "free_pages", "rcu_queue"}
            assert set(rest) <= allowed
            assert ("rcu_queue" in rest) == (self.tbatch is not None)
            assert "free_pages" in rest
        else:
            assert rest == []
        if not flushes_if_full:
            assert result is full
            self.last_full = full
        self._absorb(new)
        return full

    def _may_queue(self) -> bool:
        return (
            self.tlb is not None
            and not self.last_full
            and (not self.gathers or self.fullmm or self.range_live)
        )

    @rule(size=page_sizes)
    @precondition(lambda self: self._may_queue())
    @checked
    def remove_page(self, size: int) -> None:
        page = next(self.ids)
        tlb = self.tlb
        assert tlb is not None
        self._queue(page, size, lambda: queue_page(tlb, page, size), False)

    @rule(count=st.integers(1, 600), size=page_sizes)
    @precondition(lambda self: self._may_queue())
    @checked
    def remove_many_pages(self, count: int, size: int) -> None:
        tlb = self.tlb
        assert tlb is not None
        for _ in range(count):
            page = next(self.ids)
            if self._queue(page, size, lambda p=page: queue_page(tlb, p, size), False):
                break

    @rule(size=page_sizes)
    @precondition(lambda self: self._may_queue())
    @checked
    def tlb_remove_page_size(self, size: int) -> None:
        page = next(self.ids)
        tlb = self.tlb
        assert tlb is not None
        self._queue(page, size, lambda: api.tlb_remove_page_size(tlb, page, size), True)

    # ------------------------------------------------------------------
    # Gathers, VMAs, entries
    # ------------------------------------------------------------------

    @rule(fullmm=st.booleans())
    @precondition(lambda self: self.tlb is None)
    @checked
    def gather(self, fullmm: bool) -> None:
        make = api.tlb_gather_mmu_fullmm if fullmm else api.tlb_gather_mmu
        self.tlb = make(self.m, self.mm)
        assert self._new() == []
        assert api.tlb_batch_rmap(self.tlb) is self.smp_rmap
        assert self.mm.tlb_flush_pending == 1
        self.fullmm = fullmm
        self.recorded = False
        self.range_live = fullmm
        self.page_size = 0
        self.nbatches = 0
        self.last_full = False
        self.vma = None
        self.pending_rmap = []
        assert not self.queue and self.tbatch is None

    def _finish(self, nested: bool) -> None:
        tlb = self.tlb
        assert tlb is not None
        if nested:
            # mm_tlb_flush_nested(): fullmm = 1, __tlb_reset_range(), freed_tables = 1
            self.fullmm = self.recorded = self.range_live = True
        api.tlb_finish_mmu(tlb, nested=nested)
        new = self._new()
        assert set(self._names(new)) <= {
            "tlb_flush",
            "mmu_notifier_invalidate",
            "free_pages",
            "rcu_queue",
        }
        if nested:
            flushes = [e for _, e in new if e["event"] == "tlb_flush"]
            notifies = [e for _, e in new if e["event"] == "mmu_notifier_invalidate"]
            assert notifies[0] == {"event": "mmu_notifier_invalidate", "start": M64, "end": M64}
            if self.gathers or self.mark:
                assert flushes[0]["scope"] == "mm"
                assert flushes[0]["freed_tables"] is True
                assert flushes[0]["levels"] == []
            else:
                assert flushes == []
        self._absorb(new)
        assert not self.queue
        assert self.tbatch is None
        assert tlb.batch is None
        assert tlb.local.nr == 0 and tlb.local.next is None and tlb.active is tlb.local
        assert self.mm.tlb_flush_pending == 0
        self.tlb = None
        self.last_full = False
        self.pending_rmap = []

    @rule(nested=st.booleans())
    @precondition(lambda self: self.tlb is not None)
    @checked
    def finish(self, nested: bool) -> None:
        self._finish(nested)

    @rule(vma=vmas)
    @precondition(lambda self: self.tlb is not None)
    @checked
    def start_vma(self, vma: Vma) -> None:
        assert self.tlb is not None
        api.tlb_start_vma(self.tlb, vma)
        new = self._new()
        if self.fullmm:
            assert new == []
        else:
            assert [e for _, e in new] == [
                {"event": "flush_cache_range", "start": vma.start, "end": vma.end}
            ]
            self.vma_pfn = vma.is_pfnmap
        self.vma = vma

    def _expect_tlbonly(self, new: list[tuple[int, dict[str, Any]]]) -> None:
        names = self._names(new)
        if not self.recorded:
            assert names == []
        elif self.gathers or self.mark:
            assert names == ["tlb_flush", "mmu_notifier_invalidate"]
        else:
            assert names == ["mmu_notifier_invalidate"]

    @rule()
    @precondition(lambda self: self.tlb is not None and self.vma is not None)
    @checked
    def end_vma(self) -> None:
        assert self.tlb is not None and self.vma is not None
        api.tlb_end_vma(self.tlb, self.vma)
        new = self._new()
        if self.fullmm or (self.merge_vmas and not self.vma_pfn):
            assert new == []
        else:
            self._expect_tlbonly(new)
        self._absorb(new)

    @rule(kind=st.sampled_from(["pte", "pmd", "pud", "huge"]), addr=addresses, size=huge_sizes)
    @precondition(lambda self: self.tlb is not None)
    @checked
    def clear_entry(self, kind: str, addr: int, size: int) -> None:
        tlb = self.tlb
        assert tlb is not None
        if kind == "pte":
            api.tlb_remove_tlb_entry(tlb, addr)
        elif kind == "pmd":
            api.tlb_remove_pmd_tlb_entry(tlb, addr)
        elif kind == "pud":
            api.tlb_remove_pud_tlb_entry(tlb, addr)
        else:
            api.tlb_remove_huge_tlb_entry(tlb, addr, size)
        assert self._new() == []
        self.recorded = self.range_live = True

    @rule(size=st.sampled_from([PS, 2 * MIB, GIB]))
    @precondition(lambda self: self.tlb is not None)
    @checked
    def change_page_size(self, size: int) -> None:
        assert self.tlb is not None
        flushes = self.tracks_size and not self.fullmm and self.page_size not in (0, size)
        had_pages = bool(self.queue)
        api.tlb_change_page_size(self.tlb, size)
        new = self._new()
        if flushes:
            names = self._names(new)
            assert set(names) <= {"tlb_flush", "mmu_notifier_invalidate", "free_pages"}
            assert ("free_pages" in names) == had_pages
            self._expect_tlbonly([(i, e) for i, e in new if e["event"] != "free_pages"])
        else:
            assert new == []
        self._absorb(new)
        if flushes:
            self.last_full = False
        if self.tracks_size:
            self.page_size = size

    # ------------------------------------------------------------------
    # Flushes
    # ------------------------------------------------------------------

    @rule()
    @precondition(lambda self: self.tlb is not None)
    @checked
    def flush_tlbonly(self) -> None:
        assert self.tlb is not None
        api.tlb_flush_mmu_tlbonly(self.tlb)
        new = self._new()
        self._expect_tlbonly(new)
        self._absorb(new)

    @rule()
    @precondition(lambda self: self.tlb is not None)
    @checked
    def flush_mmu(self) -> None:
        assert self.tlb is not None
        had_pages = bool(self.queue)
        had_tables = self.tbatch is not None
        api.tlb_flush_mmu(self.tlb)
        new = self._new()
        names = self._names(new)
        assert set(names) <= {"tlb_flush", "mmu_notifier_invalidate", "free_pages", "rcu_queue"}
        assert ("free_pages" in names) == had_pages
        assert ("rcu_queue" in names) == had_tables
        self._absorb(new)
        assert not self.queue and self.tbatch is None
        self.last_full = False
        self.pending_rmap = []

    # ------------------------------------------------------------------
    # Rmaps
    # ------------------------------------------------------------------

    @rule()
    @precondition(lambda self: self.tlb is not None)
    @checked
    def flush_rmaps(self) -> None:
        assert self.tlb is not None
        api.tlb_flush_rmaps(self.tlb, self.vma or Vma(0, 1 << 47))
        new = self._new()
        expected = self.pending_rmap if self.smp_rmap else []
        assert [e for _, e in new] == [{"event": "rmap_remove", "page": p} for p in expected]
        self._absorb(new)
        self.pending_rmap = []

    @rule()
    @precondition(lambda self: self.tlb is not None)
    @checked
    def discard_rmaps(self) -> None:
        assert self.tlb is not None
        api.tlb_discard_rmaps(self.tlb)
        assert self._new() == []
        self.pending_rmap = []

    # ------------------------------------------------------------------
    # Page tables
    # ------------------------------------------------------------------

    @rule(level=st.sampled_from(["pte", "pte", "pmd", "pud", "p4d"]), addr=addresses)
    @precondition(lambda self: self.tlb is not None and (self.table_batch or not self.last_full))
    @checked
    def free_table(self, level: str, addr: int) -> None:
        tlb = self.tlb
        assert tlb is not None
        table = 1_000_000_000 + next(self.ids)
        free = {
            "pte": api.pte_free_tlb,
            "pmd": api.pmd_free_tlb,
            "pud": api.pud_free_tlb,
            "p4d": api.p4d_free_tlb,
        }[level]
        # Every pXd_free_tlb() sets freed_tables; all but s390's pud_free_tlb()
        # record a range.
        self.recorded = True
        if not (self.arch == "s390" and level == "pud"):
            self.range_live = True
        if not self.table_batch:
            # tlb_remove_table() is tlb_remove_page(): the table is a queued page.
            self.tables_as_pages.add(table)
            self._queue(table, PS, lambda: free(tlb, table, addr), True)
            return
        if self.arch == "s390":
            self.mark = True
        self.tables[table] = "called"
        self.table_seq[table] = len(self.c.events)
        expected: list[str] = []
        if self.tbatch is None:
            ok = self._alloc("table_batch")
            expected.append("batch_alloc")
            if not ok:
                free(tlb, table, addr)
                new = self._new()
                assert new[0][1] == {"event": "batch_alloc", "what": "table_batch", "ok": False}
                # tlb_table_invalidate(), then tlb_remove_table_one().
                assert self._names(new) == [
                    "batch_alloc",
                    "tlb_flush",
                    "mmu_notifier_invalidate",
                    "ipi_sync",
                    "table_free",
                ]
                assert new[-1][1]["tables"] == [table]
                self._absorb(new)
                return
            self.tbatch = []
        self.tbatch.append(table)
        self.tables[table] = "batched"
        if len(self.tbatch) == MAX_TABLE_BATCH:
            expected += ["tlb_flush", "mmu_notifier_invalidate", "rcu_queue"]
        free(tlb, table, addr)
        new = self._new()
        assert self._names(new) == expected
        if expected[:1] == ["batch_alloc"]:
            assert new[0][1]["ok"] is True and new[0][1]["what"] == "table_batch"
        self._absorb(new)

    # ------------------------------------------------------------------
    # The machine
    # ------------------------------------------------------------------

    @rule(what=st.sampled_from(["page_batch", "table_batch"]), count=st.integers(0, 3))
    @checked
    def fail_alloc(self, what: str, count: int) -> None:
        self.m.fail_alloc(what, count)
        self.fail[what] = max(self.fail[what], count)
        assert self._new() == []

    @rule()
    @precondition(lambda self: bool(self.rcu_waiting))
    @checked
    def rcu_grace_period(self) -> None:
        self.m.rcu_grace_period()
        new = self._new()
        assert self._names(new) == ["rcu_grace_period"] + ["table_free"] * len(self.rcu_waiting)
        self._absorb(new)
        assert not self.rcu_waiting

    @invariant()
    @checked
    def consistent(self) -> None:
        assert self.pos == len(self.c.events)
        assert self.mm.tlb_flush_pending == (0 if self.tlb is None else 1)
        if self.tlb is not None and self.gathers and not self.fullmm:
            # VM_BUG_ON(!tlb->end) is what the caller keeps clear of.
            assert (self.tlb.end != 0) == self.range_live
        if not self.smp_rmap:
            assert not self.rmapped

    def teardown(self) -> None:
        if self.failed:
            return
        if self.tlb is not None:
            self._finish(False)
        self.m.rcu_grace_period()
        self._absorb(self._new())
        assert self.freed == self.queued_ever
        assert self.tables_as_pages <= self.freed
        assert all(state == "freed" for state in self.tables.values()), self.tables
        assert not self.rcu_waiting
        if self.smp_rmap:
            assert self.rmapped <= self.queued_ever


@pytest.mark.parametrize("arch", ARCHES)
def test_random_call_sequences(arch: str) -> None:
    run_state_machine_as_test(lambda: GatherCaller(arch), settings=SETTINGS)
