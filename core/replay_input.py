"""Replay input: the op table and the careful line parser.

:data:`TABLE` is the one description of replay-v1 input (``docs/replay.md``):
every op with its fields, each field's kind and default, and what the op
compiles to.  Two readers follow it:

* :func:`parse_line`, the careful path: the stdlib ``json`` module (so that
  anything ``json`` reads, however odd, gets a reason) and a check of every
  field, with the exact message for the first problem;
* the fast validators of :mod:`mmugather.core.replay_fast`, generated from
  the same table, which take what ``orjson`` parsed and either compile it
  exactly as :func:`parse_line` would or hand the line over to it.

:func:`parse` runs a whole file through them (``orjson`` first for every
line), then checks that ops stand inside gathers.
"""

from __future__ import annotations

import bisect
import gc
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, overload

import attrs
import orjson
from mmugather.core.constants import MASK32, MASK64
from mmugather.core.mm import ALLOC_KINDS
from mmugather.core.vma import FLAG_NAMES, Vma


class ReplayError(Exception):
    """Rejected input: ``path:line: reason``."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------
# Field kinds and the op table
# --------------------------------------------------------------------------

ADDR = "address"  # 0..2^64-1, an integer or a "0x..." string
ID = "id"  # the same range: an opaque number (a PFN, a table)
SIZE = "size"  # 1..2^32-1, integer or "0x..."
HUGE_SIZE = "huge size"  # 1..2^64-1: huge_page_size() is an unsigned long
COUNT = "count"  # 0..2^64-1, integer only
BOOL = "bool"
BIT = "bit"  # true or false, compiled to 1 or 0 (a flags argument)
FLAGS = "flags"  # a list of VMA flag names, compiled to VM_* bits
WHAT = "what"  # an allocation kind

#: Integer kinds: (lowest, highest, whether a "0x..." string is allowed).
INT_KINDS: Final[dict[str, tuple[int, int, bool]]] = {
    ADDR: (0, MASK64, True),
    ID: (0, MASK64, True),
    SIZE: (1, MASK32, True),
    HUGE_SIZE: (1, MASK64, True),
    COUNT: (0, MASK64, False),
}

#: A field's default meaning "the replay's PAGE_SIZE".
PAGE_SIZE: Final = "PAGE_SIZE"


@attrs.frozen
class Field:
    kind: str
    #: the value a missing field takes, as JSON would give it (or
    #: ``PAGE_SIZE``); None: the field is required
    default: Any = None


@attrs.frozen
class OpSpec:
    """One op: its compiled code, its fields (in the order they are checked
    and documented) and what the compiled tuple's ``a, b, c`` hold."""

    code: int
    fields: dict[str, Field]
    #: field names for a, b, c in turn; ``"vma"`` stands for
    #: ``Vma(start, end, flags)``
    args: tuple[str, ...] = ()
    #: may stand outside a gather
    anywhere: bool = False


# Compiled op codes, roughly by frequency (the run loop tests in this order);
# tlb_gather_mmu and tlb_finish_mmu come after every op of a gather's
# inside (parse() relies on it).
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

_VMA = {"start": Field(ADDR), "end": Field(ADDR), "flags": Field(FLAGS, [])}
_ADDR = {"addr": Field(ADDR)}
_TABLE = {"table": Field(ID), "addr": Field(ADDR)}

