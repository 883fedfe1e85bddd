"""The explorer's own actors: user threads and gup_fast (threads of the
process), each a sequence of atomic steps over a state.

A step takes a :class:`~mmugather.core.explore.state.State` and returns
the next one, the events it emitted (``EXPLORER_EVENTS``) and its
footprint.  Properties an access can break are checked as it happens: the
result is a state carrying a :class:`Violation`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmugather.core.aspace import F_ANON, F_DIRTY, F_FREED, PFN_BASE, PTE_DIRTY, PTE_PRESENT
from mmugather.core.explore.hwx import (
    Walk,
    child_table,
    is_page,
    levels,
    lookup,
    page_of,
    shifts,
)
from mmugather.core.explore.mem import (
    FLAGS,
    HEAD,
    HUGE_PMDS,
    HUGE_PUDS,
    MM_LIVE,
    P4D_TABLES,
    PMD_TABLES,
    PUD_TABLES,
    REFCOUNT,
    VMAS,
    Mem,
)
from mmugather.core.explore.spec import ActorSpec
from mmugather.core.explore.state import Fp, Leaf, State, Violation

if TYPE_CHECKING:
    from mmugather.core.explore.engine import Engine

Result = tuple[State, Sequence[dict[str, Any]], Fp]

#: footprint items of the walk's tables in the shared memory
WALK_READS = frozenset({("D", "dict", P4D_TABLES), ("D", "dict", PUD_TABLES),
                        ("D", "dict", PMD_TABLES), ("D", "dict", HUGE_PMDS),
                        ("D", "dict", HUGE_PUDS), ("D", "layout")})


def pte_item(eng: Engine, table: int, va: int) -> tuple[Any, ...]:
    """The footprint item of the PTE of ``va`` in ``table``."""
    geo = eng.geo
    return ("D", "pte", table, (va >> geo.page_shift) & (geo.ptrs_per_pte - 1))


class Actor(ABC):
    """One actor: a kind, a name, a CPU, and its steps (each kind says when
    it may step and what a step does)."""

    kind = ""
    #: a zapping thread: its steps are the real callers'
    real = False

    def __init__(self, index: int, spec: ActorSpec | None, name: str, cpu: int | None) -> None:
        self.index = index
        self.spec = spec
        self.name = name
        self.cpu = cpu

    def init(self, eng: Engine, s: State) -> None:  # noqa: B027 (most kinds need nothing)
        """Set up the initial state ``s`` (still being built)."""

    @abstractmethod
    def enabled(self, eng: Engine, st: State) -> bool:
        """May this actor take a step in state ``st``?"""

    @abstractmethod
    def step(self, eng: Engine, st: State) -> Result:
        """Its next step from ``st``: the new state, the events, the footprint."""

    def idle(self, st: State) -> bool:
        """Finished, or waiting for something that may never come (not a deadlock)."""
        return True

    def watch(self, eng: Engine, st: State) -> Violation | None:
        """A property of every state this actor is in charge of."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def folio_head(mem: Mem, pfn: int) -> int:
    """The index of ``pfn``'s folio head in the page arrays."""
    return int(mem.page_view(HEAD)[pfn - PFN_BASE])


def page_freed(mem: Mem, pfn: int) -> bool:
    if not is_page(mem, pfn):
        return False
    return bool(mem.page_view(FLAGS)[folio_head(mem, pfn)] & F_FREED)


def _gone_text(eng: Engine, st: State, pfn: int) -> str:
    if pfn not in st.reused:
        return "freed"
    return eng.reused_how.get(pfn, "handed out again by the allocator")


def fill_walk(s: State, cpu: int, entries: list[Any]) -> None:
    if entries:
        walks = list(s.walk)
        walks[cpu] = walks[cpu] | set(entries)
        s.walk = tuple(walks)


def fill_leaf(s: State, cpu: int, leaf: Leaf) -> None:
    tlbs = list(s.tlb)
    tlbs[cpu] = frozenset([*(e for e in s.tlb[cpu] if e[0] != leaf[0]), leaf])
    s.tlb = tuple(tlbs)


