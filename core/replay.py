"""Replay format v1: recorded mmu_gather calls in, kernel effects out.

A replay file is JSON Lines, one call per line (``docs/replay.md``, the
contract).  The whole file is parsed and validated first and compiled to a
list of tuples; only then does anything run, so bad input writes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn

import attrs
from mmugather.core.constants import MASK32, MASK64
from mmugather.core.events import Emit
from mmugather.core.gather import (
    GatherError,
    KernelBug,
    MmuGather,
    tlb_gather_mmu,
    tlb_gather_mmu_fullmm,
)
from mmugather.core.mm import ALLOC_KINDS, Machine, MmStruct
from mmugather.core.vma import FLAG_NAMES, Vma

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _loads = json.loads


class ReplayError(Exception):
    """Rejected input: ``path:line: reason``."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


#: A "0x..." string: hex digits only (no sign, no underscores).
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")

# Field kinds.
ADDR = "address"  # 0..2^64-1, int or "0x..." string
ID = "id"  # 0..2^64-1
SIZE = "size"  # 1..2^32-1
COUNT = "count"  # 0..2^64-1
BOOL = "bool"
FLAGS = "flags"
WHAT = "what"

VMA_FIELDS = {"start": (ADDR, None), "end": (ADDR, None), "flags": (FLAGS, 0)}

#: op -> {field: (kind, default or None when required)}
OPS: dict[str, dict[str, tuple[str, Any]]] = {
    "tlb_gather_mmu": {"fullmm": (BOOL, False)},
    "tlb_finish_mmu": {"nested": (BOOL, False)},
    "tlb_start_vma": VMA_FIELDS,
    "tlb_end_vma": VMA_FIELDS,
    "tlb_remove_tlb_entry": {"addr": (ADDR, None)},
    "tlb_remove_pmd_tlb_entry": {"addr": (ADDR, None)},
    "tlb_remove_pud_tlb_entry": {"addr": (ADDR, None)},
    "tlb_remove_huge_tlb_entry": {"addr": (ADDR, None), "size": (SIZE, None)},
    "__tlb_remove_page_size": {
        "page": (ID, None),
        "size": (SIZE, "PAGE_SIZE"),
        "delay_rmap": (BOOL, False),
    },
    "tlb_remove_page_size": {"page": (ID, None), "size": (SIZE, "PAGE_SIZE")},
    "tlb_change_page_size": {"size": (SIZE, None)},
    "tlb_flush_mmu_tlbonly": {},
    "tlb_flush_mmu": {},
    "tlb_batch_rmap": {},
    "tlb_flush_rmaps": VMA_FIELDS,
    "tlb_discard_rmaps": {},
    "pte_free_tlb": {"table": (ID, None), "addr": (ADDR, None)},
    "pmd_free_tlb": {"table": (ID, None), "addr": (ADDR, None)},
    "pud_free_tlb": {"table": (ID, None), "addr": (ADDR, None)},
    "p4d_free_tlb": {"table": (ID, None), "addr": (ADDR, None)},
    "rcu_grace_period": {},
    "fail_alloc": {"what": (WHAT, None), "count": (COUNT, 1)},
}

#: Ops allowed outside a gather.
ANYWHERE = frozenset({"tlb_batch_rmap", "rcu_grace_period", "fail_alloc"})

# Compiled op codes, roughly by frequency (the run loop tests in this order).
(
    C_ENTRY,
    C_QUEUE,
    C_BATCH_RMAP,
    C_FLUSH_RMAPS,
    C_DISCARD,
    C_CHANGE_SIZE,
    C_REMOVE_PAGE,
    C_TLBONLY,
    C_FLUSH,
    C_PMD_ENTRY,
    C_PUD_ENTRY,
    C_HUGE_ENTRY,
    C_START_VMA,
    C_END_VMA,
    C_FREE_PTE,
    C_FREE_PMD,
    C_FREE_PUD,
    C_FREE_P4D,
    C_GATHER,
    C_FINISH,
    C_RCU,
    C_FAIL,
) = range(22)