#: The replay-v1 ops (docs/replay.md, "Ops"): the one table both parsers follow.
TABLE: Final[dict[str, OpSpec]] = {
    "tlb_gather_mmu": OpSpec(C_GATHER, {"fullmm": Field(BOOL, False)}, ("fullmm",)),
    "tlb_finish_mmu": OpSpec(C_FINISH, {"nested": Field(BOOL, False)}, ("nested",)),
    "tlb_start_vma": OpSpec(C_START_VMA, _VMA, ("vma",)),
    "tlb_end_vma": OpSpec(C_END_VMA, _VMA, ("vma",)),
    "tlb_remove_tlb_entry": OpSpec(C_ENTRY, _ADDR, ("addr",)),
    "tlb_remove_pmd_tlb_entry": OpSpec(C_PMD_ENTRY, _ADDR, ("addr",)),
    "tlb_remove_pud_tlb_entry": OpSpec(C_PUD_ENTRY, _ADDR, ("addr",)),
    "tlb_remove_huge_tlb_entry": OpSpec(
        C_HUGE_ENTRY, {"addr": Field(ADDR), "size": Field(HUGE_SIZE)}, ("addr", "size")
    ),
    "__tlb_remove_page_size": OpSpec(
        C_QUEUE,
        {"page": Field(ID), "size": Field(SIZE, PAGE_SIZE), "delay_rmap": Field(BIT, False)},
        ("page", "size", "delay_rmap"),
    ),
    "tlb_remove_page_size": OpSpec(
        C_REMOVE_PAGE, {"page": Field(ID), "size": Field(SIZE, PAGE_SIZE)}, ("page", "size")
    ),
    "tlb_change_page_size": OpSpec(C_CHANGE_SIZE, {"size": Field(SIZE)}, ("size",)),
    "tlb_flush_mmu_tlbonly": OpSpec(C_TLBONLY, {}),
    "tlb_flush_mmu": OpSpec(C_FLUSH, {}),
    "tlb_batch_rmap": OpSpec(C_BATCH_RMAP, {}, anywhere=True),
    "tlb_flush_rmaps": OpSpec(C_FLUSH_RMAPS, _VMA, ("vma",)),
    "tlb_discard_rmaps": OpSpec(C_DISCARD, {}),
    "pte_free_tlb": OpSpec(C_FREE_PTE, _TABLE, ("table", "addr")),
    "pmd_free_tlb": OpSpec(C_FREE_PMD, _TABLE, ("table", "addr")),
    "pud_free_tlb": OpSpec(C_FREE_PUD, _TABLE, ("table", "addr")),
    "p4d_free_tlb": OpSpec(C_FREE_P4D, _TABLE, ("table", "addr")),
    "rcu_grace_period": OpSpec(C_RCU, {}, anywhere=True),
    "fail_alloc": OpSpec(
        C_FAIL, {"what": Field(WHAT), "count": Field(COUNT, 1)}, ("what", "count"), anywhere=True
    ),
}

#: op -> {field: (kind, default or None when required)}: the table's fields
#: in the shape tools and the docs test read.
OPS: Final[dict[str, dict[str, tuple[str, Any]]]] = {
    op: {name: (f.kind, f.default) for name, f in spec.fields.items()}
    for op, spec in TABLE.items()
}
CODES: Final[dict[str, int]] = {op: spec.code for op, spec in TABLE.items()}
#: Ops allowed outside a gather.
ANYWHERE: Final = frozenset(op for op, spec in TABLE.items() if spec.anywhere)

#: A compiled op: (line, code, op name, a, b, c)
Compiled = tuple[int, int, str, Any, Any, Any]
#: A compiled op without its line: (code, op name, a, b, c)
Op = tuple[int, str, Any, Any, Any]


