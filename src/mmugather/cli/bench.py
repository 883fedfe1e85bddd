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
from typing import IO, Any

import attrs

from mmugather.core.constants import Geometry
from mmugather.core.events import Emit

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


@attrs.frozen
class Timing:
    """The best of several runs: wall-clock and CPU seconds (each its own best)."""

    wall: float
    cpu: float


@attrs.define(slots=True)
class BenchResult:
    ops: int
    seed: int
    arch: str
    repeat: int
    events: int
    pages: int
    gathers: int
    parse: Timing
    replay_off: Timing
    replay_events: Timing
    structlog: Timing
    #: structlog's stock path (filtering bound logger, JSONRenderer), for reference
    structlog_stock: Timing
    #: ``mmugather replay FILE --events /dev/null`` as a whole (start-up included)
    command: Timing | None = None
    date: str = ""
    machine: dict[str, str] = attrs.Factory(dict)

    @property
    def ratio(self) -> float:
        """The events run over structlog alone: target (b)."""
        return self.replay_events.wall / self.structlog.wall

    def ops_per_s(self, seconds: float) -> float:
        return self.ops / seconds if seconds else float("inf")


Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def _best(repeat: int, label: str, progress: Progress, once: Callable[[], Timing]) -> Timing:
    walls: list[float] = []
    cpus: list[float] = []
    for i in range(repeat):
        progress(f"{label} ({i + 1}/{repeat})")
        t = once()
        walls.append(t.wall)
        cpus.append(t.cpu)
    return Timing(min(walls), min(cpus))


def _timed(work: Callable[[], object]) -> Timing:
    gc.collect()  # start each run with no garbage left by the previous one
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


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


class _LineLogger:
    """A logger writing each rendered event and a newline: what structlog's
    stock path needs after a plain JSON renderer."""

    __slots__ = ("_write",)

    def __init__(self, file: IO[bytes]) -> None:
        self._write = file.write

    def info(self, message: bytes) -> None:
        self._write(message + b"\n")


def stock_structlog_emit(file: IO[bytes]) -> Emit:
    """structlog's stock path to the same JSON Lines: a filtering bound
    logger, ``JSONRenderer(serializer=orjson.dumps)``, a line-writing logger.
    The reference that :func:`mmugather.core.events.make_emit` is measured
    against; it writes the same bytes."""
    import orjson
    import structlog

    bound = structlog.wrap_logger(
        _LineLogger(file),
        processors=[structlog.processors.JSONRenderer(serializer=orjson.dumps)],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )
    return bound.info  # type: ignore[no-any-return]


def collect_events(compiled: list[Any], machine: Any) -> list[tuple[str, dict[str, Any]]]:
    """Replay ``compiled`` on ``machine`` (built without ``emit``) and keep
    every event as ``(name, fields)``, in order."""
    from mmugather.core.events import Collector, make_emit
    from mmugather.core.replay import run

    collector = Collector()
    machine.emit = make_emit(observers=[collector])
    run(compiled, machine)
    events: list[tuple[str, dict[str, Any]]] = []
    for event in collector.events:
        name = event.pop("event")
        events.append((name, event))
    return events