CODES = {
    "tlb_remove_tlb_entry": C_ENTRY,
    "__tlb_remove_page_size": C_QUEUE,
    "tlb_batch_rmap": C_BATCH_RMAP,
    "tlb_flush_rmaps": C_FLUSH_RMAPS,
    "tlb_discard_rmaps": C_DISCARD,
    "tlb_change_page_size": C_CHANGE_SIZE,
    "tlb_remove_page_size": C_REMOVE_PAGE,
    "tlb_flush_mmu_tlbonly": C_TLBONLY,
    "tlb_flush_mmu": C_FLUSH,
    "tlb_remove_pmd_tlb_entry": C_PMD_ENTRY,
    "tlb_remove_pud_tlb_entry": C_PUD_ENTRY,
    "tlb_remove_huge_tlb_entry": C_HUGE_ENTRY,
    "tlb_start_vma": C_START_VMA,
    "tlb_end_vma": C_END_VMA,
    "pte_free_tlb": C_FREE_PTE,
    "pmd_free_tlb": C_FREE_PMD,
    "pud_free_tlb": C_FREE_PUD,
    "p4d_free_tlb": C_FREE_P4D,
    "tlb_gather_mmu": C_GATHER,
    "tlb_finish_mmu": C_FINISH,
    "rcu_grace_period": C_RCU,
    "fail_alloc": C_FAIL,
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _integer(field: str, value: Any, lo: int, hi: int, hex_ok: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        want = "a non-negative integer" + (' or a "0x..." string' if hex_ok else "")
        raise ValueError(f"field {field!r} must be {want}, not {_type_name(value)}")
    if isinstance(value, str):
        if not hex_ok:
            raise ValueError(f"field {field!r} must be a non-negative integer, not a string")
        text = value.strip()
        if not _HEX.fullmatch(text):
            raise ValueError(f'field {field!r}: {value!r} is not an integer nor a "0x..." string')
        value = int(text[2:], 16)
    if not lo <= value <= hi:
        raise ValueError(f"field {field!r}: {value} is outside {lo}..{hi}")
    return int(value)


def _field(op: str, field: str, kind: str, value: Any) -> Any:
    if kind in (ADDR, ID):
        return _integer(field, value, 0, MASK64, True)
    if kind == SIZE:
        return _integer(field, value, 1, MASK32, True)
    if kind == COUNT:
        return _integer(field, value, 0, MASK64, False)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"field {field!r} must be true or false, not {_type_name(value)}")
        return value
    if kind == FLAGS:
        if not isinstance(value, list):
            raise ValueError(
                f"field {field!r} must be a list of flag names, not {_type_name(value)}"
            )
        bits = 0
        for name in value:
            if not isinstance(name, str) or name not in FLAG_NAMES:
                raise ValueError(
                    f"field {field!r}: unknown flag {name!r} (known: {', '.join(FLAG_NAMES)})"
                )
            bits |= FLAG_NAMES[name]
        return bits
    if kind == WHAT:
        if value not in ALLOC_KINDS:
            raise ValueError(
                f"field {field!r}: unknown allocation kind {value!r} "
                f"(known: {', '.join(ALLOC_KINDS)})"
            )
        return value
    raise AssertionError(kind)  # pragma: no cover


#: A compiled op: (line, code, op name, a, b, c)
Compiled = tuple[int, int, str, Any, Any, Any]


def _compile(op: str, args: dict[str, Any], page_size: int) -> tuple[Any, Any, Any]:
    code = CODES[op]
    if code in (C_START_VMA, C_END_VMA, C_FLUSH_RMAPS):
        return Vma(args["start"], args["end"], args["flags"]), None, None
    if code == C_QUEUE:
        return args["page"], args["size"], int(args["delay_rmap"])
    if code == C_REMOVE_PAGE:
        return args["page"], args["size"], None
    if code in (C_ENTRY, C_PMD_ENTRY, C_PUD_ENTRY):
        return args["addr"], None, None
    if code == C_HUGE_ENTRY:
        return args["addr"], args["size"], None
    if code in (C_FREE_PTE, C_FREE_PMD, C_FREE_PUD, C_FREE_P4D):
        return args["table"], args["addr"], None
    if code == C_CHANGE_SIZE:
        return args["size"], None, None
    if code == C_GATHER:
        return args["fullmm"], None, None
    if code == C_FINISH:
        return args["nested"], None, None
    if code == C_FAIL:
        return args["what"], args["count"], None
    return None, None, None


def parse_line(raw: bytes, lineno: int, path: str, page_size: int) -> Compiled | None:
    """Validate one line; None for blank and comment lines."""
    text = raw.strip()
    if not text or text.startswith(b"#"):
        return None
    try:
        obj = _loads(text)
    except ValueError:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReplayError(path, lineno, f"not UTF-8 text (byte {exc.start + 1})") from None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ReplayError(path, lineno, f"not JSON: {exc}") from None
        except RecursionError:
            raise ReplayError(path, lineno, "not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ReplayError(path, lineno, f"not a JSON object but {_type_name(obj)}")
    if "op" not in obj:
        raise ReplayError(path, lineno, "missing field 'op'")
    op = obj["op"]
    if not isinstance(op, str):
        raise ReplayError(path, lineno, f"field 'op' must be a string, not {_type_name(op)}")
    spec = OPS.get(op)
    if spec is None:
        # An error line never echoes a megabyte of input.
        shown = repr(op) if len(op) <= 80 else f"{op[:80]!r}... ({len(op):,} characters)"
        raise ReplayError(path, lineno, f"unknown op {shown}")
    args: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "op":
            continue
        if key not in spec:
            known = ", ".join(spec) or "none"
            raise ReplayError(path, lineno, f"{op}: unknown field {key!r} (fields: {known})")
        try:
            args[key] = _field(op, key, spec[key][0], value)
        except ValueError as exc:
            raise ReplayError(path, lineno, f"{op}: {exc}") from None
    for key, (_kind, default) in spec.items():
        if key not in args:
            if default is None:
                raise ReplayError(path, lineno, f"{op}: missing field {key!r}")
            args[key] = page_size if default == "PAGE_SIZE" else default
    a, b, c = _compile(op, args, page_size)
    return (lineno, CODES[op], op, a, b, c)


#: Ops whose canonical line ends in its one integer field, ``{"op":"NAME","FIELD":N}``.
_INT_TAIL_OPS = (
    ("tlb_remove_tlb_entry", "addr"),
    ("__tlb_remove_page_size", "page"),
    ("tlb_change_page_size", "size"),
    ("tlb_remove_page_size", "page"),
    ("tlb_remove_pmd_tlb_entry", "addr"),
    ("tlb_remove_pud_tlb_entry", "addr"),
)

#: A line's compiled form without its line number: (code, op, a, b, c).
_Rest = tuple[int, str, Any, Any, Any]
#: The line up to its last colon -> (code, op, lowest, highest, b, c).
_IntTail = tuple[int, str, int, int, Any, Any]

_fast_cache: dict[int, tuple[dict[bytes, _Rest], dict[bytes, _IntTail]]] = {}


def _fast_tables(page_size: int) -> tuple[dict[bytes, _Rest], dict[bytes, _IntTail]]:
    """The fast path's tables, derived from the slow path (:func:`parse_line`)
    so that they compile exactly as it does.

    * exact lines: the canonical text of every op without a required field
      (and of each value of a lone boolean field);
    * integer tails: for the ops of ``_INT_TAIL_OPS``, the text before the
      value, with the value's range and the compiled ``b``, ``c``.
    """
    tables = _fast_cache.get(page_size)
    if tables is not None:
        return tables
    exact: dict[bytes, _Rest] = {}
    for op, spec in OPS.items():
        texts = []
        if all(default is not None for _kind, default in spec.values()):
            texts.append(f'{{"op":"{op}"}}')
        if len(spec) == 1 and next(iter(spec.values()))[0] == BOOL:
            texts += [f'{{"op":"{op}","{field}":{v}}}' for field in spec for v in ("true", "false")]
        for text in texts:
            compiled = parse_line(text.encode(), 0, "", page_size)
            assert compiled is not None
            exact[text.encode()] = compiled[1:]
    int_tails: dict[bytes, _IntTail] = {}
    for op, field in _INT_TAIL_OPS:
        kind = OPS[op][field][0]
        lo, hi = (1, MASK32) if kind == SIZE else (0, MASK64)
        head = f'{{"op":"{op}","{field}"'
        probes = [parse_line(f"{head}:{v}}}".encode(), 0, "", page_size) for v in (lo, hi)]
        # The value is ``a``; ``b`` and ``c`` do not depend on it.
        assert [p[3] for p in probes if p] == [lo, hi] and probes[0][4:] == probes[1][4:]  # type: ignore[index]
        int_tails[head.encode()] = (CODES[op], op, lo, hi, *probes[0][4:])  # type: ignore[index]
    tables = _fast_cache[page_size] = (exact, int_tails)
    return tables


def parse(lines: Iterator[bytes], path: str, page_size: int) -> list[Compiled]:
    """Validate a whole replay file and compile it; raises ReplayError.

    The lines a recorder writes most, byte for byte in canonical form, take a
    fast path: an exact line from a table, or ``{"op":"NAME","FIELD":N}``
    with N plain JSON digits in range.  It accepts nothing the slow path
    (:func:`parse_line`) rejects and compiles to the same tuples; every
    other line, and every error, goes the slow way.
    """
    exact, int_tails = _fast_tables(page_size)
    out: list[Compiled] = []
    append = out.append
    gather_line: int | None = None
    for lineno, raw in enumerate(lines, 1):
        # Canonical lines have no blanks around them; others go the slow way.
        rest = exact.get(raw)
        compiled: Compiled | None
        if rest is not None:
            compiled = (lineno,) + rest  # noqa: RUF005 - cheaper than unpacking
        else:
            compiled = None
            head, _, tail = raw.rpartition(b":")
            shape = int_tails.get(head)
            if shape is not None and tail[-1:] == b"}":
                digits = tail[:-1]
                # JSON digits: no sign, no leading zero, no fraction; more
                # than 20 cannot fit 64 bits and go the slow way.
                if digits.isdigit() and len(digits) <= 20 and (
                        digits[0] != 0x30 or len(digits) == 1):
                    code, op, lo, hi, b, c = shape
                    value = int(digits)
                    if lo <= value <= hi:
                        compiled = (lineno, code, op, value, b, c)
            if compiled is None:
                try:
                    compiled = parse_line(raw, lineno, path, page_size)
                except UnicodeDecodeError:
                    raise ReplayError(path, lineno, "not UTF-8 text") from None
                if compiled is None:
                    continue
        code = compiled[1]
        if code == C_GATHER:
            if gather_line is not None:
                raise ReplayError(
                    path, lineno, f"tlb_gather_mmu inside the gather opened at line {gather_line}"
                    " (gathers do not nest)"
                )
            gather_line = lineno
        elif code == C_FINISH:
            if gather_line is None:
                raise ReplayError(path, lineno, "tlb_finish_mmu outside a gather")
            gather_line = None
        elif gather_line is None and compiled[2] not in ANYWHERE:
            raise ReplayError(
                path, lineno, f"{compiled[2]} outside a gather (no tlb_gather_mmu before it)"
            )
        append(compiled)
    return out


def parse_file(path: str, page_size: int) -> list[Compiled]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ReplayError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark, as some editors write
    return parse(iter(data.split(b"\n")), path, page_size)


@attrs.define(slots=True)
class ReplayResult:
    ops: int
    bug: str | None = None
    bug_line: int | None = None


def run(compiled: list[Compiled], machine: Machine, *, check: bool = False) -> ReplayResult:
    """Replay compiled ops on ``machine``; stops at a VM_BUG_ON.

    With ``check``, entry clears and table frees are reported as the callers'
    ``pte_clear``/``table_unhook`` events, for the invariant checker.
    """
    if check:
        return _run_checked(compiled, machine)
    mm = MmStruct()
    emit: Emit | None = machine.emit
    tlb: MmuGather | None = None
    # The open gather's per-page entry points, looked up once per gather
    # (parse() puts every per-page op inside a gather).
    entry: Callable[[int], None] = _outside_gather
    remove: Callable[[int, int, int], bool] = _outside_gather
    done = 0
    line = 0
    try:
        for line, code, op, a, b, c in compiled:  # noqa: B007 - line is read on a bug
            if code == C_ENTRY:
                entry(a)
            elif code == C_QUEUE:
                full = remove(a, b, c)
                if emit is not None:
                    emit("return", op=op, value=full)
            elif code == C_BATCH_RMAP:
                # Outside a gather, ask the arch the way a fresh gather would.
                value = tlb.batch_rmap if tlb is not None else _batch_rmap(machine, mm)
                if emit is not None:
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
        return ReplayResult(ops=done, bug=bug.what, bug_line=line)
    return ReplayResult(ops=done)


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


def _run_checked(compiled: list[Compiled], machine: Machine) -> ReplayResult:
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