class Program(Sequence[Compiled]):
    """A compiled replay file: its ops as ``(code, op name, a, b, c)``
    tuples, one tuple shared by identical lines, and their line numbers as
    runs of consecutive lines (a run starts only after a blank or comment
    line).  As a sequence it holds :data:`Compiled` tuples; the run loop
    reads ``ops`` and looks up a line only to report a bug.  A million ops
    take about half the memory of the tuples with their line numbers."""

    __slots__ = ("ops", "runs")

    def __init__(self, ops: list[Op] | None = None,
                 runs: list[tuple[int, int]] | None = None) -> None:
        self.ops: list[Op] = [] if ops is None else ops
        #: (index of an op, its line) where a run of consecutive lines starts
        self.runs: list[tuple[int, int]] = [(0, 1)] if runs is None else runs

    @classmethod
    def of(cls, compiled: Iterable[Compiled]) -> Program:
        """A program of :data:`Compiled` tuples (as :func:`parse_line` gives them)."""
        if isinstance(compiled, Program):
            return compiled
        program = cls(runs=[])
        for line, *op in compiled:
            program.append_at(tuple(op), line)  # type: ignore[arg-type]
        return program

    def append_at(self, op: Op, line: int) -> None:
        index = len(self.ops)
        if not self.runs or line != self.line(index - 1) + 1:
            self.runs.append((index, line))
        self.ops.append(op)

    def line(self, index: int) -> int:
        """The line of the op at ``index``."""
        if index < 0:
            index += len(self.ops)
        runs = self.runs
        start, line = runs[bisect.bisect_right(runs, (index, 1 << 62)) - 1]
        return line + index - start

    @property
    def lines(self) -> list[int]:
        return [self.line(i) for i in range(len(self.ops))]

    def __len__(self) -> int:
        return len(self.ops)

    @overload
    def __getitem__(self, index: int) -> Compiled: ...

    @overload
    def __getitem__(self, index: slice) -> Program: ...

    def __getitem__(self, index: int | slice) -> Compiled | Program:
        if isinstance(index, slice):
            return Program.of(list(self)[index])
        return (self.line(index), *self.ops[index])

    def __iter__(self) -> Iterator[Compiled]:
        for index, op in enumerate(self.ops):
            yield (self.line(index), *op)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Program):
            return self.ops == other.ops and self.lines == other.lines
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Program({len(self)} ops)"


def build(line: int, op: str, spec: OpSpec, values: dict[str, Any]) -> Compiled:
    """The compiled tuple of a checked op (``values``: every field, defaults
    filled in), laid out as ``spec.args`` says."""
    out: list[Any] = []
    for name in spec.args:
        if name == "vma":
            out.append(Vma(values["start"], values["end"], values["flags"]))
        else:
            out.append(values[name])
    a, b, c = (*out, None, None, None)[:3]
    return (line, spec.code, op, a, b, c)


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------

#: Longest quoted value an error message shows whole.
SHOW_MAX = 80

#: A "0x..." string: hex digits only (no sign, blank, underscore).
HEX = re.compile(r"0[xX][0-9a-fA-F]+")


class HugeInt:
    """A JSON integer too long to be any field's value (the careful path
    keeps its text: ``int()`` of it could exceed Python's digit limit)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return cut(self.text)


def _parse_int(text: str) -> int | HugeInt:
    # No field takes more than 20 digits; JSON has no leading zeros, so a
    # longer integer is out of range whatever it is.
    return int(text) if len(text) <= 100 else HugeInt(text)


def cut(text: str) -> str:
    """``text``, or its first characters and its length when it is long
    (an error line stays one short line whatever the input)."""
    if len(text) <= SHOW_MAX:
        return text
    return f"{text[: SHOW_MAX - 3]}... ({len(text):,} characters)"


def show(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut."""
    try:
        text = repr(value)
    except RecursionError:  # nested about as deep as json reads
        return f"({type_name(value)} nested too deeply to show)"
    return cut(text)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, HugeInt)):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _outside(field: str, shown: str, lo: int, hi: int) -> ValueError:
    return ValueError(f"field {field!r}: {shown} is outside {lo}..{hi}")


def _integer(field: str, value: Any, lo: int, hi: int, hex_ok: bool) -> int:
    if isinstance(value, HugeInt):
        raise _outside(field, cut(value.text), lo, hi)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        want = "a non-negative integer" + (' or a "0x..." string' if hex_ok else "")
        raise ValueError(f"field {field!r} must be {want}, not {type_name(value)}")
    if isinstance(value, str):
        if not hex_ok:
            raise ValueError(f"field {field!r} must be a non-negative integer, not a string")
        if not HEX.fullmatch(value):
            raise ValueError(
                f'field {field!r}: {show(value)} is not an integer nor a "0x..." string'
            )
        number = int(value, 16)
        if not lo <= number <= hi:
            # Decimal while it is short; beyond that the string as given.
            shown = str(number) if number.bit_length() <= 256 else show(value)
            raise _outside(field, shown, lo, hi)
        return number
    if not lo <= value <= hi:
        raise _outside(field, cut(str(value)), lo, hi)
    return int(value)


