"""Replay format v1: recorded mmu_gather calls in, kernel effects out.

A replay file is JSON Lines, one call per line (``docs/replay.md``, the
contract).  The whole file is parsed and validated first and compiled to a
list of tuples (:mod:`mmugather.core.replay_input`); only then does anything
run, here, so bad input writes nothing.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import IO, Any, NoReturn

import attrs
from mmugather.core.events import Emit, raw_write, render
from mmugather.core.gather import (
    GatherError,
    KernelBug,
    MmuGather,
    tlb_gather_mmu,
    tlb_gather_mmu_fullmm,
)
from mmugather.core.mm import Machine, MmStruct
from mmugather.core.replay_input import (
    ADDR,
    ANYWHERE,
    BIT,
    BOOL,
    C_BATCH_RMAP,
    C_CHANGE_SIZE,
    C_DISCARD,
    C_END_VMA,
    C_ENTRY,
    C_FAIL,
    C_FINISH,
    C_FLUSH,
    C_FLUSH_RMAPS,
    C_FREE_P4D,
    C_FREE_PMD,
    C_FREE_PTE,
    C_FREE_PUD,
    C_GATHER,
    C_HUGE_ENTRY,
    C_PMD_ENTRY,
    C_PUD_ENTRY,
    C_QUEUE,
    C_RCU,
    C_REMOVE_PAGE,
    C_START_VMA,
    C_TLBONLY,
    CODES,
    COUNT,
    FLAGS,
    HUGE_SIZE,
    ID,
    OPS,
    SIZE,
    TABLE,
    WHAT,
    Compiled,
    Op,
    Program,
    ReplayError,
    parse,
    parse_file,
    parse_line,
)

__all__ = [
    "ADDR", "ANYWHERE", "BIT", "BOOL", "CODES", "COUNT", "C_BATCH_RMAP", "C_CHANGE_SIZE",
    "C_DISCARD", "C_END_VMA", "C_ENTRY", "C_FAIL", "C_FINISH", "C_FLUSH", "C_FLUSH_RMAPS",
    "C_FREE_P4D", "C_FREE_PMD", "C_FREE_PTE", "C_FREE_PUD", "C_GATHER", "C_HUGE_ENTRY",
    "C_PMD_ENTRY", "C_PUD_ENTRY", "C_QUEUE", "C_RCU", "C_REMOVE_PAGE", "C_START_VMA",
    "C_TLBONLY", "FLAGS", "HUGE_SIZE", "ID", "OPS", "SIZE", "TABLE", "WHAT", "Compiled", "Op",
    "Program", "ReplayError", "ReplayResult", "parse", "parse_file", "parse_line", "replay_file",
    "run", "write_events_to",
]


@attrs.define(slots=True)
class ReplayResult:
    ops: int
    bug: str | None = None
    bug_line: int | None = None


def run(compiled: Iterable[Compiled], machine: Machine, *, check: bool = False) -> ReplayResult:
    """Replay compiled ops (a :class:`Program`, or :data:`Compiled` tuples)
    on ``machine``; stops at a VM_BUG_ON.

    With ``check``, entry clears and table frees are reported as the callers'
    ``pte_clear``/``table_unhook`` events, for the invariant checker.
    """
    if check:
        return _run_checked(compiled, machine)
    program = Program.of(compiled)
    mm = MmStruct()
    emit: Emit | None = machine.emit
    # Written straight to a direct JSON Lines log: the ``return`` lines of
    # the two per-page queries, rendered once, indexed by the value.
    write = raw_write(emit)
    queue_lines = _return_lines("__tlb_remove_page_size") if write is not None else None
    query_lines = _return_lines("tlb_batch_rmap") if write is not None else None
    tlb: MmuGather | None = None
    # The open gather's per-page entry points, looked up once per gather
    # (parse() puts every per-page op inside a gather).
    entry: Callable[[int], None] = _outside_gather
    remove: Callable[[int, int, int], bool] = _outside_gather
    done = 0
    # What exists before the run (the program above all) is not the
    # collector's business while it runs: the run's own objects are freed
    # by reference counting.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        for code, op, a, b, c in program.ops:
            if code == C_ENTRY:
                entry(a)
            elif code == C_QUEUE:
                full = remove(a, b, c)
                if write is not None and (full is False or full is True):
                    write(queue_lines[full])  # type: ignore[index]
                elif emit is not None:
                    emit("return", op=op, value=full)
            elif code == C_BATCH_RMAP:
                # Outside a gather, ask the arch the way a fresh gather would.
                value = tlb.batch_rmap if tlb is not None else _batch_rmap(machine, mm)
                if write is not None and (value is False or value is True):
                    write(query_lines[value])  # type: ignore[index]
                elif emit is not None:
                    emit("return", op=op, value=value)
            elif code == C_FLUSH_RMAPS:
                tlb.tlb_flush_rmaps(a)  # type: ignore[union-attr]
            elif code == C_DISCARD:
                tlb.tlb_discard_rmaps()  # type: ignore[union-attr]
            elif code == C_CHANGE_SIZE:
                tlb.tlb_change_page_size(a)  # type: ignore[union-attr]
            elif code == C_REMOVE_PAGE:
                tlb.tlb_remove_page_size(a, b)  # type: ignore[union-attr]
            elif code == C_TLBONLY:
                tlb.tlb_flush_mmu_tlbonly()  # type: ignore[union-attr]
            elif code == C_FLUSH:
                tlb.tlb_flush_mmu()  # type: ignore[union-attr]
            elif code == C_PMD_ENTRY:
                tlb.tlb_remove_pmd_tlb_entry(a)  # type: ignore[union-attr]
            elif code == C_PUD_ENTRY:
                tlb.tlb_remove_pud_tlb_entry(a)  # type: ignore[union-attr]
            elif code == C_HUGE_ENTRY:
                tlb.tlb_remove_huge_tlb_entry(a, b)  # type: ignore[union-attr]
            elif code == C_START_VMA:
                tlb.tlb_start_vma(a)  # type: ignore[union-attr]
            elif code == C_END_VMA:
                tlb.tlb_end_vma(a)  # type: ignore[union-attr]
            elif code == C_FREE_PTE:
                tlb.pte_free_tlb(a, b)  # type: ignore[union-attr]
            elif code == C_FREE_PMD:
                tlb.pmd_free_tlb(a, b)  # type: ignore[union-attr]
            elif code == C_FREE_PUD:
                tlb.pud_free_tlb(a, b)  # type: ignore[union-attr]
            elif code == C_FREE_P4D:
                tlb.p4d_free_tlb(a, b)  # type: ignore[union-attr]
            elif code == C_GATHER:
                tlb = tlb_gather_mmu_fullmm(machine, mm) if a else tlb_gather_mmu(machine, mm)
                entry, remove = tlb.tlb_remove_tlb_entry, tlb.remove_page
            elif code == C_FINISH:
                tlb.tlb_finish_mmu(a)  # type: ignore[union-attr]
                tlb = None
                entry = remove = _outside_gather
            elif code == C_RCU:
                machine.rcu_grace_period()
            elif code == C_FAIL:
                machine.fail_alloc(a, b)
            done += 1
    except KernelBug as bug:
        return ReplayResult(ops=done, bug=bug.what, bug_line=program.line(done))
    finally:
        if freeze:
            gc.unfreeze()
    return ReplayResult(ops=done)


def _return_lines(op: str) -> tuple[bytes, bytes]:
    """The JSON lines of ``return`` events of ``op`` with value false, true:
    what ``emit("return", op=op, value=...)`` writes."""
    return tuple(  # type: ignore[return-value]
        render({"op": op, "value": value, "event": "return"}) for value in (False, True)
    )


def _outside_gather(*args: Any) -> NoReturn:
    raise GatherError("a per-page op outside a gather")


def _batch_rmap(machine: Machine, mm: MmStruct) -> bool:
    # A throw-away gather: the answer is a property of the configuration.
    probe = MmuGather(machine, mm)
    return bool(machine.hook.tlb_batch_rmap(tlb=probe))


def replay_file(path: str, machine: Machine) -> ReplayResult:
    return run(parse_file(path, machine.geometry.page_size), machine)


def write_events_to(path: str | None) -> tuple[IO[bytes], bool]:
    """Open the event output: stdout when path is None or "-"."""
    import sys

    if path is None or path == "-":
        return sys.stdout.buffer, False
    return open(path, "wb", buffering=1 << 20), True


_CLEAR_LEVEL = {C_ENTRY: "pte", C_PMD_ENTRY: "pmd", C_PUD_ENTRY: "pud", C_HUGE_ENTRY: "huge"}
_FREE_LEVEL = {C_FREE_PTE: "pte", C_FREE_PMD: "pmd", C_FREE_PUD: "pud", C_FREE_P4D: "p4d"}


def _run_checked(compiled: Iterable[Compiled], machine: Machine) -> ReplayResult:
    """The replay with the callers' events the checker needs added: a slower
    loop, kept apart so that the plain replay stays lean."""
    emit = machine.emit
    geo = machine.geometry
    sizes = {C_ENTRY: geo.page_size, C_PMD_ENTRY: geo.pmd_size, C_PUD_ENTRY: geo.pud_size}
    out: list[tuple[Compiled, tuple[str, dict[str, Any]] | None]] = []
    for item in compiled:
        code = item[1]
        note: tuple[str, dict[str, Any]] | None = None
        if code in _CLEAR_LEVEL:
            size = item[4] if code == C_HUGE_ENTRY else sizes[code]
            note = ("pte_clear", {"addr": item[3], "page": None, "level": _CLEAR_LEVEL[code],
                                  "size": size})
        elif code in _FREE_LEVEL:
            note = ("table_unhook", {"table": item[3], "level": _FREE_LEVEL[code],
                                     "addr": item[4]})
        out.append((item, note))
    done = 0
    # One op at a time through the plain loop keeps the semantics identical.
    state = _Stepper(machine)
    for item, note in out:
        if note is not None and emit is not None:
            emit(note[0], **note[1])
        result = state.step(item)
        if result is not None:
            return ReplayResult(ops=done, bug=result, bug_line=item[0])
        done += 1
    return ReplayResult(ops=done)


class _Stepper:
    """Runs compiled ops one at a time, keeping the gather between calls."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.mm = MmStruct()
        self.tlb: MmuGather | None = None

    def step(self, item: Compiled) -> str | None:
        _line, code, op, a, b, c = item
        machine = self.machine
        emit = machine.emit
        tlb = self.tlb
        try:
            if code == C_GATHER:
                self.tlb = (tlb_gather_mmu_fullmm if a else tlb_gather_mmu)(machine, self.mm)
            elif code == C_FINISH:
                tlb.tlb_finish_mmu(a)  # type: ignore[union-attr]
                self.tlb = None
            elif code == C_RCU:
                machine.rcu_grace_period()
            elif code == C_FAIL:
                machine.fail_alloc(a, b)
            elif code == C_BATCH_RMAP:
                value = tlb.batch_rmap if tlb is not None else _batch_rmap(machine, self.mm)
                if emit is not None:
                    emit("return", op=op, value=value)
            elif code == C_QUEUE:
                full = tlb.remove_page(a, b, c)  # type: ignore[union-attr]
                if emit is not None:
                    emit("return", op=op, value=full)
            else:
                _STEP[code](tlb, a, b)
        except KernelBug as bug:
            return bug.what
        return None


