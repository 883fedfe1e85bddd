"""The shared memory of a world: everything the callers read and write that
another actor may also touch, as one immutable, hashable value.

A :class:`Mem` is taken from a live address space, mm and machine
(:func:`pull`) after the real callers ran a step, and written back into
them (:func:`push`) before they run the next one.  Between those, the
explorer's own actors (user threads, writeback, gup_fast...) read and
write it here, one copy-on-write change at a time, and the search keeps it
in its states.  What the callers keep for themselves (the gather, their
locals, the checker watching them) is not here: it is identified by the
events they emitted (``docs/explorer.md``).

Page and folio state is kept as the bytes of the ``PageStore`` arrays, each
PTE table as the bytes of its entries, the other tables and maps as tuples
of their items in insertion order (the callers iterate some of them).
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

from mmugather.core.aspace import MmVma, PteTable
from mmugather.core.constants import Geometry
from mmugather.core.explore.track import track_array

if TYPE_CHECKING:
    from mmugather.core.explore.real import RealWorld

#: PageStore arrays, in this order, and their typecodes
PAGE_FIELDS = ("mapcount", "head", "order", "flags", "refcount", "entire_mapcount", "nr_mapped")
PAGE_CODES = {f: "i" for f in PAGE_FIELDS} | {"head": "q", "order": "b"}
MAPCOUNT, HEAD, ORDER, FLAGS, REFCOUNT, ENTIRE, NR_MAPPED = range(7)

#: AddressSpace dicts, in this order
DICT_FIELDS = ("huge_pmds", "deposited", "huge_puds", "pmd_tables", "pud_tables", "p4d_tables",
               "page_cache", "swap_map", "tables", "pmd_share")
HUGE_PMDS, DEPOSITED, HUGE_PUDS, PMD_TABLES, PUD_TABLES, P4D_TABLES, PAGE_CACHE, SWAP_MAP, \
    TABLES, PMD_SHARE = range(10)

# The parts of a Mem.  LAYOUT: (PMD index, table id) of each hooked PTE
# table; PTE_DATA: each one's entries, in the same order.
VMAS, PAGES, LAYOUT, PTE_DATA, DICTS, SCALARS, MM, MACHINE = range(8)
#: the parts a step's reads are tracked in, cell by cell (track.py)
CELL_PARTS = frozenset({PAGES, PTE_DATA, MM})
# MM part: (tlb_flush_pending, context items, cpumask, lazy_cpus, live, asid,
# tlb_flush_batched)
MM_PENDING, MM_CONTEXT, MM_CPUMASK, MM_LAZY, MM_LIVE, MM_ASID, MM_BATCHED = range(7)

_VMA_FIELDS = ("start", "end", "kind", "exec", "name", "hpage_size", "file", "pgoff")


def vma_value(vma: MmVma) -> tuple[Any, ...]:
    return (vma.start, vma.end, vma.kind, vma.exec, vma.name, vma.hpage_size, vma.file,
            vma.pgoff)


class Mem:
    """One value of the shared memory.  Equal contents compare equal; the
    hash is computed once."""

    __slots__ = ("_cache", "_hash", "hashes", "parts")

    def __init__(self, parts: tuple[Any, ...], hashes: tuple[int, ...] | None = None) -> None:
        self.parts = parts
        #: each part's hash: a change of one part rehashes that part alone
        self.hashes = hashes if hashes is not None else tuple(map(hash, parts))
        self._hash = hash(self.hashes)
        #: views and dicts built on demand (not part of the value)
        self._cache: dict[Any, Any] = {}

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Mem):
            return NotImplemented
        return self._hash == other._hash and self.parts == other.parts

    def __repr__(self) -> str:
        return f"<Mem {self._hash & 0xFFFFFFFF:08x}>"

    # --- reading ---------------------------------------------------------

    def page_view(self, field: int) -> Any:
        """The ``PageStore`` array ``field`` (MAPCOUNT, FLAGS...) as a
        read-only sequence of ints."""
        key = ("p", field)
        view = self._cache.get(key)
        if view is None:
            raw: Any = memoryview(self.parts[PAGES][field])
            view = self._cache[key] = raw.cast(PAGE_CODES[PAGE_FIELDS[field]])
        return view

    def npages(self) -> int:
        return len(self.page_view(MAPCOUNT))

    def table(self, which: int) -> dict[Any, Any]:
        """One of the AddressSpace dicts (HUGE_PMDS, PMD_TABLES...), as a dict."""
        key = ("d", which)
        d = self._cache.get(key)
        if d is None:
            d = self._cache[key] = dict(self.parts[DICTS][which])
        return d

    def pte_tables(self) -> dict[int, tuple[int, int, bytes]]:
        """PMD index -> (position, table id, entries)."""
        d = self._cache.get("ptes")
        if d is None:
            d = self._cache["ptes"] = {
                pmd_i: (pos, tid, data) for pos, ((pmd_i, tid), data)
                in enumerate(zip(self.parts[LAYOUT], self.parts[PTE_DATA], strict=True))
            }
        return d

    def pte_table_ids(self) -> dict[int, int]:
        """Hooked PTE table id -> its position."""
        d = self._cache.get("ptids")
        if d is None:
            d = self._cache["ptids"] = {tid: pos for pos, (_pmd_i, tid)
                                        in enumerate(self.parts[LAYOUT])}
        return d

    def pte(self, geo: Geometry, addr: int) -> tuple[int, int] | None:
        """(table id, entry) of the PTE mapping ``addr``, or None: no PTE table."""
        hit = self.pte_tables().get(addr >> geo.pmd_shift)
        if hit is None:
            return None
        _pos, tid, data = hit
        index = (addr >> geo.page_shift) & (geo.ptrs_per_pte - 1)
        return tid, int.from_bytes(data[8 * index: 8 * index + 8], "little", signed=True)

    @property
    def mm(self) -> tuple[Any, ...]:
        mm: tuple[Any, ...] = self.parts[MM]
        return mm

    # --- changing: each returns a new Mem ---------------------------------

    def with_parts(self, changes: dict[int, Any]) -> Mem:
        parts = list(self.parts)
        hashes = list(self.hashes)
        for part, value in changes.items():
            parts[part] = value
            hashes[part] = hash(value)
        return Mem(tuple(parts), tuple(hashes))

    def _with(self, part: int, value: Any) -> Mem:
        parts = list(self.parts)
        parts[part] = value
        hashes = list(self.hashes)
        hashes[part] = hash(value)
        return Mem(tuple(parts), tuple(hashes))

    def with_pte(self, geo: Geometry, addr: int, value: int) -> Mem:
        pos, _tid, data = self.pte_tables()[addr >> geo.pmd_shift]
        index = (addr >> geo.page_shift) & (geo.ptrs_per_pte - 1)
        new = data[: 8 * index] + value.to_bytes(8, "little", signed=True) + data[8 * index + 8:]
        ptes = list(self.parts[PTE_DATA])
        ptes[pos] = new
        return self._with(PTE_DATA, tuple(ptes))

    def with_page(self, field: int, index: int, value: int) -> Mem:
        arr = array(PAGE_CODES[PAGE_FIELDS[field]], self.parts[PAGES][field])
        arr[index] = value
        pages = list(self.parts[PAGES])
        pages[field] = arr.tobytes()
        return self._with(PAGES, tuple(pages))

    def with_item(self, which: int, key: Any, value: Any = None, delete: bool = False) -> Mem:
        items = dict(self.parts[DICTS][which])
        if delete:
            items.pop(key, None)
        else:
            items[key] = value
        dicts = list(self.parts[DICTS])
        dicts[which] = tuple(items.items())
        return self._with(DICTS, tuple(dicts))

    def with_mm(self, field: int, value: Any) -> Mem:
        mm = list(self.parts[MM])
        mm[field] = value
        return self._with(MM, tuple(mm))

    def with_scalars(self, next_table_id: int, next_swap: int) -> Mem:
        return self._with(SCALARS, (next_table_id, next_swap))


# ---------------------------------------------------------------------------
# Between a Mem and the live objects of a real world
# ---------------------------------------------------------------------------


def _same(new: Any, old: Any) -> Any:
    """``old`` when it equals ``new``: unchanged parts stay shared between
    successive values (and keep their cached hashes)."""
    return old if old == new else new


def pull(world: RealWorld, prev: Mem | None) -> Mem:
    """The shared memory as the live objects of ``world`` hold it now."""
    aspace = world.aspace
    store = aspace.pages
    old = prev.parts if prev is not None else None
    pages = tuple(array.tobytes(getattr(store, f)) for f in PAGE_FIELDS)
    layout = []
    data = []
    registry = world.pte_registry
    for pmd_i, table in aspace.pte_tables.items():
        if registry.get(table.id) is not table:
            world.adopt_table(table)
        layout.append((pmd_i, table.id))
        data.append(array.tobytes(table.entries))
    vmas = []
    vma_registry = world.vma_registry
    for vma in aspace.vmas:
        value = vma_value(vma)
        if value not in vma_registry:
            vma_registry[value] = vma
        vmas.append(value)
    dicts = tuple(tuple(getattr(aspace, f).items()) for f in DICT_FIELDS)
    mm = world.mm
    get = object.__getattribute__  # no read of the mm is the callers'
    mm_part = (get(mm, "tlb_flush_pending"), tuple(get(mm, "context").items()),
               get(mm, "cpumask"), get(mm, "lazy_cpus"), get(mm, "live"), get(mm, "asid"),
               get(mm, "tlb_flush_batched"))
    machine = world.machine
    machine_part = (tuple(machine.alloc_failures.items()), machine.stale_vma_flags)
    parts: tuple[Any, ...] = (tuple(vmas), pages, tuple(layout), tuple(data), dicts,
                              (aspace.next_table_id, aspace.next_swap), mm_part, machine_part)
    if prev is not None and old is not None:
        parts = tuple(_same(new, o) for new, o in zip(parts, old, strict=True))
        if all(new is o for new, o in zip(parts, old, strict=True)):
            return prev
        hashes = tuple(h if new is o else hash(new)
                       for new, o, h in zip(parts, old, prev.hashes, strict=True))
        return Mem(parts, hashes)
    return Mem(parts)


def push(world: RealWorld, mem: Mem) -> None:
    """Make the live objects of ``world`` hold ``mem``, in place: the
    suspended callers keep references to these very objects.  Only the
    parts that differ from what the world holds (``world.mem``) are written."""
    aspace = world.aspace
    parts = mem.parts
    # After steps whose memory was not taken, nothing is known: write all.
    have = (None,) * len(parts) if world.stale else world.mem.parts
    world.stale = False
    if parts[VMAS] is not have[VMAS]:
        vmas = [world.vma_registry.get(v) or _new_vma(world, v) for v in parts[VMAS]]
        aspace.vmas[:] = vmas
    if parts[PAGES] is not have[PAGES]:
        store = aspace.pages
        old_pages = have[PAGES] or (None,) * len(PAGE_FIELDS)
        for field, data, old in zip(PAGE_FIELDS, parts[PAGES], old_pages, strict=True):
            if data is old:
                continue
            arr = getattr(store, field)
            if len(arr) * arr.itemsize == len(data):
                memoryview(arr).cast("B")[:] = data
            else:  # pragma: no cover - the page store never changes size
                del arr[:]
                arr.frombytes(data)
    if parts[LAYOUT] is not have[LAYOUT] or parts[PTE_DATA] is not have[PTE_DATA]:
        tables = aspace.pte_tables
        tables.clear()
        registry = world.pte_registry
        for (pmd_i, tid), data in zip(parts[LAYOUT], parts[PTE_DATA], strict=True):
            table = registry.get(tid)
            if table is None:
                entries: Any = array("q", data)
                if world.rec is not None:
                    entries = track_array(entries, ("t", tid), world.rec)
                table = world.adopt_table(PteTable(tid, entries))
            else:
                memoryview(table.entries).cast("B")[:] = data
            tables[pmd_i] = table
    if parts[DICTS] is not have[DICTS]:
        old_dicts = have[DICTS] or (None,) * len(DICT_FIELDS)
        for field, items, old in zip(DICT_FIELDS, parts[DICTS], old_dicts, strict=True):
            if items is not old:
                d = getattr(aspace, field)
                d.clear()
                d.update(items)
    aspace.next_table_id, aspace.next_swap = parts[SCALARS]
    if parts[MM] is not have[MM]:
        mm = world.mm
        (mm.tlb_flush_pending, context, mm.cpumask, mm.lazy_cpus, mm.live, mm.asid,
         mm.tlb_flush_batched) = parts[MM]
        ctx = object.__getattribute__(mm, "context")
        ctx.clear()
        ctx.update(context)
    if parts[MACHINE] is not have[MACHINE]:
        machine = world.machine
        failures, machine.stale_vma_flags = parts[MACHINE]
        machine.alloc_failures.clear()
        machine.alloc_failures.update(failures)
    world.mem = mem


def _new_vma(world: RealWorld, value: tuple[Any, ...]) -> MmVma:
    vma = MmVma(**dict(zip(_VMA_FIELDS, value, strict=True)))
    world.vma_registry[value] = vma
    return vma
