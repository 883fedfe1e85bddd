"""The replay benchmark's input: a generated, kernel-shaped replay file.

:func:`generate_ops` writes a valid replay-v1 file that calls the gather the
way the kernel's teardown paths do (``exit_mmap()`` and ``munmap()``:
``unmap_vmas()`` then ``free_pgtables()``), deterministic from a seed, in the
compact form (``{"op":"x","addr":1}``); :func:`write_default_json` rewrites
it as Python's ``json.dumps`` writes by default (``{"op": "x", "addr": 1}``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import attrs

from mmugather.core.constants import Geometry

_GEO = Geometry()
PAGE = _GEO.page_size
PMD_SIZE = _GEO.pmd_size
PUD_SIZE = _GEO.pud_size
P4D_SIZE = _GEO.p4d_size
#: Pages queued before __tlb_remove_page_size() returns true (9,698 at 4K).
QUEUE_CAPACITY = _GEO.queue_capacity

#: Smallest op budget worth a whole flow; smaller rests are grace periods.
_MIN_FLOW_OPS = 48


@attrs.define(slots=True)
class _VmaPlan:
    start: int
    end: int
    flags: str  # the JSON list, rendered
    #: chance that a PTE of the VMA is present
    present: float
    #: chance that a present page is a dirty shared file page (delay_rmap)
    dirty_shared: float = 0.0
    #: PFN-mapped: no struct page behind the PTEs, nothing to queue
    pfnmap: bool = False
    #: anonymous and PMD-aligned: whole 2 MiB chunks may be THPs
    thp: float = 0.0


class _FlowWriter:
    """Builds the lines of one gather, keeping the queue count as the caller
    of a gathering arch (generic-smp) must know it: how many pages are queued
    since the last free, so that it flushes when ``__tlb_remove_page_size()``
    reports the queue full."""

    def __init__(self, rng: random.Random, state: _GenState) -> None:
        self.rng = rng
        self.state = state
        self.lines: list[bytes] = []

    # Queue accounting -----------------------------------------------------

    def _queued_one(self) -> bool:
        """One more page queued; True when the queue is now full."""
        state = self.state
        state.queued += 1
        return state.queued == QUEUE_CAPACITY

    def _freed(self) -> None:
        self.state.queued = 0

    # Pieces -------------------------------------------------------------

    def vma_op(self, op: str, vma: _VmaPlan) -> None:
        self.lines.append(
            b'{"op":"%s","start":%d,"end":%d,"flags":%s}\n'
            % (op.encode(), vma.start, vma.end, vma.flags.encode())
        )

    def zap_vma(self, vma: _VmaPlan) -> None:
        """unmap_single_vma(): tlb_start_vma(), the PTE tables, tlb_end_vma()."""
        self.vma_op("tlb_start_vma", vma)
        addr = vma.start
        while addr < vma.end:
            chunk_end = min((addr // PMD_SIZE + 1) * PMD_SIZE, vma.end)
            if (
                vma.thp
                and addr % PMD_SIZE == 0
                and chunk_end - addr == PMD_SIZE
                and self.rng.random() < vma.thp
            ):
                self.zap_huge_pmd(addr)
                addr = chunk_end
                continue
            addr = self.zap_pte_range(vma, addr, chunk_end)
        self.vma_op("tlb_end_vma", vma)

    def zap_huge_pmd(self, addr: int) -> None:
        """zap_huge_pmd(): one PMD-mapped THP, its rmap removed by the caller."""
        lines = self.lines
        lines.append(b'{"op":"tlb_change_page_size","size":%d}\n' % PMD_SIZE)
        lines.append(b'{"op":"tlb_remove_pmd_tlb_entry","addr":%d}\n' % addr)
        lines.append(
            b'{"op":"tlb_remove_page_size","page":%d,"size":%d}\n'
            % (self.state.new_pfn(512), PMD_SIZE)
        )
        # tlb_remove_page_size() flushes by itself when that filled the queue.
        if self._queued_one():
            self._freed()

    def zap_pte_range(self, vma: _VmaPlan, addr: int, end: int) -> int:
        """One call of zap_pte_range() under the PTE table's lock; returns
        where it stopped (before ``end`` when the queue filled up)."""
        rng = self.rng
        lines = self.lines
        append = lines.append
        append(b'{"op":"tlb_change_page_size","size":%d}\n' % PAGE)
        append(b'{"op":"tlb_discard_rmaps"}\n')
        force_flush = False
        present = vma.present
        while addr < end:
            if rng.random() >= present:
                addr += PAGE
                continue
            append(b'{"op":"tlb_remove_tlb_entry","addr":%d}\n' % addr)
            addr += PAGE
            if vma.pfnmap:
                continue
            append(b'{"op":"tlb_batch_rmap"}\n')
            page = self.state.new_pfn(1)
            if vma.dirty_shared and rng.random() < vma.dirty_shared:
                # A dirty shared file page: its rmap goes after the flush.
                append(b'{"op":"__tlb_remove_page_size","page":%d,"delay_rmap":true}\n' % page)
                force_flush = True
            else:
                append(b'{"op":"__tlb_remove_page_size","page":%d}\n' % page)
            if self._queued_one():
                force_flush = True
                break
        if force_flush:
            append(b'{"op":"tlb_flush_mmu_tlbonly"}\n')
            self.vma_op("tlb_flush_rmaps", vma)
            append(b'{"op":"tlb_flush_mmu"}\n')
            self._freed()
        else:
            self.vma_op("tlb_flush_rmaps", vma)
        return addr

    def free_table(self, level: str, addr: int) -> None:
        """p?d_free_tlb(): on generic-smp the table is queued as a page, and
        tlb_remove_page() flushes by itself when that fills the queue."""
        if level == "pte":
            self.lines.append(b'{"op":"tlb_change_page_size","size":%d}\n' % PAGE)
        self.lines.append(
            b'{"op":"%s_free_tlb","table":%d,"addr":%d}\n'
            % (level.encode(), self.state.new_table(), addr)
        )
        if self._queued_one():
            self._freed()

    def free_pgtables(self, vmas: list[_VmaPlan], whole: bool) -> None:
        """free_pgtables(): the PTE tables under the VMAs, then (``whole``,
        exit) every PMD, PUD and P4D table above them, depth first."""
        pte_regions: dict[int, int] = {}  # 2 MiB region -> first address in it
        for vma in vmas:
            first = vma.start // PMD_SIZE
            last = (vma.end - 1) // PMD_SIZE
            for region in range(first, last + 1):
                lo = max(region * PMD_SIZE, vma.start)
                if not whole and (lo != region * PMD_SIZE or vma.end < (region + 1) * PMD_SIZE):
                    continue  # munmap keeps a table the range does not cover
                pte_regions.setdefault(region, lo)
        if not whole:
            for region in sorted(pte_regions):
                self.free_table("pte", pte_regions[region])
            return
        by_pmd_table: dict[int, list[int]] = {}
        for region in sorted(pte_regions):
            by_pmd_table.setdefault(region * PMD_SIZE // PUD_SIZE, []).append(region)
        pud_tables: list[int] = []
        for pmd_table, regions in by_pmd_table.items():
            for region in regions:
                self.free_table("pte", pte_regions[region])
            self.free_table("pmd", pmd_table * PUD_SIZE)
            pud_table = pmd_table * PUD_SIZE // P4D_SIZE
            if pud_table not in pud_tables:
                pud_tables.append(pud_table)
        for pud_table in pud_tables:
            self.free_table("pud", pud_table * P4D_SIZE)
        self.free_table("p4d", 0)

    def finish(self, nested: bool) -> None:
        self.lines.append(
            b'{"op":"tlb_finish_mmu","nested":true}\n' if nested else b'{"op":"tlb_finish_mmu"}\n'
        )
        self._freed()
        self.lines.append(b'{"op":"rcu_grace_period"}\n')


@attrs.define(slots=True)
class _GenState:
    """What outlives one flow: the page frame and table id allocators and the
    queue count (zero between gathers)."""

    rng: random.Random
    next_pfn: int = 0
    next_table: int = 0x4000000
    queued: int = 0

    def __attrs_post_init__(self) -> None:
        self.next_pfn = self.rng.randrange(0x100000, 0x800000)

    def new_pfn(self, nr: int) -> int:
        # Mostly consecutive frames, as a buddy allocator hands them out
        # under a streaming fault pattern, with a jump now and then.
        if self.rng.random() < 0.02:
            self.next_pfn += self.rng.randrange(1, 4096) * 512
        pfn = self.next_pfn
        self.next_pfn += nr
        return pfn

    def new_table(self) -> int:
        self.next_table += 1
        return self.next_table


def _pages(rng: random.Random, median: float, cap: int) -> int:
    """A VMA length in pages: log-normal around ``median``, 1..cap."""
    return max(1, min(cap, round(rng.lognormvariate(0, 1.0) * median)))


def _exit_vmas(rng: random.Random, page_budget: int) -> list[_VmaPlan]:
    """The VMAs of a process's address space: text, data, heap, libraries
    and anonymous mappings, stack."""
    vmas: list[_VmaPlan] = []
    budget = page_budget

    def take(median: float) -> int:
        nonlocal budget
        n = min(budget, _pages(rng, median, 1 << 16)) if budget > 0 else 0
        budget -= n
        return n

    # Program text, data and bss, heap (brk).
    addr = 0x400000
    for median, flags, present, dirty in ((120, '["exec"]', 0.7, 0.0), (24, "[]", 0.9, 0.0)):
        n = take(median)
        if n:
            vmas.append(_VmaPlan(addr, addr + n * PAGE, flags, present, dirty))
            addr += n * PAGE
    addr = (addr // PMD_SIZE + rng.randrange(1, 64)) * PMD_SIZE
    n = take(1500)
    if n:
        vmas.append(_VmaPlan(addr, addr + n * PAGE, "[]", 0.95, thp=0.05))
    # The mmap area grows down from below the stack.
    addr = 0x7F0000000000 + rng.randrange(0, 1 << 20) * PMD_SIZE
    mappings = rng.randrange(3, 24)
    for _ in range(mappings):
        kind = rng.random()
        if kind < 0.45:  # a shared library: text, rodata, data
            for median, flags, present, dirty in (
                (60, '["exec"]', 0.6, 0.0),
                (8, "[]", 0.8, 0.0),
                (4, "[]", 1.0, 0.3),
            ):
                n = take(median)
                if n:
                    addr -= n * PAGE
                    vmas.append(_VmaPlan(addr, addr + n * PAGE, flags, present, dirty))
        elif kind < 0.85:  # anonymous memory (malloc arenas, JIT heaps)
            n = take(2000)
            if n:
                addr = (addr - n * PAGE) // PMD_SIZE * PMD_SIZE
                vmas.append(_VmaPlan(addr, addr + n * PAGE, "[]", 0.9, thp=0.08))
        elif kind < 0.98:  # a shared file mapping, partly dirty
            n = take(300)
            if n:
                addr -= n * PAGE
                vmas.append(_VmaPlan(addr, addr + n * PAGE, "[]", 0.7, dirty_shared=0.2))
        else:  # a device mapping: PTEs without struct pages
            n = take(16)
            if n:
                addr -= n * PAGE
                vmas.append(_VmaPlan(addr, addr + n * PAGE, '["pfnmap"]', 1.0, pfnmap=True))
        addr -= rng.randrange(1, 16) * PAGE  # a guard gap
    # The stack.
    n = take(30)
    if n:
        top = 0x7FFC00000000 + rng.randrange(0, 1 << 24) * PAGE
        vmas.append(_VmaPlan(top - n * PAGE, top, "[]", 0.8))
    vmas.sort(key=lambda v: v.start)
    return vmas


def _munmap_vmas(rng: random.Random, page_budget: int) -> list[_VmaPlan]:
    """One to three adjacent VMAs inside the munmap() range."""
    addr = 0x7F0000000000 + rng.randrange(0, 1 << 20) * PMD_SIZE
    if rng.random() < 0.5:
        addr += rng.randrange(0, 512) * PAGE
    vmas: list[_VmaPlan] = []
    budget = page_budget
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        n = min(budget, _pages(rng, 400, 1 << 15))
        if n <= 0:
            break
        budget -= n
        kind = rng.random()
        if kind < 0.7:
            vma = _VmaPlan(addr, addr + n * PAGE, "[]", 0.9, thp=0.1)
        elif kind < 0.9:
            vma = _VmaPlan(addr, addr + n * PAGE, "[]", 0.8, dirty_shared=0.25)
        else:
            vma = _VmaPlan(addr, addr + n * PAGE, '["exec"]', 0.6)
        vmas.append(vma)
        addr += n * PAGE
    return vmas


def _flow(rng: random.Random, state: _GenState, page_budget: int) -> list[bytes]:
    """One gather: an exit_mmap() or a munmap()."""
    writer = _FlowWriter(rng, state)
    fullmm = rng.random() < 0.3
    if fullmm:
        vmas = _exit_vmas(rng, page_budget)
        writer.lines.append(b'{"op":"tlb_gather_mmu","fullmm":true}\n')
    else:
        vmas = _munmap_vmas(rng, page_budget)
        writer.lines.append(b'{"op":"tlb_gather_mmu"}\n')
    for vma in vmas:
        writer.zap_vma(vma)
    writer.free_pgtables(vmas, whole=fullmm)
    writer.finish(nested=not fullmm and rng.random() < 0.01)
    return writer.lines


def generate_ops(n: int, seed: int = 0) -> Iterator[bytes]:
    """Yield the lines (each ending in a newline) of a replay-v1 file of
    exactly ``n`` ops, after a comment line.

    Gathers follow exit_mmap() (fullmm) and munmap(); each present PTE gives
    ``tlb_remove_tlb_entry``, ``tlb_batch_rmap``, ``__tlb_remove_page_size``,
    so pages make up about nine ops in ten.  The queue is counted as on
    generic-smp and flushed when ``__tlb_remove_page_size`` would return
    true, so the file replays without a ``bug`` on every contract arch.  Ops
    left over after the last whole flow are ``rcu_grace_period``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    state = _GenState(rng)
    yield b"# mmugather bench: %d ops, seed %d (replay-v1)\n" % (n, seed)
    left = n
    while left >= _MIN_FLOW_OPS:
        # Three ops per page, plus the per-VMA and per-table ops.
        budget = max(1, min(left // 4, 60_000))
        while True:
            lines = _flow(rng, state, budget)
            if len(lines) <= left:
                break
            budget //= 2
        left -= len(lines)
        yield from lines
    for _ in range(left):
        yield b'{"op":"rcu_grace_period"}\n'


def write_ops(path: str, n: int, seed: int = 0) -> None:
    with open(path, "wb") as f:
        f.writelines(generate_ops(n, seed))


def write_default_json(compact: str, path: str) -> None:
    """Rewrite the replay file ``compact`` as Python's default ``json.dumps``
    writes each object (a blank after ``:`` and ``,``); comments stay."""
    with open(compact, "rb") as f, open(path, "w", encoding="utf-8") as out:
        for line in f:
            if line.startswith(b"#") or not line.strip():
                out.write(line.decode())
            else:
                out.write(json.dumps(json.loads(line)) + "\n")
