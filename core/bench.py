"""The replay benchmark: a generated, kernel-shaped replay file, timed.

:func:`generate_ops` writes a valid replay-v1 file that calls the gather the
way the kernel's teardown paths do (``exit_mmap()`` and ``munmap()``:
``unmap_vmas()`` then ``free_pgtables()``), deterministic from a seed.
:func:`run_bench` times, each as the best of ``repeat`` runs:

* parsing and validating the file (``parse_file``);
* replaying it with events off;
* replaying it with the events written as JSON Lines to ``/dev/null``;
* structlog alone writing the same events through the same processor chain
  and logger (``make_emit(file=...)``), from a list collected beforehand.

The last two give the events overhead ratio.  ``mmugather bench`` prints the
figures and can keep them in a marked section of a Markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from mmugather.core.constants import Geometry

#: The marked section of the Markdown file that ``--output`` rewrites.
START_MARK = "<!-- bench:replay:start -->"
END_MARK = "<!-- bench:replay:end -->"

#: The issue's targets: ops per second with events to /dev/null, and the
#: events run's time over structlog's time alone.
TARGET_OPS_PER_S = 1_000_000
TARGET_RATIO = 1.5

_GEO = Geometry()
PAGE = _GEO.page_size
PMD_SIZE = _GEO.pmd_size
PUD_SIZE = _GEO.pud_size
P4D_SIZE = _GEO.p4d_size
#: Pages queued before __tlb_remove_page_size() returns true (9,698 at 4K).
QUEUE_CAPACITY = _GEO.queue_capacity

#: Smallest op budget worth a whole flow; smaller rests are grace periods.
_MIN_FLOW_OPS = 48


# --------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


@attrs.define(slots=True)
class BenchResult:
    ops: int
    seed: int
    arch: str
    repeat: int
    events: int
    pages: int
    gathers: int
    parse_s: float
    replay_off_s: float
    replay_events_s: float
    structlog_s: float
    date: str = ""
    machine: dict[str, str] = attrs.Factory(dict)

    @property
    def ratio(self) -> float:
        return self.replay_events_s / self.structlog_s if self.structlog_s else float("inf")

    def ops_per_s(self, seconds: float) -> float:
        return self.ops / seconds if seconds else float("inf")


Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def _best(repeat: int, label: str, progress: Progress, once: Callable[[], float]) -> float:
    best = float("inf")
    for i in range(repeat):
        progress(f"{label} ({i + 1}/{repeat})")
        best = min(best, once())
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs, one used)",
        "libraries": f"structlog {ver('structlog')}, orjson {ver('orjson')}, "
        f"pluggy {ver('pluggy')}, attrs {ver('attrs')}",
    }


def run_bench(
    ops: int = 1_000_000,
    arch: str = "generic-smp",
    repeat: int = 3,
    seed: int = 1,
    progress: Progress = _stderr_progress,
    workdir: str | None = None,
) -> BenchResult:
    """Generate the file, then time each step; every figure is the best of
    ``repeat`` runs."""
    from mmugather.core.arch import make_machine, registry
    from mmugather.core.events import Collector, make_emit
    from mmugather.core.replay import C_GATHER, C_QUEUE, C_REMOVE_PAGE, parse_file, run

    spec = registry().get(arch)
    page_size = spec.page_sizes[0]
    repeat = max(1, repeat)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, f"bench-{ops}-{seed}.ops.jsonl")
        progress(f"generating {ops:,} ops (seed {seed})")
        write_ops(path, ops, seed)

        def parse_once() -> float:
            t0 = time.perf_counter()
            parse_file(path, page_size)
            return time.perf_counter() - t0

        parse_s = _best(repeat, "parse + validate", progress, parse_once)
        compiled = parse_file(path, page_size)

    pages = sum(1 for op in compiled if op[1] in (C_QUEUE, C_REMOVE_PAGE))
    gathers = sum(1 for op in compiled if op[1] == C_GATHER)

    def replay_once(emit: Any) -> float:
        machine = make_machine(spec, page_size=page_size, emit=emit)
        t0 = time.perf_counter()
        result = run(compiled, machine)
        elapsed = time.perf_counter() - t0
        if result.bug is not None:
            raise RuntimeError(f"generated file hit a VM_BUG_ON at line {result.bug_line}")
        return elapsed

    replay_off_s = _best(repeat, "replay, events off", progress, lambda: replay_once(None))

    def replay_devnull() -> float:
        with open(os.devnull, "wb") as out:
            return replay_once(make_emit(file=out))

    replay_events_s = _best(repeat, "replay, events to /dev/null", progress, replay_devnull)

    progress("collecting the events")
    collector = Collector()
    replay_once(make_emit(observers=[collector]))
    events: list[tuple[str, dict[str, Any]]] = []
    for event in collector.events:
        name = event.pop("event")
        events.append((name, event))
    del collector

    def structlog_once() -> float:
        with open(os.devnull, "wb") as out:
            emit = make_emit(file=out)
            assert emit is not None
            t0 = time.perf_counter()
            for name, fields in events:
                emit(name, **fields)
            return time.perf_counter() - t0

    structlog_s = _best(repeat, "structlog alone, same events", progress, structlog_once)
    gc.collect()
    return BenchResult(
        ops=len(compiled),
        seed=seed,
        arch=arch,
        repeat=repeat,
        events=len(events),
        pages=pages,
        gathers=gathers,
        parse_s=parse_s,
        replay_off_s=replay_off_s,
        replay_events_s=replay_events_s,
        structlog_s=structlog_s,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
    )


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds else "-"


def format_report(r: BenchResult) -> str:
    """The figures as Markdown (also readable as plain text)."""
    rows = [
        ("parse + validate", r.parse_s, _rate(r.ops, r.parse_s), "-"),
        ("replay, events off", r.replay_off_s, _rate(r.ops, r.replay_off_s), "-"),
        (
            "replay, events to /dev/null (JSON)",
            r.replay_events_s,
            _rate(r.ops, r.replay_events_s),
            _rate(r.events, r.replay_events_s),
        ),
        (
            "structlog alone, the same events to /dev/null",
            r.structlog_s,
            "-",
            _rate(r.events, r.structlog_s),
        ),
    ]
    events_ops = r.ops_per_s(r.replay_events_s)
    met_a = events_ops >= TARGET_OPS_PER_S
    met_b = r.ratio <= TARGET_RATIO
    lines = [
        f"Input: {r.ops:,} ops generated with seed {r.seed} ({r.pages:,} pages queued in "
        f"{r.gathers:,} gathers), replayed on `{r.arch}`; {r.events:,} events "
        f"({r.events / r.pages:.2f} per page). Each figure is the best of {r.repeat}.",
        "",
        "| step | time (s) | ops/s | events/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {t:.3f} | {ops} | {ev} |" for name, t, ops, ev in rows]
    lines += [
        "",
        "| target | figure | met |",
        "| --- | --- | --- |",
        f"| (a) replay with events to /dev/null: at least {TARGET_OPS_PER_S:,} ops/s | "
        f"{events_ops:,.0f} ops/s (events off: {r.ops_per_s(r.replay_off_s):,.0f}) | "
        f"{'yes' if met_a else 'no'} |",
        f"| (b) events run at most {TARGET_RATIO}x structlog alone | {r.ratio:.2f}x | "
        f"{'yes' if met_b else 'no'} |",
        "",
        f"Measured {r.date}: {r.machine.get('python', '?')} on {r.machine.get('platform', '?')}; "
        f"CPU: {r.machine.get('cpu', '?')}; {r.machine.get('libraries', '?')}.",
    ]
    return "\n".join(lines) + "\n"


def write_section(path: str, body: str) -> None:
    """Put ``body`` between the markers in the Markdown file ``path``: replace
    the marked section if there is one, else append it; the rest stays."""
    section = f"{START_MARK}\n{body.rstrip()}\n{END_MARK}\n"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    pattern = re.compile(re.escape(START_MARK) + r".*?" + re.escape(END_MARK) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        text += ("\n" if text else "") + section
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError

    if args.ops < 1 or args.repeat < 1:
        sys.stderr.write("mmugather: --ops and --repeat must be at least 1\n")
        return 2
    try:
        result = run_bench(ops=args.ops, arch=args.arch, repeat=args.repeat, seed=args.seed)
    except ArchError as exc:
        sys.stderr.write(f"mmugather: {exc}\n")
        return 2
    report = format_report(result)
    sys.stdout.write(report)
    if args.output:
        write_section(args.output, report)
        sys.stderr.write(f"bench: figures written to {args.output}\n")
    return 0


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``mmugather bench`` to the command's subparsers."""
    bp: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="time the replay on a generated, kernel-shaped replay file",
        description="Generate a replay-v1 file of exit and munmap flows, then time: parsing "
        "and validating it, replaying it with events off, replaying it with the events to "
        "/dev/null, and structlog alone writing the same events (the events overhead "
        "ratio). Each figure is the best of --repeat runs; progress goes to stderr.",
    )
    bp.add_argument("--ops", type=int, default=1_000_000, metavar="N", help="ops (1,000,000)")
    bp.add_argument("--arch", default="generic-smp", help="arch configuration (generic-smp)")
    bp.add_argument("--repeat", type=int, default=3, metavar="K", help="best of K runs (3)")
    bp.add_argument("--seed", type=int, default=1, help="generator seed (1)")
    bp.add_argument(
        "--output",
        metavar="MD",
        help="also write the figures into this Markdown file, between "
        f"{START_MARK} and {END_MARK} (the rest of the file is kept)",
    )
    bp.set_defaults(func=cmd_bench)
    return bp