def run_bench(
    ops: int = 1_000_000,
    arch: str = "generic-smp",
    repeat: int = 3,
    seed: int = 1,
    progress: Progress = _stderr_progress,
    workdir: str | None = None,
    command: bool = True,
) -> BenchResult:
    """Generate the file, then time each step; every figure is the best of
    ``repeat`` runs.  ``command``: also time the whole ``mmugather replay``
    command in a subprocess."""
    from mmugather.core.arch import make_machine, registry
    from mmugather.core.events import make_emit
    from mmugather.core.replay import C_GATHER, C_QUEUE, C_REMOVE_PAGE, parse_file, run

    spec = registry().get(arch)
    page_size = spec.page_sizes[0]
    repeat = max(1, repeat)
    command_timing: Timing | None = None
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, f"bench-{ops}-{seed}.ops.jsonl")
        progress(f"generating {ops:,} ops (seed {seed})")
        write_ops(path, ops, seed)
        parse = _best(
            repeat,
            "parse + validate",
            progress,
            lambda: _timed(lambda: parse_file(path, page_size)),
        )
        compiled = parse_file(path, page_size)
        if command:
            command_timing = _best(
                repeat,
                "mmugather replay (whole command)",
                progress,
                lambda: _time_command(path, arch),
            )

    pages = sum(1 for op in compiled if op[1] in (C_QUEUE, C_REMOVE_PAGE))
    gathers = sum(1 for op in compiled if op[1] == C_GATHER)

    def replay_once(emit: Emit | None) -> Timing:
        machine = make_machine(spec, page_size=page_size, emit=emit)
        result: list[Any] = []
        timing = _timed(lambda: result.append(run(compiled, machine)))
        if result[0].bug is not None:
            raise RuntimeError(f"the generated file hit a VM_BUG_ON at line {result[0].bug_line}")
        return timing

    replay_off = _best(repeat, "replay, events off", progress, lambda: replay_once(None))

    def replay_devnull() -> Timing:
        with open(os.devnull, "wb") as out:
            return replay_once(make_emit(file=out))

    replay_events = _best(repeat, "replay, events to /dev/null", progress, replay_devnull)

    progress("collecting the events")
    events = collect_events(compiled, make_machine(spec, page_size=page_size))

    def emit_all(make: Callable[[IO[bytes]], Emit | None]) -> Timing:
        with open(os.devnull, "wb") as out:
            emit = make(out)
            assert emit is not None

            def loop() -> None:
                for name, fields in events:
                    emit(name, **fields)

            return _timed(loop)

    structlog_alone = _best(
        repeat,
        "structlog alone, the same events",
        progress,
        lambda: emit_all(lambda out: make_emit(file=out)),
    )
    structlog_stock = _best(
        repeat,
        "structlog stock path, the same events",
        progress,
        lambda: emit_all(stock_structlog_emit),
    )
    result = BenchResult(
        ops=len(compiled),
        seed=seed,
        arch=arch,
        repeat=repeat,
        events=len(events),
        pages=pages,
        gathers=gathers,
        parse=parse,
        replay_off=replay_off,
        replay_events=replay_events,
        structlog=structlog_alone,
        structlog_stock=structlog_stock,
        command=command_timing,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
    )
    return result


def _time_command(path: str, arch: str) -> Timing:
    """``python -m mmugather replay PATH --arch ARCH --events /dev/null``:
    wall-clock, and the child's CPU time."""
    import resource
    import subprocess

    argv = [sys.executable, "-m", "mmugather", "replay", path, "--arch", arch]
    argv += ["--events", os.devnull]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds else "-"


def format_report(r: BenchResult) -> str:
    """The figures as Markdown (also readable as plain text)."""
    rows: list[tuple[str, Timing, str, str]] = [
        ("parse + validate (`parse_file`)", r.parse, _rate(r.ops, r.parse.wall), "-"),
        ("replay, events off (`run`)", r.replay_off, _rate(r.ops, r.replay_off.wall), "-"),
        (
            "replay, events to /dev/null as JSON Lines (`run`)",
            r.replay_events,
            _rate(r.ops, r.replay_events.wall),
            _rate(r.events, r.replay_events.wall),
        ),
        (
            "structlog alone: the same events through `make_emit(file=...)`",
            r.structlog,
            "-",
            _rate(r.events, r.structlog.wall),
        ),
        (
            "for reference: the same events through structlog's stock path",
            r.structlog_stock,
            "-",
            _rate(r.events, r.structlog_stock.wall),
        ),
    ]
    if r.command is not None:
        rows.append(
            (
                "whole command: `mmugather replay FILE --events /dev/null`",
                r.command,
                _rate(r.ops, r.command.wall),
                _rate(r.events, r.command.wall),
            )
        )

    def met(ok: bool) -> str:
        return "yes" if ok else "no"

    events_ops = r.ops_per_s(r.replay_events.wall)
    targets = [
        f"| (a) at least {TARGET_OPS_PER_S:,} ops/s with events to /dev/null: the replay "
        f"(`run`, the file parsed) | {events_ops:,.0f} ops/s | "
        f"{met(events_ops >= TARGET_OPS_PER_S)} |",
    ]
    if r.command is not None:
        command_ops = r.ops_per_s(r.command.wall)
        targets.append(
            "| (a) the same, read as the whole command (start-up, parse and replay) | "
            f"{command_ops:,.0f} ops/s | {met(command_ops >= TARGET_OPS_PER_S)} |"
        )
    targets.append(
        f"| (b) the events run at most {TARGET_RATIO}x structlog alone | {r.ratio:.2f}x "
        f"(CPU: {r.replay_events.cpu / r.structlog.cpu:.2f}x; against structlog's stock "
        f"path: {r.replay_events.wall / r.structlog_stock.wall:.2f}x) | "
        f"{met(r.ratio <= TARGET_RATIO)} |"
    )
    lines = [
        f"Input: {r.ops:,} ops generated with seed {r.seed}: {r.gathers:,} gathers, "
        f"{r.pages:,} pages queued; replayed on `{r.arch}`, {r.events:,} events "
        f"({r.events / max(r.pages, 1):.2f} per page). Each figure is the best of {r.repeat} "
        "runs; ops/s and events/s are from the wall-clock time.",
        "",
        "| step | wall (s) | CPU (s) | ops/s | events/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {t.wall:.3f} | {t.cpu:.3f} | {ops} | {ev} |" for name, t, ops, ev in rows
    ]
    lines += [
        "",
        "| target | figure | met |",
        "| --- | --- | --- |",
        *targets,
        "",
        f"Measured {r.date}: {r.machine.get('python', '?')} on {r.machine.get('platform', '?')}; "
        f"CPU: {r.machine.get('cpu', '?')}; {r.machine.get('libraries', '?')}.",
    ]
    return "\n".join(lines) + "\n"


