"""The explorer's actors outside the mm being torn down: a device driver
taking back the memory of a PFN map, and another process sharing a hugetlb
PMD table (docs/explorer.md).  Same contract as :mod:`.actors`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmugather.core.aspace import PTE_PRESENT, PTE_SPECIAL
from mmugather.core.explore.actors import Actor, Result, pte_item
from mmugather.core.explore.hwx import invalidate
from mmugather.core.explore.mem import MM_CPUMASK, PMD_SHARE, PMD_TABLES, VMAS, Mem
from mmugather.core.explore.spec import ActorSpec
from mmugather.core.explore.state import Fp, State
from mmugather.core.explore.zapstep import ZNode
from mmugather.core.hw.invalidate import WALK_ASID, Invalidate

if TYPE_CHECKING:
    from mmugather.core.explore.engine import Engine

def _fp(reads: set[Any], writes: set[Any]) -> Fp:
    return Fp(frozenset(reads), frozenset(writes))


# the driver's program counter
DRV_UNMAP, DRV_FREE, DRV_DONE = range(3)


class Driver(Actor):
    """A device driver revoking the memory behind a PFN map (a buffer moved
    or freed): ``unmap_mapping_range()`` over its file, then the PFN goes
    back to the device's allocator.

    ``unmap_mapping_range()`` zaps every VMA still linked in the file's
    ``i_mmap`` tree: while the PFN-map VMA is linked, it clears the PTE if
    a zap has not yet, and its own gather flushes the whole mm (nested in
    a munmap()'s gather, ``mm_tlb_flush_nested()`` makes it flush
    everything).  Once munmap() has unlinked the VMA it finds nothing and
    flushes nothing: munmap() must have flushed the PFNs itself by then
    (b67fbebd4cf9).  The VMA counts as unlinked once a zapping thread's
    ``tlb_end_vma()`` left it (``vma_end``): ``free_pgtables()`` unlinks it
    after ``unmap_vmas()``, so the model lets the driver in no later than
    the kernel would.

    Local state: (pc, PFN).
    """

    kind = "driver"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.addr = spec.addr
        self.vma_start = 0
        self._ended: dict[ZNode, bool] = {}

    def init(self, eng: Engine, s: State) -> None:
        vma = next((v for v in s.mem.parts[VMAS] if v[0] <= self.addr < v[1]), None)
        pte = s.mem.pte(eng.geo, self.addr)
        if vma is None or vma[2] != "pfnmap" or pte is None or not pte[1] & PTE_PRESENT:
            raise ValueError(f"no PFN map maps a PFN at {self.addr:#x}")
        self.vma_start = vma[0]
        pfn = pte[1] >> 8
        eng.reused_how[pfn] = "given back by its driver to the device's allocator"
        s.set_local(self.index, (DRV_UNMAP, pfn))

    def _left(self, node: ZNode) -> bool:
        """Has the thread at ``node`` left the PFN-map VMA (``vma_end``)?"""
        done = self._ended.get(node)
        if done is None:
            done = node.parent is not None and (self._left(node.parent) or any(
                ev["event"] == "vma_end" and ev["start"] == self.vma_start and ev["pfnmap"]
                for ev in node.events))
            self._ended[node] = done
        return done

    def enabled(self, eng: Engine, st: State) -> bool:
        pc = st.local[self.index][0]
        if pc != DRV_UNMAP:
            return bool(pc == DRV_FREE)
        pte = st.mem.pte(eng.geo, self.addr)
        return pte is None or st.lock_owner(pte[0]) is None

    def step(self, eng: Engine, st: State) -> Result:
        pc, pfn = st.local[self.index]
        s = st.copy()
        me = self.index
        if pc == DRV_FREE:
            s.reused = st.reused | {pfn}
            s.set_local(me, (DRV_DONE, pfn))
            return s, [{"pfn": pfn, "event": "driver_free"}], _fp({("reuse",)}, {("reuse",)})
        # A zapping thread's step that left the VMA (vma_end) changes what
        # the lookup finds.
        reads: set[Any] = {("unlink", self.vma_start), ("D", "layout"), ("D", "vmas"),
                           ("D", "mm", "cpumask")}
        writes: set[Any] = set()
        linked = not any(self._left(node) for node in st.nodes)
        cleared = False
        cpus: list[int] = []
        if linked:
            mem: Mem = st.mem
            pte = mem.pte(eng.geo, self.addr)
            if pte is not None:
                item = pte_item(eng, pte[0], self.addr)
                reads.update({item, ("lock", pte[0])})
                if pte[1] & PTE_PRESENT and pte[1] & PTE_SPECIAL:
                    s.mem = mem.with_pte(eng.geo, self.addr, 0)
                    writes.add(item)
                    cleared = True
            mask = mem.mm[MM_CPUMASK]
            inv = Invalidate("flush_tlb_mm", cpus=mask, walk=WALK_ASID, waits=True)
            s.tlb, s.walk = invalidate(st.tlb, st.walk, inv)
            cpus = [c for c in range(len(st.tlb)) if mask >> c & 1]
            writes.update(("tlb", c) for c in cpus)
        s.set_local(me, (DRV_FREE, pfn))
        return s, [{"found": linked, "cleared": cleared, "cpus": cpus,
                    "event": "driver_unmap"}], _fp(reads, writes)

    def idle(self, st: State) -> bool:
        return True


# the sharer's program counter
SH_UNMAP, SH_REUSE, SH_DONE = range(3)


class Sharer(Actor):
    """The other process sharing a hugetlb PMD table with this mm
    (``huge_pmd_share()``): once this mm has unshared it (its reference
    dropped: the table's count is 1), the other process has it to itself.
    Under the file's ``i_mmap_rwsem`` (and the table's lock) it unmaps part
    of its hugetlb VMA (``huge_pmd_unshare()`` now finds the table
    exclusive), then maps memory of its own in the hole: from then on the
    table holds its own entries, whatever still walks it on this mm's behalf
    (1013af4f585f).  Its own TLBs are not modelled.

    On an arch that shares no PMD table (no ARCH_WANT_HUGE_PMD_SHARE) there
    is no other process: it never moves.

    Local state: (pc, table).
    """

    kind = "sharer"

    def __init__(self, index: int, spec: ActorSpec) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.addr = spec.addr
        self.lock: tuple[str, str] = ("i_mmap", "")

    def init(self, eng: Engine, s: State) -> None:
        mem = s.mem
        if not any(v.shared_pmd and v.start <= self.addr < v.end
                   for v in eng.cfg.scenario.base.vmas):
            raise ValueError(f"no VMA with shared_pmd = true maps {self.addr:#x}")
        table = mem.table(PMD_TABLES).get(self.addr >> eng.geo.pud_shift)
        vma = next((v for v in mem.parts[VMAS] if v[0] <= self.addr < v[1]), None)
        if table is None or vma is None or mem.table(PMD_SHARE).get(table, 1) < 2:
            # An arch that shares no PMD table (or not this one): nobody else
            # is there.
            s.set_local(self.index, (SH_DONE, None))
            return
        self.lock = ("i_mmap", vma[6])
        eng.reused_how[table] = "another process's own page table now"
        s.set_local(self.index, (SH_UNMAP, table))

    def enabled(self, eng: Engine, st: State) -> bool:
        pc, table = st.local[self.index]
        if pc == SH_UNMAP:
            # The other process takes it over only once it holds it alone.
            return (st.mem.table(PMD_SHARE).get(table, 1) == 1
                    and st.lock_owner(self.lock) is None and st.lock_owner(table) is None)
        return bool(pc == SH_REUSE)

    def step(self, eng: Engine, st: State) -> Result:
        pc, table = st.local[self.index]
        s = st.copy()
        if pc == SH_UNMAP:
            s.set_local(self.index, (SH_REUSE, table))
            return s, [{"table": table, "event": "sharer_unmap"}], _fp(
                {("D", "dict", PMD_SHARE), ("lock", self.lock), ("lock", table)}, set())
        s.reused = st.reused | {table}
        s.set_local(self.index, (SH_DONE, table))
        return s, [{"table": table, "event": "sharer_reuse"}], _fp(
            {("table", table)}, {("table", table), ("reuse",)})

    def idle(self, st: State) -> bool:
        return True
