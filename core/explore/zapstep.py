"""The zapping threads' steps as values: event histories, outcomes, and the
effect of the callers' events on what the explorer models.

A zapping thread's state is identified by the events it emitted
(:class:`ZNode`, interned per thread: a trie of histories).  Its step from
a history over a shared memory is a function of the two: the callers read
nothing else, and what they keep for themselves (the gather, their locals)
follows from what they did, which their events say.  So an
:class:`Outcome` is computed once, by the real callers, and then reused
wherever the same history meets the same memory.
"""

from __future__ import annotations

from array import array
from typing import Any

from mmugather.core.aspace import TABLE_ID_BASE
from mmugather.core.constants import Geometry
from mmugather.core.explore.mem import (
    DICTS,
    LAYOUT,
    MACHINE,
    MM,
    PAGE_CODES,
    PAGE_FIELDS,
    PAGES,
    PTE_DATA,
    SCALARS,
    VMAS,
    Mem,
)
from mmugather.core.explore.state import Fp, State, Violation
from mmugather.core.explore.track import MM_FIELDS
from mmugather.core.hw.invalidate import Invalidate

#: the checker's rules the explorer takes over as they are: bookkeeping of
#: the gather and the rmap API.  Its reachability rules ask what a CPU
#: *may* still reach; the explorer knows what each CPU holds, and judges
#: that by its own properties instead.
CHECKER_RULES = frozenset({"rmap-outside-ptl", "rmap-wrong-vma", "rmap-not-pending",
                           "rmap-dropped", "rmap-once", "free-once", "pending-after-finish",
                           "mapcount", "refcount"})