def check_field(field: str, kind: str, value: Any) -> Any:
    """The compiled value of one field, or ValueError with the reason."""
    bounds = INT_KINDS.get(kind)
    if bounds is not None:
        return _integer(field, value, *bounds)
    if kind in (BOOL, BIT):
        if not isinstance(value, bool):
            raise ValueError(f"field {field!r} must be true or false, not {type_name(value)}")
        return int(value) if kind == BIT else value
    if kind == FLAGS:
        if not isinstance(value, list):
            raise ValueError(
                f"field {field!r} must be a list of flag names, not {type_name(value)}"
            )
        bits = 0
        for name in value:
            if not isinstance(name, str) or name not in FLAG_NAMES:
                raise ValueError(
                    f"field {field!r}: unknown flag {show(name)} (known: {', '.join(FLAG_NAMES)})"
                )
            bits |= FLAG_NAMES[name]
        return bits
    if kind == WHAT:
        if not isinstance(value, str) or value not in ALLOC_KINDS:
            raise ValueError(
                f"field {field!r}: unknown allocation kind {show(value)} "
                f"(known: {', '.join(ALLOC_KINDS)})"
            )
        return value
    raise AssertionError(kind)  # pragma: no cover


# --------------------------------------------------------------------------
# The careful path
# --------------------------------------------------------------------------


