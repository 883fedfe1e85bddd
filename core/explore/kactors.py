"""The explorer's kernel-side actors: writeback, reclaim and the page
allocator (docs/explorer.md).  Same contract as :mod:`.actors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmugather.core.aspace import (
    F_ANON,
    F_DIRTY,
    F_FREED,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    SWP_SWAP,
)
from mmugather.core.explore.actors import Actor, Result, folio_head, pte_item
from mmugather.core.explore.hwx import drop_leaf, invalidate, is_page
from mmugather.core.explore.mem import (
    ENTIRE,
    FLAGS,
    MAPCOUNT,
    MM_BATCHED,
    MM_CPUMASK,
    ORDER,
    REFCOUNT,
    SCALARS,
    SWAP_MAP,
    Mem,
)
from mmugather.core.explore.spec import ActorSpec
from mmugather.core.explore.state import Fp, State, Violation
from mmugather.core.hw.invalidate import WALK_ASID, Invalidate

if TYPE_CHECKING:
    from mmugather.core.explore.engine import Engine


def folio_mapped(mem: Mem, head: int) -> bool:
    if mem.page_view(ENTIRE)[head] > 0:
        return True
    mapcount = mem.page_view(MAPCOUNT)
    return any(mapcount[head + i] > 0 for i in range(1 << mem.page_view(ORDER)[head]))


def _fp(reads: set[Any], writes: set[Any]) -> Fp:
    return Fp(frozenset(reads), frozenset(writes))


# writeback's program counter
WB_MKCLEAN, WB_LOCK, WB_CLEAN, WB_CLEAR, WB_IO, WB_EVICT, WB_DONE = range(7)


class Writeback(Actor):
    """Writeback of one page-cache folio, then its eviction.

    ``folio_clear_dirty_for_io()``: ``folio_mkclean()`` returns at once when
    the folio is not mapped; otherwise it takes the lock of the PTE table
    mapping the page, write-protects and cleans the PTE with a flush, and
    marks the folio dirty if the PTE was.  Then PG_dirty is tested and
    cleared; if it was set, the I/O writes the page's current contents.
    Last, reclaim evicts the folio once it is unmapped, clean and held by
    the page cache alone: a write the I/O did not see is lost there.

    Local state: (pc, page, PTE table id).
    """

    kind = "writeback"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.addr = spec.addr
        self._evict_seen: dict[Mem, bool] = {}

    def init(self, eng: Engine, s: State) -> None:
        pte = s.mem.pte(eng.geo, self.addr)
        if pte is None or not pte[1] & PTE_PRESENT or not is_page(s.mem, pte[1] >> 8):
            raise ValueError(f"no page-cache page is mapped at {self.addr:#x}")
        head = folio_head(s.mem, pte[1] >> 8)
        page = PFN_BASE + head  # the folio, by its head page
        if s.mem.page_view(FLAGS)[head] & F_ANON:
            raise ValueError(f"the page at {self.addr:#x} is anonymous, not in a page cache")
        dirty = bool(pte[1] & PTE_DIRTY or s.mem.page_view(FLAGS)[head] & F_DIRTY)
        # What is on disk: the page's contents unless it is dirty.
        s.disk = s.disk | {(page, 0 if dirty else 1)}
        s.set_local(self.index, (WB_MKCLEAN, page, None))

    def enabled(self, eng: Engine, st: State) -> bool:
        pc, page, table = st.local[self.index]
        if pc == WB_MKCLEAN:
            return st.lock_owner(("folio", page)) is None
        if pc == WB_LOCK:
            return st.lock_owner(table) is None
        if pc == WB_EVICT:
            return self._evictable(st.mem, page) and st.lock_owner(("folio", page)) is None
        return bool(pc != WB_DONE)

    def _evictable(self, mem: Mem, page: int) -> bool:
        """Unmapped, clean, not freed, held by the page cache alone."""
        ok = self._evict_seen.get(mem)
        if ok is None:
            head = folio_head(mem, page)
            ok = self._evict_seen[mem] = not (
                folio_mapped(mem, head) or mem.page_view(FLAGS)[head] & (F_DIRTY | F_FREED)
                or mem.page_view(REFCOUNT)[head] != 1)
        return ok

    def step(self, eng: Engine, st: State) -> Result:
        pc, page, table = st.local[self.index]
        mem = st.mem
        geo = eng.geo
        head = folio_head(mem, page)
        s = st.copy()
        me = self.index
        reads: set[Any] = {("D", "page", head)}
        writes: set[Any] = set()
        folio_lock = ("folio", page)
        if pc == WB_MKCLEAN:
            # The folio lock is held from here to the I/O.
            s.locks = st.locks | {(folio_lock, me)}
            writes.add(("lock", folio_lock))
            mapped = folio_mapped(mem, head)
            reads.update(("D", "page", head + i) for i in range(1 << mem.page_view(ORDER)[head]))
            pte = mem.pte(geo, self.addr) if mapped else None
            reads.add(("D", "layout"))
            nxt = (WB_LOCK, page, pte[0]) if pte is not None else (WB_CLEAR, page, None)
            s.set_local(me, nxt)
            return s, [{"page": page, "mapped": mapped, "table": nxt[2],
                        "event": "writeback_mkclean"}], _fp(reads, writes)
        if pc == WB_LOCK:
            s.locks = st.locks | {(table, me)}
            s.set_local(me, (WB_CLEAN, page, table))
            return s, [{"table": table, "event": "writeback_lock"}], _fp(
                {("lock", table)}, {("lock", table)})
        if pc == WB_CLEAN:
            return self._clean(eng, st, s, page, head, table)
        if pc == WB_CLEAR:
            flags = mem.page_view(FLAGS)[head]
            was = bool(flags & F_DIRTY)
            if was:
                s.mem = mem.with_page(FLAGS, head, flags & ~F_DIRTY)
                writes.add(("D", "page", head))
            s.set_local(me, (WB_IO if was else WB_EVICT, page, None))
            if not was:
                s.locks = st.locks - {(folio_lock, me)}
                writes.add(("lock", folio_lock))
            return s, [{"page": page, "was_dirty": was, "event": "writeback_clear_dirty"}], \
                _fp(reads, writes)
        if pc == WB_IO:
            # The I/O takes the page as it is now; the folio is unlocked
            # (under writeback) while it goes to disk.
            version = st.version(page)
            s.disk = frozenset([*(d for d in st.disk if d[0] != page), (page, version)])
            s.locks = st.locks - {(folio_lock, me)}
            s.set_local(me, (WB_EVICT, page, None))
            return s, [{"page": page, "version": version, "event": "writeback_io"}], _fp(
                {("ver", page)}, {("disk", page), ("lock", folio_lock)})
        # WB_EVICT
        version = st.version(page)
        disk = next((v for p, v in st.disk if p == page), 0)
        s.mem = mem.with_page(REFCOUNT, head, 0)
        s.mem = s.mem.with_page(FLAGS, head, s.mem.page_view(FLAGS)[head] | F_FREED)
        writes.add(("D", "page", head))
        reads.update({("ver", page), ("disk", page), ("lock", folio_lock)})
        s.set_local(me, (WB_DONE, page, None))
        if version > disk:
            s.violation = Violation(
                "lost-write",
                f"page {page:#x} is evicted clean with version {version} in memory but "
                f"version {disk} on disk: a store after writeback's I/O left no dirty mark")
        return s, [{"page": page, "version": version, "disk": disk,
                    "event": "writeback_evict"}], _fp(reads, writes)

    def _clean(self, eng: Engine, st: State, s: State, page: int, head: int,
               table: int) -> Result:
        """Under the PTE lock: write-protect and clean the PTE mapping the
        page, flush it on every CPU of the mm, then drop the lock."""
        geo = eng.geo
        mem = st.mem
        item = pte_item(eng, table, self.addr)
        reads: set[Any] = {("lock", table), ("D", "layout"), item, ("D", "mm", "cpumask")}
        writes: set[Any] = {("lock", table)}
        pte = mem.pte(geo, self.addr)
        cleaned = False
        cpus: list[int] = []
        if pte is not None and pte[0] == table and pte[1] & PTE_PRESENT and \
                pte[1] >> 8 == page and pte[1] & PTE_DIRTY:
            cleaned = True
            mem = mem.with_pte(geo, self.addr, pte[1] & ~PTE_DIRTY)
            mask = mem.mm[MM_CPUMASK]
            s.tlb = drop_leaf(st.tlb, self.addr, geo.page_size, mask)
            cpus = [c for c in range(len(st.tlb)) if mask >> c & 1]
            writes.update(("tlb", c) for c in cpus)
            # folio_mkclean() found a dirty mapping: the folio stays dirty.
            mem = mem.with_page(FLAGS, head, mem.page_view(FLAGS)[head] | F_DIRTY)
            writes.update({item, ("D", "page", head)})
            s.mem = mem
        s.locks = frozenset(lk for lk in st.locks if lk[0] != table)
        s.set_local(self.index, (WB_CLEAR, page, None))
        return s, [{"page": page, "addr": self.addr, "cleaned": cleaned, "cpus": cpus,
                    "event": "writeback_clean"}], _fp(reads, writes)

    def idle(self, st: State) -> bool:
        return st.local[self.index][0] in (WB_EVICT, WB_DONE)


# reclaim's program counter
RC_LOCK, RC_UNMAP, RC_FLUSH, RC_DONE = range(4)


class Reclaim(Actor):
    """Reclaim unmapping one page: ``try_to_unmap_one()`` under the PTE lock
    clears the PTE (a swap entry for an anonymous page), drops the rmap,
    and with TTU_BATCH_FLUSH where the arch batches (x86's
    ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH; ``batched_flush`` may say otherwise)
    only records the flush it owes (``mm->tlb_flush_batched``); later
    ``try_to_unmap_flush()`` flushes every CPU it recorded.  Without batching
    the flush comes at once.  The page is not swapped out here.

    Local state: (pc, PTE table id, CPUs owed a flush).
    """

    kind = "reclaim"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.addr = spec.addr
        self.batched = spec.batched_flush

    def init(self, eng: Engine, s: State) -> None:
        pte = s.mem.pte(eng.geo, self.addr)
        if pte is None or not pte[1] & PTE_PRESENT:
            raise ValueError(f"no page is mapped at {self.addr:#x}")
        if self.batched is None:
            # should_defer_flush() is false where the arch does not batch.
            self.batched = "ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH" in \
                eng.setup.spec.resolved_features()
        s.set_local(self.index, (RC_LOCK, pte[0], 0))

    def enabled(self, eng: Engine, st: State) -> bool:
        pc, table, _cpus = st.local[self.index]
        if pc == RC_LOCK:
            return st.lock_owner(table) is None and table in st.mem.pte_table_ids()
        return bool(pc != RC_DONE)

    def step(self, eng: Engine, st: State) -> Result:
        pc, table, owed = st.local[self.index]
        s = st.copy()
        me = self.index
        if pc == RC_LOCK:
            s.locks = st.locks | {(table, me)}
            s.set_local(me, (RC_UNMAP, table, 0))
            return s, [{"table": table, "event": "reclaim_lock"}], _fp(
                {("lock", table), ("D", "layout")}, {("lock", table)})
        if pc == RC_UNMAP:
            return self._unmap(eng, st, s, table)
        # RC_FLUSH: arch_tlbbatch_flush(): everything, on the CPUs recorded.
        inv = Invalidate("flush_tlb_multi", cpus=owed, walk=WALK_ASID, waits=True)
        s.tlb, s.walk = invalidate(st.tlb, st.walk, inv)
        cpus = [c for c in range(len(st.tlb)) if owed >> c & 1]
        s.set_local(me, (RC_DONE, table, 0))
        return s, [{"cpus": cpus, "event": "reclaim_flush"}], _fp(
            set(), {("tlb", c) for c in cpus})

    def _unmap(self, eng: Engine, st: State, s: State, table: int) -> Result:
        geo = eng.geo
        mem = st.mem
        item = pte_item(eng, table, self.addr)
        reads: set[Any] = {("lock", table), ("D", "layout"), item, ("D", "mm", "cpumask")}
        writes: set[Any] = {("lock", table)}
        pte = mem.pte(geo, self.addr)
        page = None
        deferred = False
        owed = 0
        if pte is not None and pte[0] == table and pte[1] & PTE_PRESENT and \
                is_page(mem, pte[1] >> 8):
            page = pte[1] >> 8
            head = folio_head(mem, page)
            idx = page - PFN_BASE
            writes.update({item, ("D", "page", idx), ("D", "page", head)})
            if mem.page_view(FLAGS)[head] & F_ANON:
                next_table, slot = mem.parts[SCALARS]
                mem = mem.with_scalars(next_table, slot + 1)
                mem = mem.with_item(SWAP_MAP, slot, 1)
                mem = mem.with_pte(geo, self.addr, slot << 8 | SWP_SWAP)
                writes.update({("D", "scalars"), ("D", "dict", SWAP_MAP)})
            else:
                mem = mem.with_pte(geo, self.addr, 0)
            if pte[1] & PTE_DIRTY:
                mem = mem.with_page(FLAGS, head, mem.page_view(FLAGS)[head] | F_DIRTY)
            mem = mem.with_page(MAPCOUNT, idx, mem.page_view(MAPCOUNT)[idx] - 1)
            mask = mem.mm[MM_CPUMASK]
            if self.batched and mask & ~(1 << (self.cpu or 0)):
                # set_tlb_ubc_flush_pending(): the flush is owed, the mm marked.
                deferred = True
                owed = mask
                mem = mem.with_mm(MM_BATCHED, mem.mm[MM_BATCHED] + 1)
                writes.add(("D", "mm", "tlb_flush_batched"))
            else:
                s.tlb = drop_leaf(st.tlb, self.addr, geo.page_size, mask)
                writes.update(("tlb", c) for c in range(len(st.tlb)) if mask >> c & 1)
            s.mem = mem
        s.locks = frozenset(lk for lk in st.locks if lk[0] != table)
        s.set_local(self.index, (RC_FLUSH if deferred else RC_DONE, table, owed))
        return s, [{"addr": self.addr, "page": page, "deferred": deferred,
                    "event": "reclaim_unmap"}], _fp(reads, writes)

    def idle(self, st: State) -> bool:
        return st.local[self.index][0] in (RC_LOCK, RC_DONE)


class Allocator(Actor):
    """The page allocator handing out again what was freed: the lowest freed
    page or page table not yet reused (``reuse``: which kinds), ``count``
    times.  What it hands out belongs to someone else from then on.

    Local state: how many it may still hand out.
    """

    kind = "allocator"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.reuse = spec.reuse
        self.count = spec.count
        self._seen: dict[Any, tuple[str, int] | None] = {}

    def init(self, eng: Engine, s: State) -> None:
        s.set_local(self.index, self.count)

    def _candidate(self, st: State) -> tuple[str, int] | None:
        """What it hands out next: the lowest freed page table, then the
        lowest freed page (as ``reuse`` allows)."""
        key = (st.freed, st.reused, st.mem)
        if key in self._seen:
            return self._seen[key]
        found = self._seen[key] = self._find(st)
        return found

    def _find(self, st: State) -> tuple[str, int] | None:
        if self.reuse in ("table", "any"):
            tables = sorted(st.freed - st.reused)
            if tables:
                return "table", tables[0]
        if self.reuse in ("page", "any"):
            mem = st.mem
            flags = mem.page_view(FLAGS)
            for idx in range(mem.npages()):
                pfn = PFN_BASE + idx
                if flags[idx] & F_FREED and pfn not in st.reused and \
                        folio_head(mem, pfn) == idx:
                    return "page", pfn
        return None

    def enabled(self, eng: Engine, st: State) -> bool:
        return bool(st.local[self.index] > 0 and self._candidate(st) is not None)

    def step(self, eng: Engine, st: State) -> Result:
        cand = self._candidate(st)
        assert cand is not None
        kind, ident = cand
        s = st.copy()
        s.reused = st.reused | {ident}
        s.set_local(self.index, st.local[self.index] - 1)
        reads: set[Any] = ({("table", ident)} if kind == "table"
                           else {("D", "page", ident - PFN_BASE)})
        reads.add(("reuse",))
        return s, [{kind: ident, "event": "page_reuse"}], _fp(reads, {("reuse",)})

    def idle(self, st: State) -> bool:
        return True