class UserThread(Actor):
    """A thread of the process on another CPU: loads and stores through its
    TLB.  A miss walks the tables (walk cache first); a store needs a dirty
    entry (a clean one walks again to set the dirty bit, faulting the folio
    dirty as a write to a clean shared page does); a PTE not present ends
    the thread (the fault is not modelled further)."""

    kind = "user"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.accesses = spec.accesses
        self.warm = spec.warm
        #: what _fault_locks() found, by what it depends on
        self._locks_seen: dict[Any, list[Any]] = {}
        #: the anonymous page each address of its accesses maps at the
        #: start, if no zapping thread unmaps that address
        self._kept: dict[int, int] = {}

    def init(self, eng: Engine, s: State) -> None:
        s.set_local(self.index, 0)
        ranges = [(0, 1 << 64) if op["kind"] == "exit" else (op["start"], op["end"])
                  for a in eng.cfg.scenario.actors if a.kind == "zap" for op in a.ops]
        for _op, va in self.accesses:
            leaf = eng.mapping(s.mem, va).leaf
            if leaf is None or any(lo <= va < hi for lo, hi in ranges):
                continue
            page = page_of(leaf, va, eng.geo)
            if is_page(s.mem, page) and s.mem.page_view(FLAGS)[folio_head(s.mem, page)] & F_ANON:
                self._kept[va] = page
        if not self.warm:
            return
        cpu = self.cpu
        assert cpu is not None
        for _op, va in self.accesses:
            w = eng.mapping(s.mem, va)
            fill_walk(s, cpu, w.walked)
            if w.leaf is not None:
                fill_leaf(s, cpu, w.leaf)

    def enabled(self, eng: Engine, st: State) -> bool:
        if not (st.local[self.index] < len(self.accesses) and st.mem.mm[MM_LIVE]):
            return False
        return all(st.lock_owner(lock) is None for lock in self._fault_locks(eng, st))

    def _fault_locks(self, eng: Engine, st: State) -> list[Any]:
        """The locks the next access waits for: a store to a clean PTE of a
        file page is a write fault (the PTE is write-protected until the
        folio is marked dirty), which locks the folio (->page_mkwrite) and
        the PTE table.  Anything else goes through without a lock."""
        pc = st.local[self.index]
        op, va = self.accesses[pc]
        if op != "store":
            return []
        cpu = self.cpu
        assert cpu is not None
        key = (pc, st.tlb[cpu], st.walk[cpu], st.mem, st.freed, st.reused)
        locks = self._locks_seen.get(key)
        if locks is None:
            locks = self._locks_seen[key] = self._fault_locks_of(eng, st, va, cpu)
        return locks

    def _fault_locks_of(self, eng: Engine, st: State, va: int, cpu: int) -> list[Any]:
        entry = lookup(st.tlb[cpu], va)
        if entry is not None and entry[4]:
            return []
        w = eng.walk(st, cpu, va)
        leaf = w.leaf
        if leaf is None or leaf[4] or w.pte_table is None or w.stale_table is not None:
            return []
        page = page_of(leaf, va, eng.geo)
        if not is_page(st.mem, page):
            return []
        head = folio_head(st.mem, page)
        if st.mem.page_view(FLAGS)[head] & F_ANON:
            return []
        return [("folio", PFN_BASE + head), w.pte_table]

    def step(self, eng: Engine, st: State) -> Result:
        pc = st.local[self.index]
        op, va = self.accesses[pc]
        cpu = self.cpu
        assert cpu is not None
        geo = eng.geo
        mem = st.mem
        s = st.copy()
        s.set_local(self.index, pc + 1)
        reads: set[Any] = {("tlb", cpu), ("ret",), ("reuse",)}
        reads.update(("lock", lock) for lock in self._fault_locks(eng, st))
        writes: set[Any] = set()
        entry = lookup(st.tlb[cpu], va)
        store = op == "store"
        if entry is not None and (not store or entry[4]):
            page = page_of(entry, va, geo)
            ev = {"op": op, "addr": va, "page": page, "via": "tlb", "event": "user_access"}
            reads.update(WALK_READS)
            if is_page(mem, page):
                reads.add(("D", "page", folio_head(mem, page)))
            violation = self._check_hit(eng, st, entry, page, va, reads)
        else:
            w = eng.walk(st, cpu, va)
            reads.update(WALK_READS)
            reads.update(("table", t) for t in w.tables)
            writes.add(("tlb", cpu))
            fill_walk(s, cpu, w.walked)
            if w.stale_table is not None:
                level, table = w.stale_table
                ev = {"op": op, "addr": va, "page": None, "via": "walk-cache",
                      "event": "user_access"}
                s.violation = Violation(
                    "walk-freed-table",
                    f"CPU {cpu} walks {va:#x} through its walk-cache {level} entry into "
                    f"table {table:#x}, which is {_gone_text(eng, st, table)}")
                return s, [ev], Fp(frozenset(reads), frozenset(writes))
            if w.pte_table is not None:
                reads.add(pte_item(eng, w.pte_table, va))
            if w.leaf is None:
                s.set_local(self.index, len(self.accesses))
                ev = {"op": op, "addr": va, "event": "user_fault"}
                s.violation = self._lost(eng, st, va, reads)
                return s, [ev], Fp(frozenset(reads), frozenset(writes))
            leaf = w.leaf
            page = page_of(leaf, va, geo)
            if store and not leaf[4]:
                leaf = (leaf[0], leaf[1], leaf[2], leaf[3], True)
                s.mem = self._dirty(eng, s.mem, va, leaf, w, writes)
            fill_leaf(s, cpu, leaf)
            ev = {"op": op, "addr": va, "page": page, "via": "walk", "event": "user_access"}
            violation = None
            if page_freed(s.mem, page) or page in st.reused:
                violation = Violation("use-after-free",
                                      f"CPU {cpu} maps page {page:#x} from a PTE although the "
                                      f"page is {_gone_text(eng, st, page)}")
        if store and is_page(mem, page):
            s.versions = st.with_version(page, st.version(page) + 1)
            writes.add(("ver", page))
        if violation is not None:
            s.violation = violation
        return s, [ev], Fp(frozenset(reads), frozenset(writes))

    def _lost(self, eng: Engine, st: State, va: int, reads: set[Any]) -> Violation | None:
        """A fault at ``va``: if an anonymous page was mapped there, no
        thread unmapped the address and its VMA is still there, then the
        mapping was destroyed under the process (its PTE, or the table
        holding it, gone): the fault maps a fresh zero page and the data
        is lost."""
        page = self._kept.get(va)
        if page is None:
            return None
        reads.add(("D", "vmas"))
        if not any(v[0] <= va < v[1] for v in st.mem.parts[VMAS]):
            return None
        pte = st.mem.pte(eng.geo, va)
        if pte is not None and pte[1]:
            return None  # a swap or migration entry: the data is kept
        return Violation(
            "lost-mapping",
            f"CPU {self.cpu} faults at {va:#x}, in a VMA still mapped that no unmap covered: "
            f"its anonymous page {page:#x} lost its mapping "
            f"({'its PTE table is gone' if pte is None else 'its PTE is none'}), so the fault "
            "maps a fresh page and the data is lost")

    def _dirty(self, eng: Engine, mem: Mem, va: int, leaf: Leaf, w: Walk,
               writes: set[Any]) -> Mem:
        """The store sets the entry's dirty bit; a clean shared file page was
        write-protected, so the write fault marks the folio dirty too."""
        geo = eng.geo
        if leaf[3] == "pte":
            pte = mem.pte(geo, va)
            assert pte is not None
            mem = mem.with_pte(geo, va, pte[1] | PTE_DIRTY)
            writes.add(pte_item(eng, pte[0], va))
        else:
            which, shift = (HUGE_PMDS, geo.pmd_shift) if leaf[3] == "pmd" else \
                (HUGE_PUDS, geo.pud_shift)
            mem = mem.with_item(which, va >> shift, mem.table(which)[va >> shift] | PTE_DIRTY)
            writes.add(("D", "dict", which))
        page = page_of(leaf, va, geo)
        if is_page(mem, page):
            head = folio_head(mem, page)
            flags = mem.page_view(FLAGS)[head]
            if not flags & F_ANON and not flags & F_DIRTY:
                mem = mem.with_page(FLAGS, head, flags | F_DIRTY)
                writes.add(("D", "page", head))
        return mem

    def _check_hit(self, eng: Engine, st: State, entry: Leaf, page: int, va: int,
                   reads: set[Any]) -> Violation | None:
        cpu = self.cpu
        mem = st.mem
        if page in st.reused or (is_page(mem, page) and page_freed(mem, page)):
            return Violation(
                "use-after-free",
                f"CPU {cpu} reaches page {page:#x} through a stale TLB entry for {va:#x}: "
                f"the page is {_gone_text(eng, st, page)}")
        if st.returned:
            ret = next((r for r in st.returned if r[0] == cpu and r[1] == entry[0]
                        and r[2] == entry[1]), None)
            if ret is not None:
                return Violation(
                    "stale-after-return",
                    f"CPU {cpu} still reaches page {page:#x} at {va:#x} through a TLB entry "
                    f"that was stale when the unmap of [{ret[3]:#x}, {ret[4]:#x}) returned "
                    "to user space")
        return None

    def idle(self, st: State) -> bool:
        return True


