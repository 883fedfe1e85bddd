"""The replay parser's fast validators, generated from the op table.

For every op of :data:`mmugather.core.replay_input.TABLE` one small
function, ``check(obj)``, takes the dict ``orjson`` made of a line and
returns the compiled op, exactly what the careful path
(:func:`~mmugather.core.replay_input.parse_line`) would return but for the
line number, or None to
hand the line to the careful path: for anything unusual (a missing or
unknown field, a wrong type, a value out of range) and for every error, so
that each message is written in one place only.

The functions are written out as source from the table, as ``attrs`` and
``dataclasses`` write their methods: a replay file has millions of lines,
and a loop over field descriptions per line would cost more than the JSON
parse.  :func:`source` shows what an op gets; ``tests/test_replay_parse.py``
checks the validators against the careful path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmugather.core.mm import ALLOC_KINDS
from mmugather.core.replay_input import (
    BIT,
    BOOL,
    FLAGS,
    HEX,
    INT_KINDS,
    PAGE_SIZE,
    TABLE,
    WHAT,
    Op,
    OpSpec,
    check_field,
)
from mmugather.core.vma import FLAG_NAMES, Vma

Validator = Callable[[dict[str, Any]], "Op | None"]

_MISSING = object()
_hex_match = HEX.fullmatch


def _hex(value: Any, lo: int, hi: int) -> int | None:
    """A ``"0x..."`` string's number when it lies in lo..hi, else None."""
    if type(value) is str and _hex_match(value):
        number = int(value, 16)
        if lo <= number <= hi:
            return number
    return None


def _flag_bits(names: list[Any]) -> int | None:
    """VM_* bits of a list of known flag names, else None."""
    bits = 0
    for name in names:
        if type(name) is not str:
            return None
        bit = FLAG_NAMES.get(name)
        if bit is None:
            return None
        bits |= bit
    return bits


def _field_source(var: str, name: str, kind: str, default: Any, page_size: int) -> list[str]:
    """Lines that leave ``var`` holding the field's compiled value (and
    count an optional field in ``n`` when present), or return None.  A
    missing required field raises KeyError, which the function catches."""
    if default is None:
        head = [f"{var} = obj[{name!r}]"]
        indent = ""
    else:
        # The default compiles as the careful path compiles it.
        value = page_size if default == PAGE_SIZE else check_field(name, kind, default)
        head = [f"if {name!r} not in obj: {var} = {value!r}", "else:", f"    {var} = obj[{name!r}]",
                "    n += 1"]
        indent = "    "
    body = []
    bounds = INT_KINDS.get(kind)
    if bounds is not None:
        lo, hi, hex_ok = bounds
        body.append(f"if type({var}) is not int or not {lo} <= {var} <= {hi}:")
        if hex_ok:
            body += [f"    {var} = hex_value({var}, {lo}, {hi})",
                     f"    if {var} is None: return None"]
        else:
            body.append("    return None")
    elif kind in (BOOL, BIT):
        body.append(f"if {var} is not True and {var} is not False: return None")
        if kind == BIT:
            body.append(f"{var} = 1 if {var} else 0")
    elif kind == FLAGS:
        body += [f"if type({var}) is not list: return None",
                 f"{var} = flag_bits({var})",
                 f"if {var} is None: return None"]
    elif kind == WHAT:
        body.append(f"if type({var}) is not str or {var} not in ALLOC_KINDS: return None")
    else:  # pragma: no cover - every kind of the table is handled above
        raise AssertionError(kind)
    return head + [indent + line for line in body]


def source(op: str, page_size: int = 4096) -> str:
    """The fast validator of ``op``, as Python source."""
    spec: OpSpec = TABLE[op]
    names = {name: f"v{i}" for i, name in enumerate(spec.fields)}
    required = sum(1 for field in spec.fields.values() if field.default is None)
    optional = len(spec.fields) - required
    args = []
    for name in spec.args:
        if name == "vma":
            args.append(f"Vma({names['start']}, {names['end']}, {names['flags']})")
        else:
            args.append(names[name])
    args += ["None"] * (3 - len(args))
    result = f"return ({spec.code}, {op!r}, {', '.join(args)})"
    body: list[str] = []
    if optional and required:
        # The usual line gives the required fields only: checked without
        # counting, the optional ones taking their compiled defaults.
        body += [f"if len(obj) == {1 + required}:", "    try:"]
        for name, field in spec.fields.items():
            if field.default is None:
                lines = _field_source(names[name], name, field.kind, None, page_size)
            else:
                value = (page_size if field.default == PAGE_SIZE
                         else check_field(name, field.kind, field.default))
                lines = [f"{names[name]} = {value!r}"]
            body += ["        " + line for line in lines]
        body += ["    except KeyError:", "        return None", "    " + result]
    # ``n`` counts the keys the op knows: any other is a field it does not have.
    if not optional:
        body.append(f"if len(obj) != {1 + required}: return None")
    if spec.fields:
        body.append("try:")
        if optional:
            body.append(f"    n = {1 + required}")
        for name, field in spec.fields.items():
            body += ["    " + line for line in
                     _field_source(names[name], name, field.kind, field.default, page_size)]
        body += ["except KeyError:", "    return None"]
    if optional:
        body.append("if len(obj) != n: return None")
    body.append(result)
    return "def check(obj):\n" + "".join(f"    {line}\n" for line in body)


_cache: dict[int, dict[str, Validator]] = {}


def validators(page_size: int) -> dict[str, Validator]:
    """op -> its fast validator, for files replayed at ``page_size``."""
    table = _cache.get(page_size)
    if table is None:
        table = {}
        for op in TABLE:
            namespace: dict[str, Any] = {
                "MISSING": _MISSING,
                "hex_value": _hex,
                "flag_bits": _flag_bits,
                "ALLOC_KINDS": ALLOC_KINDS,
                "Vma": Vma,
            }
            exec(compile(source(op, page_size), f"<replay validator {op}>", "exec"), namespace)
            table[op] = namespace["check"]
        _cache[page_size] = table
    return table