_PART_NAMES = {VMAS: "vmas", LAYOUT: "layout", SCALARS: "scalars", MACHINE: "machine"}
#: the parts a step's outcome is keyed by whole (the others, cell by cell)
STRUCT_PARTS = (VMAS, LAYOUT, DICTS, SCALARS, MACHINE)


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def canon(events: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> tuple[Any, ...]:
    """A hashable, exact form of a list of events."""
    return tuple(tuple((k, _freeze(v)) for k, v in ev.items()) for ev in events)


class ZNode:
    """Where a zapping thread stands: the history of its steps (interned)."""

    __slots__ = ("children", "depth", "done", "events", "key", "mem_in", "mem_out", "mode",
                 "parent", "want", "zap")

    def __init__(self, zap: int, parent: ZNode | None, key: tuple[Any, ...],
                 events: tuple[dict[str, Any], ...], want: Any, done: bool,
                 mem_in: Mem | None, mode: str = "keeps") -> None:
        self.zap = zap
        self.parent = parent
        #: canon(events) of the step that led here
        self.key = key
        self.events = events
        #: what it waits for before its next step (None: nothing)
        self.want = want
        self.done = done
        #: the memory the step that led here ran over (to rebuild the thread),
        #: and the memory it left
        self.mem_in = mem_in
        self.mem_out: Mem | None = None
        #: how its PTE clears reach the TLBs now (its gather's pte_clear_flush)
        self.mode = mode
        self.children: dict[tuple[Any, ...], ZNode] = {}
        self.depth: int = 0 if parent is None else parent.depth + 1

    def child(self, events: tuple[dict[str, Any], ...], want: Any, done: bool,
              mem_in: Mem, mode: str) -> ZNode:
        key = canon(events)
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = ZNode(self.zap, self, key, events, want, done, mem_in,
                                              mode)
        return node

    def path(self) -> list[ZNode]:
        """The nodes from the root's child down to this one."""
        out = []
        node: ZNode | None = self
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def __repr__(self) -> str:
        return f"<ZNode zap{self.zap} depth {self.depth}>"


class Outcome:
    """One real step's result, reusable: events, the memory after it, the
    thread's new node, the effects on the explorer's model, its footprint."""

    __slots__ = ("checker", "effects", "events", "fp", "mem", "node", "queued", "tlb_cache")

    def __init__(self, events: tuple[dict[str, Any], ...], mem: Mem, node: ZNode | None,
                 effects: tuple[tuple[Any, ...], ...], queued: tuple[tuple[int, int], ...],
                 checker: Violation | None, fp: Fp) -> None:
        self.events = events
        self.mem = mem
        self.node = node
        self.effects = effects
        self.queued = queued
        #: what the thread's sequential checker reported in the step
        self.checker = checker
        self.fp = fp
        #: (TLBs, walk caches) before -> after its invalidations
        self.tlb_cache: dict[Any, Any] = {}


def effects_of(events: tuple[dict[str, Any], ...], page_size: int, mode: str, cpu: int,
               nr_cpus: int) -> tuple[tuple[tuple[Any, ...], ...], str]:
    """What the callers' events change in the explorer's own model, and the
    thread's pte_clear_flush mode after them (``mode``: before them)."""
    out: list[tuple[Any, ...]] = []
    every = (1 << nr_cpus) - 1
    for ev in events:
        name = ev["event"]
        if name == "pte_clear":
            # s390's IPTE invalidates as it clears; a deferred clear leaves
            # the entry on the zapping CPU alone.
            if mode == "direct":
                out.append(("drop", ev["addr"], ev.get("size", page_size), every))
            elif mode == "deferred":
                out.append(("drop", ev["addr"], ev.get("size", page_size), every & ~(1 << cpu)))
        elif name == "tlb_invalidate":
            out.append(("inv", Invalidate.from_event(ev)))
        elif name == "ptl_lock":
            out.append(("lock", ev["table"]))
        elif name == "ptl_unlock":
            out.append(("unlock", ev["table"]))
        elif name == "i_mmap_lock":
            out.append(("lock", ("i_mmap", ev["file"])))
        elif name == "i_mmap_unlock":
            out.append(("unlock", ("i_mmap", ev["file"])))
        elif name == "table_free":
            out.append(("freed", tuple(ev["tables"])))
        elif name in ("free_pages", "free_page"):
            pages = ev["pages"] if name == "free_pages" else [ev["page"]]
            tables = tuple(p for p in pages if p >= TABLE_ID_BASE)
            if tables:
                out.append(("freed", tables))
        elif name == "free_ranges":
            tables = tuple(start for start, _nr in ev["ranges"] if start >= TABLE_ID_BASE)
            if tables:
                out.append(("freed", tables))
        elif name == "vma_end":
            # A driver's unmap_mapping_range() finds the VMA or not.
            out.append(("unlink", ev["start"]))
        elif name == "pte_clear_flush":
            mode = ev["mode"]
        elif name == "gather_end":
            mode = "keeps"
        elif name == "gather_begin":
            out.append(("downgrade",))
        elif name == "syscall_enter":
            op = ev["op"]
            out.append(("take_mmap", "read" if op == "madvise_dontneed" else op))
        elif name == "syscall_return":
            out.append(("drop_mmap",))
            if ev["op"] != "exit":
                out.append(("returned", ev["start"], ev["end"]))
    return tuple(out), mode


def apply_effects(s: State, effects: tuple[tuple[Any, ...], ...], owner: int,
                  tlb_cache: dict[Any, Any] | None = None, geo: Geometry | None = None) -> None:
    """Apply a step's effects to ``s`` (a fresh copy) for actor ``owner``.
    ``tlb_cache``: what these effects made of TLBs before (the invalidations
    touch the TLBs and walk caches alone, so they go first, and once per
    distinct TLB contents)."""
    from mmugather.core.explore.hwx import drop_leaf, invalidate

    hw = [eff for eff in effects if eff[0] in ("drop", "inv")]
    if hw:
        key = (s.tlb, s.walk)
        done = tlb_cache.get(key) if tlb_cache is not None else None
        if done is None:
            tlb, walk = s.tlb, s.walk
            for eff in hw:
                if eff[0] == "drop":
                    tlb = drop_leaf(tlb, eff[1], eff[2], eff[3])
                else:
                    tlb, walk = invalidate(tlb, walk, eff[1])
            done = (tlb, walk)
            if tlb_cache is not None:
                tlb_cache[key] = done
        s.tlb, s.walk = done
    for eff in effects:
        kind = eff[0]
        if kind in ("drop", "inv"):
            continue
        if kind == "lock":
            s.locks = s.locks | {(eff[1], owner)}
        elif kind == "unlock":
            s.locks = frozenset(lk for lk in s.locks if lk[0] != eff[1])
        elif kind == "freed":
            s.freed = s.freed | set(eff[1])
        elif kind == "take_mmap":
            s.mmap = s.mmap | {(owner, eff[1])}
        elif kind == "drop_mmap":
            s.mmap = frozenset(h for h in s.mmap if h[0] != owner)
        elif kind == "downgrade":
            if (owner, "munmap") in s.mmap:
                s.mmap = (s.mmap - {(owner, "munmap")}) | {(owner, "read")}
        elif kind == "returned":
            assert geo is not None
            s.returned = s.returned | stale_entries(s, geo, eff[1], eff[2])


def stale_entries(s: State, geo: Geometry, start: int, end: int) -> set[
        tuple[int, int, int, int, int]]:
    """The TLB entries of [start, end) that no PTE backs any more, as
    (cpu, va, pfn, start, end): what no CPU may use once that unmap returned."""
    from mmugather.core.explore.hwx import walk

    out = set()
    for cpu, entries in enumerate(s.tlb):
        for va, pfn, _size, _level, _dirty in entries:
            if start <= va < end:
                now = walk(s.mem, geo, frozenset(), va, frozenset()).leaf
                if now is None or now[0] != va or now[1] != pfn:
                    out.add((cpu, va, pfn, start, end))
    return out


def effect_items(effects: tuple[tuple[Any, ...], ...], nr_cpus: int) -> set[Any]:
    """What applying ``effects`` writes, as footprint items."""
    items: set[Any] = set()
    for eff in effects:
        kind = eff[0]
        if kind == "drop":
            items.update(("tlb", c) for c in range(nr_cpus) if eff[3] >> c & 1)
        elif kind == "inv":
            items.update(("tlb", c) for c in range(nr_cpus) if eff[1].cpus >> c & 1)
        elif kind in ("lock", "unlock"):
            items.add(("lock", eff[1]))
        elif kind == "freed":
            items.update(("table", t) for t in eff[1])
        elif kind in ("take_mmap", "drop_mmap", "downgrade"):
            items.add(("mmap",))
        elif kind == "returned":
            items.add(("ret",))
        elif kind == "unlink":
            items.add(("unlink", eff[1]))
    return items


def mem_items(a: Mem, b: Mem) -> set[Any]:
    """Footprint items of what differs between two memories: cells (a page
    index, a PTE, an mm field) and whole structures (the VMAs, the PTE
    table layout, each map of tables)."""
    items: set[Any] = set()
    if a is b:
        return items
    pa, pb = a.parts, b.parts
    for part, (x, y) in enumerate(zip(pa, pb, strict=True)):
        if x is y or x == y:
            continue
        if part == PAGES:
            for field, (bx, by) in enumerate(zip(x, y, strict=True)):
                if bx != by:
                    code = PAGE_CODES[PAGE_FIELDS[field]]
                    ax, ay = array(code, bx), array(code, by)
                    items.update(("D", "page", i) for i in range(min(len(ax), len(ay)))
                                 if ax[i] != ay[i])
        elif part == PTE_DATA:
            tx = dict(zip((t for _p, t in pa[LAYOUT]), x, strict=True))
            ty = dict(zip((t for _p, t in pb[LAYOUT]), y, strict=True))
            for tid in set(tx) & set(ty):
                if tx[tid] != ty[tid]:
                    ex, ey = array("q", tx[tid]), array("q", ty[tid])
                    items.update(("D", "pte", tid, i) for i in range(len(ex)) if ex[i] != ey[i])
        elif part == DICTS:
            items.update(("D", "dict", i) for i, (dx, dy) in enumerate(zip(x, y, strict=True))
                         if dx != dy)
        elif part == MM:
            items.update(("D", "mm", MM_FIELDS[i]) for i, (fx, fy) in enumerate(zip(x, y,
                                                                                 strict=True))
                         if fx != fy)
        else:
            items.add(("D", _PART_NAMES[part]))
    return items


def cell_items(cells: frozenset[Any]) -> set[Any]:
    """Footprint items of the cells a step read."""
    items: set[Any] = set()
    for tag, index in cells:
        if tag == "m":
            items.add(("D", "mm", index))
        elif tag[0] == "p":
            items.add(("D", "page", index))
        else:
            items.add(("D", "pte", tag[1], index))
    return items


def cell_value(mem: Mem, cell: tuple[Any, Any]) -> Any:
    """The value ``cell`` holds in ``mem`` (None: a PTE table not hooked)."""
    tag, index = cell
    if tag == "m":
        return mem.parts[MM][MM_FIELDS.index(index)]
    if tag[0] == "p":
        return mem.page_view(tag[1])[index]
    pos = mem.pte_table_ids().get(tag[1])
    if pos is None:
        return None
    data = mem.parts[PTE_DATA][pos]
    return int.from_bytes(data[8 * index: 8 * index + 8], "little", signed=True)


def whole_value(mem: Mem, tag: Any) -> Any:
    if tag[0] == "p":
        return mem.parts[PAGES][tag[1]]
    pos = mem.pte_table_ids().get(tag[1])
    return None if pos is None else mem.parts[PTE_DATA][pos]


def struct_key(mem: Mem) -> tuple[int, ...]:
    h = mem.hashes
    return (h[VMAS], h[LAYOUT], h[DICTS], h[SCALARS], h[MACHINE])


class CellEntry:
    """A step's outcome as a rule: over any memory with the same structures
    and the same values in the cells it read, it does the same, writing the
    same values to the same cells."""

    __slots__ = ("cells", "m0", "mm_w", "out", "page_w", "pte_w", "values", "whole",
                 "whole_values")

    def __init__(self, m0: Mem, out: Outcome, cells: frozenset[Any], whole: frozenset[Any],
                 written: frozenset[Any]) -> None:
        self.m0 = m0
        self.out = out
        self.cells = tuple(cells)
        self.values = tuple(cell_value(m0, c) for c in self.cells)
        self.whole = tuple(whole)
        self.whole_values = tuple(whole_value(m0, t) for t in self.whole)
        m1 = out.mem
        pages: dict[int, list[tuple[int, int]]] = {}
        ptes: dict[int, list[tuple[int, int]] | bytes] = {}
        mm: list[tuple[int, Any]] = []
        for cell in sorted(written, key=repr):
            tag, index = cell
            if tag == "m":
                mm.append((MM_FIELDS.index(index), m1.parts[MM][MM_FIELDS.index(index)]))
            elif tag[0] == "p":
                pages.setdefault(tag[1], []).append((index, m1.page_view(tag[1])[index]))
            elif tag[1] in m1.pte_table_ids():
                w = ptes.setdefault(tag[1], [])
                assert isinstance(w, list)
                w.append((index, cell_value(m1, cell)))
        # A table of the step's own making is taken whole.
        t0 = m0.pte_table_ids()
        for (_pmd, tid), data in zip(m1.parts[LAYOUT], m1.parts[PTE_DATA], strict=True):
            if tid not in t0:
                ptes[tid] = data
        # The mm's context is a dict: compared, not tracked per key.
        ctx = MM_FIELDS.index("context")
        if m0.parts[MM][ctx] != m1.parts[MM][ctx]:
            mm.append((ctx, m1.parts[MM][ctx]))
        self.page_w = sorted(pages.items())
        self.pte_w = ptes
        self.mm_w = mm

    def matches(self, mem: Mem) -> bool:
        p0, p = self.m0.parts, mem.parts
        for part in STRUCT_PARTS:
            if p0[part] is not p[part] and p0[part] != p[part]:
                return False
        for cell, value in zip(self.cells, self.values, strict=True):
            if cell_value(mem, cell) != value:
                return False
        return all(whole_value(mem, t) == v
                   for t, v in zip(self.whole, self.whole_values, strict=True))

    def derive(self, mem: Mem) -> Mem:
        """What the step leaves of ``mem`` (which :meth:`matches`)."""
        m1 = self.out.mem
        parts = list(m1.parts)
        hashes = list(m1.hashes)
        pages = mem.parts[PAGES]
        if self.page_w:
            new = list(pages)
            for field, writes in self.page_w:
                arr = array(PAGE_CODES[PAGE_FIELDS[field]], pages[field])
                for i, v in writes:
                    arr[i] = v
                new[field] = arr.tobytes()
            pages = tuple(new)
            hashes[PAGES] = hash(pages)
        else:
            hashes[PAGES] = mem.hashes[PAGES]
        parts[PAGES] = pages
        have = dict(zip((t for _p, t in mem.parts[LAYOUT]), mem.parts[PTE_DATA], strict=True))
        data = []
        for _pmd, tid in m1.parts[LAYOUT]:
            w = self.pte_w.get(tid)
            if isinstance(w, bytes):
                data.append(w)
                continue
            d = have[tid]
            if w:
                arr = array("q", d)
                for i, v in w:
                    arr[i] = v
                d = arr.tobytes()
            data.append(d)
        parts[PTE_DATA] = tuple(data)
        hashes[PTE_DATA] = hash(parts[PTE_DATA])
        mm = mem.parts[MM]
        if self.mm_w:
            mm_list = list(mm)
            for i, v in self.mm_w:
                mm_list[i] = v
            mm = tuple(mm_list)
        parts[MM] = mm
        hashes[MM] = hash(mm)
        return Mem(tuple(parts), tuple(hashes))


def rule_for(m0: Mem, out: Outcome, reads: tuple[frozenset[Any], ...],
             changed: set[Any]) -> CellEntry | None:
    """The step as a rule, or None when what it read or wrote is not known
    cell by cell (an array read or written as a whole), or when the cells
    it changed (``changed``: mem_items() of before and after) are not all
    cells it was seen writing."""
    cells, whole, written, whole_written = reads
    if whole_written:
        return None
    noticed = cell_items(written)
    for item in changed:
        if item[1] in ("page", "pte") and item not in noticed:
            return None
        if item[1] == "mm" and item[2] != "context" and item not in noticed:
            return None
    return CellEntry(m0, out, cells, whole, written)


def want_items(want: Any, nr_cpus: int) -> set[Any]:
    """What a thread's wait reads (whether it may go on)."""
    if want is None:
        return set()
    kind, arg = want
    if kind == "lock":
        return {("lock", arg)}
    if kind == "ipi":
        return {("irq", c) for c in range(nr_cpus) if arg >> c & 1}
    return {("mmap",)}