def _loads_carefully(text: bytes, lineno: int, path: str) -> Any:
    """The stdlib's reading of a line, or the reason it is not JSON."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReplayError(path, lineno, f"not UTF-8 text (byte {exc.start + 1})") from None
    try:
        return json.loads(decoded, parse_int=_parse_int)
    except ValueError as exc:
        raise ReplayError(path, lineno, f"not JSON: {exc}") from None
    except RecursionError:
        raise ReplayError(path, lineno, "not JSON: nested too deeply") from None


def parse_line(raw: bytes, lineno: int, path: str, page_size: int) -> Compiled | None:
    """Check one line the careful way; None for blank and comment lines.

    Raises ReplayError with the reason of the first problem found.
    """
    text = raw.strip()
    if not text or text.startswith(b"#"):
        return None
    obj = _loads_carefully(text, lineno, path)
    if not isinstance(obj, dict):
        raise ReplayError(path, lineno, f"not a JSON object but {type_name(obj)}")
    if "op" not in obj:
        raise ReplayError(path, lineno, "missing field 'op'")
    op = obj["op"]
    if not isinstance(op, str):
        raise ReplayError(path, lineno, f"field 'op' must be a string, not {type_name(op)}")
    spec = TABLE.get(op)
    if spec is None:
        raise ReplayError(path, lineno, f"unknown op {show(op)}")
    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "op":
            continue
        field = spec.fields.get(key)
        if field is None:
            known = ", ".join(spec.fields) or "none"
            raise ReplayError(path, lineno, f"{op}: unknown field {show(key)} (fields: {known})")
        try:
            values[key] = check_field(key, field.kind, value)
        except ValueError as exc:
            raise ReplayError(path, lineno, f"{op}: {exc}") from None
    for key, field in spec.fields.items():
        if key not in values:
            if field.default is None:
                raise ReplayError(path, lineno, f"{op}: missing field {key!r}")
            default = field.default
            values[key] = (page_size if default == PAGE_SIZE
                           else check_field(key, field.kind, default))
    return build(lineno, op, spec, values)


# --------------------------------------------------------------------------
# Whole files
# --------------------------------------------------------------------------

#: Codes whose lines repeat byte for byte (no address or id among their
#: fields): parse() remembers such a line's compiled form.
_REPEATING = frozenset(
    spec.code
    for spec in TABLE.values()
    if not any(f.kind in (ADDR, ID) for f in spec.fields.values())
)


def parse(lines: Iterable[bytes], path: str, page_size: int) -> Program:
    """Validate a whole replay file and compile it; raises ReplayError
    (:func:`_parse`)."""
    # The compiled ops hold no reference cycles: the cyclic collector would
    # only walk them again and again while the list grows.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(lines, path, page_size)
    finally:
        if gc.get_freeze_count() == 0:
            # Straight to the oldest generation, unscanned: left young, they
            # would be walked by the next collection, a million at once.
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def _parse(lines: Iterable[bytes], path: str, page_size: int) -> Program:
    """The parse of a whole file.

    ``lines`` may keep their line ends.  Every line goes to ``orjson`` first,
    and what it gives to the op's fast validator; a line either of them
    turns down (blank, comment, an error, anything unusual) goes the careful
    way, which compiles it the same or gives the reason.  A line seen before
    whose op has no per-page field (``{"op": "tlb_batch_rmap"}``) is looked
    up, not parsed again, and shares its compiled tuple.
    """
    from mmugather.core.replay_fast import validators

    fast = validators(page_size)
    seen: dict[bytes, Op] = {}
    seen_get = seen.get
    loads = orjson.loads
    repeating = _REPEATING
    c_gather = C_GATHER
    program = Program()
    ops = program.ops
    append = ops.append
    runs = program.runs
    gather_line: int | None = None
    # Line numbers are needed only now and then: counted from the ops so
    # far and the lines skipped.
    skipped = 0
    for raw in lines:
        op = seen_get(raw)
        if op is None:
            try:
                obj = loads(raw)
                op = fast[obj["op"]](obj)
            except (ValueError, KeyError, TypeError):
                # Not JSON (orjson's error is a ValueError), not an object,
                # no op or an unknown one: the careful path says which.
                op = None
            if op is None:
                lineno = len(ops) + skipped + 1
                compiled = parse_line(raw, lineno, path, page_size)
                if compiled is None:
                    # A skipped line: the next op starts a run of lines.
                    skipped += 1
                    if runs[-1][0] == len(ops):
                        runs.pop()
                    runs.append((len(ops), lineno + 1))
                    continue
                op = compiled[1:]  # type: ignore[assignment]
            elif op[0] in repeating:
                seen[raw] = op
        code = op[0]
        # Inside a gather any op below C_GATHER may stand: only ops outside
        # one, and the gather's own two, need a closer look.
        if gather_line is None or code >= c_gather:
            lineno = len(ops) + skipped + 1
            if code == C_GATHER:
                if gather_line is not None:
                    raise ReplayError(
                        path, lineno,
                        f"tlb_gather_mmu inside the gather opened at line {gather_line}"
                        " (gathers do not nest)",
                    )
                gather_line = lineno
            elif code == C_FINISH:
                if gather_line is None:
                    raise ReplayError(path, lineno, "tlb_finish_mmu outside a gather")
                gather_line = None
            elif gather_line is None and op[1] not in ANYWHERE:
                raise ReplayError(
                    path, lineno, f"{op[1]} outside a gather (no tlb_gather_mmu before it)"
                )
        append(op)
    return program


def parse_file(path: str, page_size: int) -> Program:
    """Validate and compile the replay file ``path``; raises ReplayError."""
    try:
        # Read a line at a time: the whole file in memory as well as the
        # ops would cost page faults, not only memory.
        with open(path, "rb", buffering=1 << 16) as f:
            if f.peek(3)[:3] == b"\xef\xbb\xbf":  # type: ignore[attr-defined]
                f.read(3)  # a UTF-8 byte-order mark, as some editors write
            return parse(f, path, page_size)
    except OSError as exc:
        raise ReplayError(path, None, f"cannot read: {exc.strerror or exc}") from None