def table_levels(geo: Any) -> tuple[str, ...]:
    """The level of the table a walk holds after reading N entries (a
    folded level has no table of its own)."""
    return (*levels(geo), "pte")

# gup_fast's program counter
GUP_IRQ_OFF, GUP_WALK, GUP_RECHECK, GUP_IRQ_ON, GUP_PUT, GUP_DONE = range(6)


class GupFast(Actor):
    """get_user_pages_fast() on a thread of the process: interrupts off, the
    tables read one per step from the top (each read is a violation if the
    table was freed meanwhile: nothing but the IPI or RCU it holds off
    protects it), a reference taken on the page, the PTE read again, then
    interrupts on; the reference is dropped later.

    Local state: (pc, level index being read, table held, page held, PTE seen).
    """

    kind = "gup_fast"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.addr = spec.addr

    def init(self, eng: Engine, s: State) -> None:
        s.set_local(self.index, (GUP_IRQ_OFF, 0, None, None, None))

    def enabled(self, eng: Engine, st: State) -> bool:
        pc = st.local[self.index][0]
        if pc == GUP_DONE:
            return False
        return bool(pc != GUP_IRQ_OFF or st.mem.mm[MM_LIVE])

    def watch(self, eng: Engine, st: State) -> Violation | None:
        pc, level, table, _page, _pte = st.local[self.index]
        if pc == GUP_WALK and table is not None and (table in st.freed or table in st.reused):
            inside = table_levels(eng.geo)[level]
            return Violation(
                "lockless-walk-freed-table",
                f"gup_fast on CPU {self.cpu} (interrupts off) is inside {inside} "
                f"table {table:#x}, which is {_gone_text(eng, st, table)}")
        return None

    def step(self, eng: Engine, st: State) -> Result:
        pc, level, table, page, seen = st.local[self.index]
        cpu = self.cpu
        assert cpu is not None
        s = st.copy()
        reads: set[Any] = set()
        writes: set[Any] = set()
        me = self.index
        if pc == GUP_IRQ_OFF:
            s.irq = st.irq | 1 << cpu
            s.set_local(me, (GUP_WALK, 0, None, None, None))
            writes.add(("irq", cpu))
            return s, [{"enabled": False, "event": "gup_irq"}], Fp(frozenset(reads),
                                                                   frozenset(writes))
        if pc == GUP_WALK:
            return self._walk_step(eng, st, s, level, table)
        if pc == GUP_RECHECK:
            now = st.mem.pte(eng.geo, self.addr)
            reads.add(("D", "layout"))
            if now is not None:
                reads.add(pte_item(eng, now[0], self.addr))
            if now is not None and now[1] == seen:
                s.set_local(me, (GUP_IRQ_ON, 0, None, page, None))
                return s, [{"page": page, "ok": True, "event": "gup_recheck"}], Fp(
                    frozenset(reads), frozenset(writes))
            # The PTE changed under us: drop the reference, give up.
            freed = self._put(s, page, writes)
            s.set_local(me, (GUP_IRQ_ON, 0, None, None, None))
            return s, [{"page": page, "ok": False, "event": "gup_recheck"},
                       {"page": page, "freed": freed, "event": "gup_put"}], Fp(
                frozenset(reads), frozenset(writes))
        if pc == GUP_IRQ_ON:
            s.irq = st.irq & ~(1 << cpu)
            s.set_local(me, (GUP_PUT if page is not None else GUP_DONE, 0, None, page, None))
            writes.add(("irq", cpu))
            return s, [{"enabled": True, "event": "gup_irq"}], Fp(frozenset(reads),
                                                                  frozenset(writes))
        # GUP_PUT: the caller is done with the page.
        freed = self._put(s, page, writes)
        s.set_local(me, (GUP_DONE, 0, None, None, None))
        return s, [{"page": page, "freed": freed, "event": "gup_put"}], Fp(frozenset(reads),
                                                                           frozenset(writes))

    def _put(self, s: State, page: int, writes: set[Any]) -> bool:
        mem = s.mem
        head = folio_head(mem, page)
        ref = int(mem.page_view(REFCOUNT)[head]) - 1
        mem = mem.with_page(REFCOUNT, head, ref)
        freed = ref == 0
        if freed:
            mem = mem.with_page(FLAGS, head, mem.page_view(FLAGS)[head] | F_FREED)
        s.mem = mem
        writes.add(("D", "page", head))
        return freed

    def _walk_step(self, eng: Engine, st: State, s: State, level: int,
                   table: int | None) -> Result:
        """Read one entry: of the pgd (level 0), then of the table held."""
        geo = eng.geo
        lv = levels(geo)
        mem = st.mem
        va = self.addr
        me = self.index
        reads: set[Any] = set(WALK_READS)
        writes: set[Any] = set()
        if table is not None:
            reads.add(("table", table))
            if table in st.freed or table in st.reused:
                reading = table_levels(geo)[level]
                s.violation = Violation(
                    "lockless-walk-freed-table",
                    f"gup_fast on CPU {self.cpu} reads {reading} table {table:#x}, "
                    f"which is {_gone_text(eng, st, table)}")
                return s, [{"level": table_levels(geo)[level], "table": table, "next": None,
                            "event": "gup_walk"}], Fp(frozenset(reads), frozenset(writes))
        name = table_levels(geo)[level]
        hooked = table is None or _hooked(mem, geo, level, va, table)
        nxt: int | None = None
        leaf: tuple[int, int] | None = None  # (pfn, PTE value)
        if hooked:
            if level < len(lv) - 1:
                shift = shifts(geo)[lv[level]]
                if shift == geo.pud_shift and va >> geo.pud_shift in mem.table(HUGE_PUDS):
                    ent = mem.table(HUGE_PUDS)[va >> geo.pud_shift]
                    if ent & PTE_PRESENT:
                        leaf = ((ent >> 8) + ((va & (geo.pud_size - 1)) >> geo.page_shift), ent)
                else:
                    nxt = mem.table(child_table(geo, lv[level])).get(va >> shift)
            elif level == len(lv) - 1:
                huge = mem.table(HUGE_PMDS).get(va >> geo.pmd_shift)
                if huge is not None:
                    if huge & PTE_PRESENT:
                        leaf = ((huge >> 8) + ((va & (geo.pmd_size - 1)) >> geo.page_shift), huge)
                else:
                    hit = mem.pte_tables().get(va >> geo.pmd_shift)
                    nxt = hit[1] if hit is not None else None
            else:
                pte = mem.pte(geo, va)
                if pte is not None:
                    reads.add(pte_item(eng, pte[0], va))
                    if pte[1] & PTE_PRESENT:
                        leaf = (pte[1] >> 8, pte[1])
        ev = {"level": name, "table": table, "next": nxt, "event": "gup_walk"}
        if nxt is not None:
            s.set_local(me, (GUP_WALK, level + 1, nxt, None, None))
            return s, [ev], Fp(frozenset(reads), frozenset(writes))
        if leaf is None:
            s.set_local(me, (GUP_IRQ_ON, 0, None, None, None))
            return s, [ev], Fp(frozenset(reads), frozenset(writes))
        # try_grab_folio(): fails on a freed page (its count is 0).
        pfn, seen = leaf
        events = [ev]
        if is_page(mem, pfn) and pfn in st.reused:
            s.violation = Violation(
                "gup-reused-page",
                f"gup_fast on CPU {self.cpu} takes a reference to page {pfn:#x}, which the "
                "allocator handed out again: the caller gets another process's page")
        if not is_page(mem, pfn) or page_freed(mem, pfn):
            events.append({"page": pfn, "ok": False, "event": "gup_grab"})
            s.set_local(me, (GUP_IRQ_ON, 0, None, None, None))
            return s, events, Fp(frozenset(reads), frozenset(writes))
        head = folio_head(mem, pfn)
        reads.add(("D", "page", head))
        writes.add(("D", "page", head))
        s.mem = mem.with_page(REFCOUNT, head, mem.page_view(REFCOUNT)[head] + 1)
        events.append({"page": pfn, "ok": True, "event": "gup_grab"})
        # The huge-entry path re-checks the entry too; the recheck step
        # re-reads the PTE, which for a huge entry is gone: accept it then.
        s.set_local(me, (GUP_RECHECK if level == len(lv) else GUP_IRQ_ON, 0, None, pfn,
                         seen))
        return s, events, Fp(frozenset(reads), frozenset(writes))

    def idle(self, st: State) -> bool:
        return True


def _hooked(mem: Mem, geo: Any, level: int, va: int, table: int) -> bool:
    """Is ``table`` (read at ``level``) still linked where the walk found it?"""
    from mmugather.core.explore.hwx import table_hooked

    return table_hooked(mem, geo, levels(geo)[level - 1], va, table)