def write_section(
    path: str, body: str, start_mark: str = START_MARK, end_mark: str = END_MARK
) -> None:
    """Put ``body`` between the markers in the Markdown file ``path``: replace
    the marked section if there is one, else append it; the rest stays."""
    START_MARK, END_MARK = start_mark, end_mark
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
    from mmugather.cli.common import atomic_output

    with atomic_output(path, text=True) as f:
        f.write(text)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from mmugather.cli.common import CliError, check_output, echo
    from mmugather.cli.progress import Progress as Bar
    from mmugather.core.arch import ArchError, registry

    if args.ops < 1 or args.repeat < 1:
        raise CliError("--ops and --repeat must be at least 1")
    try:
        registry().get(args.arch)
    except ArchError as exc:
        raise CliError(str(exc)) from None
    if args.output:
        # Refused now, not after minutes of measuring.
        check_output(args.output)
        if os.path.exists(args.output) and not os.access(args.output, os.R_OK):
            raise CliError(f"{args.output}: cannot read it to keep the rest of the file")
    with Bar("bench", delay=0) as bar:
        if args.teardown:
            from mmugather.cli.bench_teardown import format_teardown, run_teardown_bench

            rows = run_teardown_bench(arch=args.arch, repeat=args.repeat,
                                      progress=lambda m: bar.describe(f"bench: {m}"))
            text = format_teardown(rows, args.arch, args.repeat)
        else:
            result = run_bench(ops=args.ops, arch=args.arch, repeat=args.repeat, seed=args.seed,
                               progress=lambda m: bar.describe(f"bench: {m}"))
            text = format_report(result)
    echo(text.rstrip("\n"))
    if args.output:
        marks = (("<!-- bench:teardown:start -->", "<!-- bench:teardown:end -->")
                 if args.teardown else (START_MARK, END_MARK))
        write_section(args.output, text, *marks)
        sys.stderr.write(f"bench: figures written to {args.output}\n")
    return 0


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``mmugather bench`` to the command's subparsers."""
    bp: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="time the replay on a generated, kernel-shaped replay file",
        description="Generate a replay-v1 file of exit and munmap flows, then time: parsing "
        "and validating it, replaying it with events off, replaying it with the events to "
        "/dev/null, structlog alone writing the same events (the events overhead ratio), "
        "structlog's stock path (for reference) and the whole 'mmugather replay' command. "
        "Each figure is the best of --repeat runs; progress goes to stderr when it is a "
        "terminal. Exit status: 0; 2 when an option was rejected (--output is checked "
        "before anything is measured) or the output could not be written; 130 on Ctrl-C "
        "(--output untouched).",
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
    bp.add_argument(
        "--teardown",
        action="store_true",
        help="instead: time the exit of address spaces of 1M, 4M and 16M mapped PTEs "
        "through the callers, checker off and on, with peak memory (each in a fresh process)",
    )
    bp.set_defaults(func=cmd_bench)
    return bp


def main(argv: list[str] | None = None) -> int:
    """``python -m mmugather.cli.bench``: the ``bench`` command on its own."""
    parser = argparse.ArgumentParser(prog="python -m mmugather.cli.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    from mmugather.cli.common import run_command

    return run_command(args.func, args, process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
