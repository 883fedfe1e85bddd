"""What the CPUs' TLBs and walk caches may still hold of an mm being torn down.

A hardware walker may fill a TLB or a walk cache from the page tables at any
moment a CPU may run in the mm, speculation included.  So for a sequential
teardown, "may be cached" is enough: an entry may be in a CPU's TLB from the
time its page-table entry was present until an invalidation reached that CPU
for it.  What matters is the *stale* entries: those whose page-table entry
is already cleared.  :class:`TlbModel` keeps them:

* a stale **leaf** entry per cleared PTE (or huge entry): its address,
  level and size, the page it maps, whether it was dirty (a CPU can store
  through it without walking the tables again), the CPUs that may hold it
  and those of them that may use it;
* a stale **walk** entry per unhooked page table: the cached upper-level
  entry that still points to the table, and the CPUs that may hold it;
* the unhooked tables a **lockless walker** (gup_fast, IRQs off) may still be
  inside: from the unhook until an invalidation that waits for IRQs-off
  sections on every CPU that could be running one, a synchronising IPI, or
  an RCU grace period.

Who may *use* a stale leaf entry is asked per query (the rules differ:
``docs/checker.md``); who holds it changes only with invalidations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from mmugather.core.constants import Geometry
from mmugather.core.events import ClearRow
from mmugather.core.hw.cpus import ZAPPING_CPU, CpuConfig
from mmugather.core.hw.invalidate import WALK_ASID, WALK_NONE, HwSemantics, Invalidate
from mmugather.core.hw.tlb_runs import LeafRuns

if TYPE_CHECKING:
    from mmugather.core.clearrun import ClearRun

# A stale leaf entry is a list, for the per-PTE path: these name its slots.
PFN, SIZE, LEVEL, DIRTY, HOLDERS, USABLE, SEQ = range(7)
# A stale walk entry: the region it translates, its level, holders, seq.
W_VA, W_SIZE, W_LEVEL, W_HOLDERS, W_SEQ = range(5)

#: The level of the cached entry that points to a table of each level.
PARENT = {"pte": "pmd", "pmd": "pud", "pud": "p4d", "p4d": "pgd"}

#: pte_clear_flush modes: what clearing a PTE does to the TLBs (per gather)
CLEAR_KEEPS = "keeps"  # the entry stays cached until an invalidation (most arches)
CLEAR_DIRECT = "direct"  # invalidated at the clear on every CPU (s390's IPTE)
CLEAR_DEFERRED = "deferred"  # stays on the zapping CPU alone, which uses it no more
CLEAR_MODES = (CLEAR_KEEPS, CLEAR_DIRECT, CLEAR_DEFERRED)


@attrs.frozen(slots=True)
class Reach:
    """A stale entry that can still be reached, for a report."""

    kind: str  # "leaf" or "walk"
    va: int
    size: int
    level: str
    #: the page (leaf) or table (walk) it leads to; None for a special PTE
    target: int | None
    #: the CPUs that may use (leaf) or walk (walk) it
    cpus: int
    asid: int
    dirty: bool = False


class TlbModel:
    """The stale entries of one mm across every CPU of a machine."""

    def __init__(self, geometry: Geometry, cpus: CpuConfig, semantics: HwSemantics) -> None:
        self.geometry = geometry
        self.semantics = semantics
        self.asid = cpus.asid
        #: CPUs running threads of the mm / holding it lazily
        self.running = cpus.running
        self.lazy = cpus.lazy_mask
        self.mm_alive = True
        #: base-page leaf entries by address (``leaf``); larger ones apart
        #: (so that a PMD entry and a PTE entry at one address never collide)
        self._leaf: dict[int, list[Any]] = {}
        self.big: dict[int, list[Any]] = {}
        #: base-page entries kept a run at a time (``pte_run()``), not yet
        #: in ``_leaf``
        self._runs = LeafRuns(self)
        #: an upper bound of the holders of ``leaf`` (for the common flush
        #: that reaches every holder of every entry)
        self._leaf_union = 0
        self.walk: dict[int, list[Any]] = {}
        self.lockless: dict[int, int] = {}
        #: pages with a stale dirty entry (entries of each): a CPU may store
        #: through such an entry without walking the tables
        self.dirty_pages: dict[int, int] = {}
        self.clear_mode = CLEAR_KEEPS
        self._by_pfn: dict[int, list[list[Any]]] | None = None

    @property
    def leaf(self) -> dict[int, list[Any]]:
        """The stale base-page leaf entries by address, in the order their
        PTEs were cleared: ``[page, size, level, dirty, holders, usable,
        seq]`` each (the slot names above)."""
        if self._runs:
            self._runs.settle()
        return self._leaf

    # ------------------------------------------------------------------
    # CPUs and the mm
    # ------------------------------------------------------------------

    @property
    def mm_cpumask(self) -> int:
        """CPUs whose TLBs may hold the mm's entries (those that run it or
        hold it lazily; in a sequential model none switches away)."""
        return self.running | self.lazy

    def mm_exit(self) -> None:
        """The last user is gone (exit_mmap()): no thread runs user code in
        the mm; the CPUs that ran it keep it loaded lazily."""
        self.mm_alive = False
        self.lazy |= self.running
        self.running = 0

    def leaf_users(self) -> int:
        """CPUs that may load or store through a stale leaf entry they hold:
        those running threads of the mm, and lazy ones unless the arch says
        they catch up before any user access."""
        if not self.mm_alive:
            return 0
        users = self.running
        if self.semantics.lazy_cpus_use_leaf:
            users |= self.lazy
        return users

    def walk_users(self) -> int:
        """CPUs whose hardware walker may walk the mm's tables, speculation
        included: every CPU that has them loaded, lazily or not."""
        return self.running | self.lazy

    def gup_cpus(self) -> int:
        """CPUs that may be inside a lockless walk of the mm's tables:
        threads of a live mm, but not the zapping CPU (it is in the teardown,
        not in gup_fast())."""
        if not self.mm_alive:
            return 0
        return self.running & ~(1 << ZAPPING_CPU)

    def set_clear_mode(self, mode: str) -> None:
        if mode not in CLEAR_MODES:
            raise ValueError(f"unknown pte_clear_flush mode {mode!r}")
        self.clear_mode = mode

    def _clear_masks(self) -> tuple[int, int] | None:
        """(holders, usable) of the entry a clear leaves, or None: no entry."""
        mode = self.clear_mode
        if mode == CLEAR_DIRECT:
            return None
        if not self.mm_alive and self.semantics.asid_reuse_invalidates:
            # Nobody runs in a dead mm, and its ASID is invalidated before
            # another mm gets it: what it leaves in the TLBs is never used.
            return None
        if mode == CLEAR_DEFERRED:
            return 1 << ZAPPING_CPU, 0
        holders = self.mm_cpumask
        return holders, holders

    # ------------------------------------------------------------------
    # What the teardown does
    # ------------------------------------------------------------------

    def pte_rows(self, rows: Sequence[ClearRow], seq: int) -> None:
        """Base-page PTEs cleared (``pte_clear`` rows), numbered from seq + 1."""
        masks = self._clear_masks()
        if masks is None:
            return
        holders, usable = masks
        size = self.geometry.page_size
        leaf = self.leaf
        dirty_pages = self.dirty_pages
        for addr, page, _rmap, dirty in rows:
            seq += 1
            leaf[addr] = [page, size, "pte", dirty, holders, usable, seq]
            if dirty and page is not None:
                dirty_pages[page] = dirty_pages.get(page, 0) + 1
        self._leaf_union |= holders
        self._by_pfn = None

    def pte_run(self, run: ClearRun, seq: int) -> None:
        """The PTEs of a :class:`~mmugather.core.clearrun.ClearRun` were
        cleared, numbered from seq + 1: what pte_rows() does with its rows,
        kept as one run of entries where it can be."""
        masks = self._clear_masks()
        if masks is None:
            return
        holders, usable = masks
        if not self._runs.add(run.addrs, run.pages, seq, holders, usable):
            self.pte_rows(run.rows(), seq)
            return
        self._leaf_union |= holders
        self._by_pfn = None

    def entry_cleared(self, addr: int, size: int, level: str, page: int | None,
                      dirty: bool, seq: int) -> None:
        """A huge entry (PMD, PUD, hugetlb) or a single PTE was cleared."""
        masks = self._clear_masks()
        if masks is None:
            return
        holders, usable = masks
        entry: list[Any] = [page, size, level, dirty, holders, usable, seq]
        if dirty and page is not None:
            self.dirty_pages[page] = self.dirty_pages.get(page, 0) + 1
        if level == "pte" and size == self.geometry.page_size:
            self.leaf[addr] = entry
            self._leaf_union |= holders
        else:
            self.big[addr] = entry
        self._by_pfn = None

    def table_unhooked(self, table: int, level: str, addr: int, seq: int) -> None:
        """The entry pointing to ``table`` (of ``level``) was cleared: cached
        copies of it are stale, and a lockless walker may be inside."""
        geo = self.geometry
        size = {"pte": geo.pmd_size, "pmd": geo.pud_size, "pud": geo.p4d_size,
                "p4d": geo.pgdir_size}[level]
        va = addr & ~(size - 1)
        holders = self.walk_users()
        if holders:
            self.walk[table] = [va, size, PARENT[level], holders, seq]
        if self.gup_cpus():
            self.lockless[table] = seq

    def walkers_synced(self) -> None:
        """Every CPU took an interrupt (a synchronising IPI), or an RCU grace
        period ended: no lockless walk begun before is still going on."""
        self.lockless.clear()

    # ------------------------------------------------------------------
    # Invalidations
    # ------------------------------------------------------------------

    def invalidate(self, inv: Invalidate) -> None:
        cpus = inv.cpus
        if inv.leaf:
            if self._runs:
                self._runs.invalidate(inv, cpus)
            if self._leaf:
                self._drop_leaf(inv, cpus)
            if self.big:
                self._drop(self.big, inv, cpus)
        if inv.walk != WALK_NONE and self.walk:
            self._drop_walk(inv, cpus)
        if inv.waits and not self.gup_cpus() & ~cpus:
            self.lockless.clear()

    def _drop_leaf(self, inv: Invalidate, cpus: int) -> None:
        leaf = self.leaf
        everything = inv.whole and inv.level in (None, "pte") and (
            not inv.page_size or inv.page_size == self.geometry.page_size)
        if everything and not self._leaf_union & ~cpus:
            if self.dirty_pages:
                for e in leaf.values():
                    if e[DIRTY]:
                        self._undirty(e[PFN])
            leaf.clear()
            self._leaf_union = 0
        else:
            self._drop(leaf, inv, cpus)
        self._by_pfn = None

    def _undirty(self, page: int) -> None:
        left = self.dirty_pages[page] - 1
        if left:
            self.dirty_pages[page] = left
        else:
            del self.dirty_pages[page]

    def _drop(self, entries: dict[int, list[Any]], inv: Invalidate, cpus: int) -> None:
        gone = []
        keep = ~cpus
        reaches = inv.reaches
        for va, e in entries.items():
            if reaches(va, e[SIZE], e[LEVEL], e[SIZE]):
                held = e[HOLDERS] & keep
                if held:
                    e[HOLDERS] = held
                    e[USABLE] &= keep
                else:
                    gone.append(va)
        for va in gone:
            e = entries.pop(va)
            if e[DIRTY] and e[PFN] is not None:
                self._undirty(e[PFN])

    def _drop_walk(self, inv: Invalidate, cpus: int) -> None:
        walk = self.walk
        keep = ~cpus
        gone = []
        for table, e in walk.items():
            if inv.walk == WALK_ASID:
                hit = inv.level is None or inv.level == e[W_LEVEL]
            else:
                hit = inv.reaches(e[W_VA], e[W_SIZE], e[W_LEVEL])
            if hit:
                held = e[W_HOLDERS] & keep
                if held:
                    e[W_HOLDERS] = held
                else:
                    gone.append(table)
        for table in gone:
            del walk[table]
        self._by_pfn = None

    # ------------------------------------------------------------------
    # Questions the checker asks
    # ------------------------------------------------------------------

    def pfn_index(self) -> dict[int, list[list[Any]]]:
        index = self._by_pfn
        if index is None:
            index = {}
            for entries in (self.leaf, self.big):
                for va, e in entries.items():
                    page = e[PFN]
                    if page is not None:
                        index.setdefault(page, []).append([va, *e])
            self._by_pfn = index
        return index

    def page_reach(self, page: int, users: int) -> Reach | None:
        """A stale leaf entry mapping ``page`` that one of ``users`` may still
        use, if any."""
        if not (self.leaf or self.big) or not users:
            return None
        for va, _page, size, level, dirty, _holders, usable, _seq in \
                self.pfn_index().get(page, ()):
            can = usable & users
            if can:
                return Reach("leaf", va, size, level, page, can, self.asid, dirty)
        return None

    def dirty_reach(self, page: int, users: int) -> Reach | None:
        """A stale *dirty* leaf entry of ``page`` one of ``users`` may store
        through without walking the page tables again."""
        if not (self.leaf or self.big) or not users:
            return None
        for va, _page, size, level, dirty, _holders, usable, _seq in \
                self.pfn_index().get(page, ()):
            can = usable & users
            if can and dirty:
                return Reach("leaf", va, size, level, page, can, self.asid, True)
        return None

    def table_reach(self, table: int) -> Reach | None:
        """A stale walk-cache entry that still leads to ``table`` and that a
        CPU may walk (speculatively or not)."""
        e = self.walk.get(table)
        if e is None:
            return None
        can = e[W_HOLDERS] & self.walk_users()
        if not can:
            return None
        return Reach("walk", e[W_VA], e[W_SIZE], e[W_LEVEL], table, can,
                     self.asid)

    def usable_leaves(self, users: int, start: int = 0, end: int = 1 << 64) -> Iterator[Reach]:
        """Stale leaf entries in [start, end) that one of ``users`` may use."""
        if not users:
            return
        for entries in (self.leaf, self.big):
            for va, e in entries.items():
                can = e[USABLE] & users
                if can and start <= va < end:
                    yield Reach("leaf", va, e[SIZE], e[LEVEL], e[PFN], can,
                                self.asid, bool(e[DIRTY]))

    def held_entries(self) -> Iterator[Reach]:
        """Every stale entry some CPU may still hold, used or not."""
        for entries in (self.leaf, self.big):
            for va, e in entries.items():
                yield Reach("leaf", va, e[SIZE], e[LEVEL], e[PFN], e[HOLDERS],
                            self.asid, bool(e[DIRTY]))
        for table, e in self.walk.items():
            yield Reach("walk", e[W_VA], e[W_SIZE], e[W_LEVEL], table, e[W_HOLDERS],
                        self.asid)