_STEP: dict[int, Callable[[Any, Any, Any], None]] = {
    C_ENTRY: lambda t, a, b: t.tlb_remove_tlb_entry(a),
    C_PMD_ENTRY: lambda t, a, b: t.tlb_remove_pmd_tlb_entry(a),
    C_PUD_ENTRY: lambda t, a, b: t.tlb_remove_pud_tlb_entry(a),
    C_HUGE_ENTRY: lambda t, a, b: t.tlb_remove_huge_tlb_entry(a, b),
    C_FLUSH_RMAPS: lambda t, a, b: t.tlb_flush_rmaps(a),
    C_DISCARD: lambda t, a, b: t.tlb_discard_rmaps(),
    C_CHANGE_SIZE: lambda t, a, b: t.tlb_change_page_size(a),
    C_REMOVE_PAGE: lambda t, a, b: t.tlb_remove_page_size(a, b),
    C_TLBONLY: lambda t, a, b: t.tlb_flush_mmu_tlbonly(),
    C_FLUSH: lambda t, a, b: t.tlb_flush_mmu(),
    C_START_VMA: lambda t, a, b: t.tlb_start_vma(a),
    C_END_VMA: lambda t, a, b: t.tlb_end_vma(a),
    C_FREE_PTE: lambda t, a, b: t.pte_free_tlb(a, b),
    C_FREE_PMD: lambda t, a, b: t.pmd_free_tlb(a, b),
    C_FREE_PUD: lambda t, a, b: t.pud_free_tlb(a, b),
    C_FREE_P4D: lambda t, a, b: t.p4d_free_tlb(a, b),
}
