"""A state of the explored machine: one immutable value the search keeps,
compares and hashes.

Besides the shared memory (:class:`~mmugather.core.explore.mem.Mem`) and
where each zapping thread stands (its event history), a state holds what
the explorer itself models: each CPU's TLB and walk cache, exactly; the
locks; the CPUs with interrupts off; the RCU callbacks not yet run; page
contents as versions and what writeback put on disk; page tables freed
and what the allocator handed out again; the TLB entries that were stale
when an unmap of their range returned to user space; and each explicit actor's own progress.
"""

from __future__ import annotations

from typing import Any

#: A TLB leaf entry: (va, pfn, size, level, dirty)
Leaf = tuple[int, int, int, str, bool]
#: A walk-cache entry: (level of the cached entry, va, size, table it points to)
WalkEntry = tuple[str, int, int, int]


class Violation:
    """A property that failed: its name and what happened."""

    __slots__ = ("message", "prop")

    def __init__(self, prop: str, message: str) -> None:
        self.prop = prop
        self.message = message

    def __repr__(self) -> str:
        return f"Violation({self.prop!r}, {self.message!r})"


class State:
    """One state.  Build a successor with :meth:`copy`, change its fields,
    then read :attr:`key` (computed on first use)."""

    __slots__ = ("_hash", "_key", "checker", "disk", "freed", "irq", "local", "locks", "mem",
                 "mmap", "nodes", "rcu", "returned", "reused", "tlb", "versions", "violation",
                 "walk")

    nodes: tuple[Any, ...]
    mem: Any
    #: per CPU: frozenset of Leaf
    tlb: tuple[frozenset[Leaf], ...]
    #: per CPU: frozenset of WalkEntry
    walk: tuple[frozenset[WalkEntry], ...]
    #: locks held: frozenset of (lock, actor index); a page-table lock is its
    #: table id, a folio lock ("folio", head pfn)
    locks: frozenset[tuple[Any, int]]
    #: mmap_lock holders: frozenset of (actor index, "exit" | "munmap" | "read")
    mmap: frozenset[tuple[int, str]]
    #: CPUs with interrupts off (bit mask)
    irq: int
    #: call_rcu() callbacks waiting for a grace period, in order
    rcu: tuple[tuple[int, int], ...]
    #: page contents: frozenset of (pfn, version); a page not listed is at 1
    versions: frozenset[tuple[int, int]]
    #: what writeback wrote: frozenset of (pfn, version)
    disk: frozenset[tuple[int, int]]
    #: page tables freed
    freed: frozenset[int]
    #: pages and tables the allocator handed out again
    reused: frozenset[int]
    #: TLB entries that were stale when an unmap of their address returned
    #: to user space: (cpu, va, pfn, start, end) (that range)
    returned: frozenset[tuple[int, int, int, int, int]]
    #: each explicit actor's own state, by actor index (None for the others)
    local: tuple[Any, ...]
    #: a property that failed in the step that led here (the search stops)
    violation: Violation | None
    _hash: int | None
    #: what the sequential checker reported in that step (the search goes on:
    #: a concrete failure is the better counterexample)
    checker: Violation | None
    _key: tuple[Any, ...] | None

    def copy(self) -> State:
        s = State.__new__(State)
        s.nodes = self.nodes
        s.mem = self.mem
        s.tlb = self.tlb
        s.walk = self.walk
        s.locks = self.locks
        s.mmap = self.mmap
        s.irq = self.irq
        s.rcu = self.rcu
        s.versions = self.versions
        s.disk = self.disk
        s.freed = self.freed
        s.reused = self.reused
        s.returned = self.returned
        s.local = self.local
        s.violation = None
        s.checker = None
        s._key = None
        s._hash = None
        return s

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash(self.key)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, State):
            return NotImplemented
        return hash(self) == hash(other) and self.key == other.key

    @property
    def key(self) -> tuple[Any, ...]:
        k = self._key
        if k is None:
            k = self._key = (self.nodes, self.mem, self.tlb, self.walk, self.locks, self.mmap,
                             self.irq, self.rcu, self.versions, self.disk, self.freed,
                             self.reused, self.returned, self.local)
        return k

    def version(self, pfn: int) -> int:
        for p, v in self.versions:
            if p == pfn:
                return v
        return 1

    def with_version(self, pfn: int, v: int) -> frozenset[tuple[int, int]]:
        return frozenset([*(e for e in self.versions if e[0] != pfn), (pfn, v)])

    def lock_owner(self, lock: Any) -> int | None:
        for lk, owner in self.locks:
            if lk == lock:
                return owner
        return None

    def set_local(self, index: int, value: Any) -> None:
        local = list(self.local)
        local[index] = value
        self.local = tuple(local)


#: footprint items of the shared memory's structures (not cells)
STRUCT_KINDS = frozenset({"vmas", "layout", "dict", "scalars", "machine"})


class Fp:
    """A transition's footprint: what it read and wrote, learned when it ran.

    Items are tuples: ("tlb", cpu), ("lock", id), ("irq", cpu), ("table",
    id), ("ver", pfn), ("disk", pfn), ("mmap",), ("ret",), ("rcu",),
    ("reuse",), and shared-memory items: cells ("D", "page", index),
    ("D", "pte", table, index), ("D", "mm", field) and structures ("D",
    "vmas"), ("D", "layout"), ("D", "dict", n), ("D", "scalars"), ("D",
    "machine").  A zapping thread's step reads the cells it was seen to
    read and, as far as anyone knows, every structure (``all_d`` 1); a step
    whose reads were not recorded reads everything (``all_d`` 2).
    """

    __slots__ = ("all_d", "reads", "writes", "writes_d", "writes_struct")

    def __init__(self, reads: frozenset[Any], writes: frozenset[Any], all_d: int = 0) -> None:
        self.reads = reads
        self.writes = writes
        self.all_d = all_d
        self.writes_d = False
        self.writes_struct = False
        for item in writes:
            if item[0] == "D":
                self.writes_d = True
                if item[1] in STRUCT_KINDS:
                    self.writes_struct = True
                    break

    def conflicts(self, other: Fp) -> bool:
        w = self.writes
        ow = other.writes
        if not w.isdisjoint(ow) or not w.isdisjoint(other.reads) or \
                not ow.isdisjoint(self.reads):
            return True
        a, b = self.all_d, other.all_d
        if a and (other.writes_d if a == 2 else other.writes_struct):
            return True
        return bool(b and (self.writes_d if b == 2 else self.writes_struct))

    def __repr__(self) -> str:
        return f"Fp(r={sorted(map(str, self.reads))}, w={sorted(map(str, self.writes))})"
