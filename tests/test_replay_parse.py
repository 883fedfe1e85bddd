"""The replay parser: one table, two readers that must agree.

Every line goes to orjson and the op's fast validator first (generated from
``replay_input.TABLE``); whatever they turn down goes the careful way
(``parse_line``), which compiles it the same or gives the reason.  These
tests hold the two to each other, check that any JSON formatting takes the
fast path, and pin the error messages of issue 12's rejected input.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmugather.core import replay_input
from mmugather.core.constants import MASK32, MASK64
from mmugather.core.replay import (
    CODES,
    OPS,
    TABLE,
    Compiled,
    ReplayError,
    parse,
    parse_file,
    parse_line,
)
from mmugather.core.replay_fast import source, validators

from mmugather.cli.bench_ops import generate_ops

PS = 4096
GATHER = b'{"op":"tlb_gather_mmu"}'


def careful(raw: bytes) -> Compiled | str:
    """The careful path's answer: the compiled tuple or the reason."""
    try:
        compiled = parse_line(raw, 7, "f", PS)
    except ReplayError as exc:
        return exc.reason
    assert compiled is not None
    return compiled


def through_parse(raw: bytes) -> Compiled | str:
    """What parse() makes of ``raw`` as line 7 (inside a gather when the op
    needs one): the compiled tuple or the reason."""
    compiled = careful(raw)
    opens = not isinstance(compiled, str) and compiled[2] == "tlb_gather_mmu"
    lines = [b"# c", b"" if opens else GATHER, b"", b"  ", b"\r", b"", raw]
    try:
        out = parse(iter(lines), "f", PS)
    except ReplayError as exc:
        assert exc.line == 7, exc
        return exc.reason
    assert len(out) == (1 if opens else 2)
    return out[-1]


# ----------------------------------------------------------------------
# Fast and careful agree
# ----------------------------------------------------------------------

_ints = st.one_of(
    st.integers(-2, 5),
    st.integers(0, MASK64),
    st.sampled_from([MASK32, MASK32 + 1, MASK64, MASK64 + 1, -(1 << 63), -(1 << 63) - 1]),
    st.integers(-(1 << 70), 1 << 70),
)
_hexes = st.one_of(
    _ints.filter(lambda v: v >= 0).map(hex),
    _ints.filter(lambda v: v >= 0).map(lambda v: f"0X{v:X}"),
    st.sampled_from(["0x", " 0x400000", "0x400000\n", "0x400000\u00a0", "0x_1", "+0x1", "x1",
                     "0x1g", "0x" + "f" * 17]),
)
_scalars = st.one_of(
    _ints, _hexes, st.booleans(), st.none(), st.floats(allow_nan=False),
    st.sampled_from(["page_batch", "table_batch", "exec", "", "pte_table"]),
)
_values = st.one_of(
    _scalars,
    st.lists(st.sampled_from(["exec", "hugetlb", "pfnmap", "shared", 1, None]), max_size=4),
    st.dictionaries(st.sampled_from(["a", "op"]), _scalars, max_size=2),
)


@st.composite
def op_objects(draw: st.DrawFn) -> dict[str, Any]:
    """An op with a random subset of its fields, values of every kind and
    now and then a field it does not have, in random key order."""
    op = draw(st.sampled_from(sorted(TABLE)))
    obj: dict[str, Any] = {"op": op}
    for name in TABLE[op].fields:
        if draw(st.integers(0, 9)) < 8:
            obj[name] = draw(_values)
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.sampled_from(["force", "address", "size", "page"]))] = draw(_scalars)
    keys = draw(st.permutations(list(obj)))
    return {k: obj[k] for k in keys}


def _valid_value(kind: str, rng: random.Random) -> Any:
    bounds = replay_input.INT_KINDS.get(kind)
    if bounds is not None:
        lo, hi, hex_ok = bounds
        value = rng.choice([lo, hi, rng.randint(lo, hi), rng.randint(lo, min(hi, 1 << 40))])
        return hex(value) if hex_ok and rng.random() < 0.3 else value
    if kind in (replay_input.BOOL, replay_input.BIT):
        return rng.random() < 0.5
    if kind == replay_input.FLAGS:
        return rng.sample(["exec", "hugetlb", "pfnmap"], rng.randint(0, 3))
    assert kind == replay_input.WHAT
    return rng.choice(["page_batch", "table_batch"])


@st.composite
def valid_objects(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(sorted(TABLE)))
    rng = random.Random(draw(st.integers(0, 1 << 30)))
    obj: dict[str, Any] = {"op": op}
    for name, field in TABLE[op].fields.items():
        if field.default is None or rng.random() < 0.5:
            obj[name] = _valid_value(field.kind, rng)
    keys = list(obj)
    rng.shuffle(keys)
    return {k: obj[k] for k in keys}


def _agree(obj: dict[str, Any], raw: bytes) -> Compiled | str:
    """The fast validator, given what orjson made of ``raw``, returns None or
    exactly what the careful path returns; parse() answers as the careful
    path does."""
    want = careful(raw)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        fast = validators(PS)[obj["op"]](parsed)
        if fast is not None:
            assert not isinstance(want, str) and (7, *fast) == want, (raw, fast, want)
    assert through_parse(raw) == want
    return want


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op_objects(), st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")]))
def test_fast_validators_agree_with_the_careful_path(
    obj: dict[str, Any], separators: tuple[str, str]
) -> None:
    _agree(obj, json.dumps(obj, separators=separators).encode())


@settings(max_examples=400, deadline=None)
@given(valid_objects(), st.sampled_from([(",", ":"), (", ", ": ")]), st.booleans())
def test_valid_lines_take_the_fast_path(
    obj: dict[str, Any], separators: tuple[str, str], crlf: bool
) -> None:
    raw = json.dumps(obj, separators=separators).encode() + (b"\r" if crlf else b"")
    compiled = _agree(obj, raw)
    assert not isinstance(compiled, str), compiled
    assert validators(PS)[obj["op"]](orjson.loads(raw)) == compiled[1:]


def test_every_op_has_a_validator_and_a_code() -> None:
    assert set(validators(PS)) == set(TABLE) == set(OPS) == set(CODES)
    assert sorted(CODES.values()) == list(range(len(TABLE)))
    for op in TABLE:
        assert f"return ({CODES[op]}, {op!r}," in source(op)


def test_page_size_is_the_default_size() -> None:
    for ps in (4096, 16384, 65536):
        line = b'{"op": "__tlb_remove_page_size", "page": 1}'
        fast = validators(ps)["__tlb_remove_page_size"](orjson.loads(line))
        assert fast is not None
        assert (1, *fast) == parse_line(line, 1, "f", ps) == (
            1, CODES["__tlb_remove_page_size"], "__tlb_remove_page_size", 1, ps, 0)


# ----------------------------------------------------------------------
# Any formatting takes the same fast path
# ----------------------------------------------------------------------


def _reformat(data: bytes, how: str, seed: int = 5) -> bytes:
    rng = random.Random(seed)
    out = []
    for line in data.split(b"\n"):
        if not line or line.startswith(b"#"):
            out.append(line)
            continue
        obj = json.loads(line)
        if how == "default":
            out.append(json.dumps(obj).encode())
        elif how == "shuffled":
            keys = list(obj)
            rng.shuffle(keys)
            out.append(json.dumps({k: obj[k] for k in keys}, indent=None).encode())
        elif how == "hex":
            hexed = {k: hex(v) if k in ("addr", "start", "end", "page", "table") else v
                     for k, v in obj.items()}
            out.append(json.dumps(hexed, separators=(" ,", ":  ")).encode())
        elif how == "crlf":
            out.append(b"  \t" + line + b" \r")
    return b"\n".join(out)


@pytest.fixture(scope="module")
def generated() -> bytes:
    return b"".join(generate_ops(20_000, 2))


@pytest.mark.parametrize("how", ["default", "shuffled", "hex", "crlf"])
def test_any_formatting_compiles_the_same_without_the_careful_path(
    generated: bytes, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = parse(iter(generated.split(b"\n")), "compact", PS)
    text = _reformat(generated, how)
    careful_lines: list[bytes] = []

    def spy(raw: bytes, lineno: int, path: str, page_size: int) -> Compiled | None:
        careful_lines.append(raw)
        return parse_line(raw, lineno, path, page_size)

    monkeypatch.setattr(replay_input, "parse_line", spy)
    got = parse(iter(text.split(b"\n")), how, PS)
    assert got == want
    # Only the comment line and the final empty one went the careful way.
    assert [line.strip() for line in careful_lines] == [generated.split(b"\n")[0], b""]


def test_byte_order_mark_crlf_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"op": "tlb_gather_mmu", "fullmm": true}\r\n'
                     b'{ "addr" : "0x1000" , "op" : "tlb_remove_tlb_entry" }\r\n'
                     b'{"op":"tlb_finish_mmu"}\r\n')
    assert [op[1:] for op in parse_file(str(path), PS)] == [
        (CODES["tlb_gather_mmu"], "tlb_gather_mmu", True, None, None),
        (CODES["tlb_remove_tlb_entry"], "tlb_remove_tlb_entry", 0x1000, None, None),
        (CODES["tlb_finish_mmu"], "tlb_finish_mmu", False, None, None),
    ]


# ----------------------------------------------------------------------
# Messages (issue 12)
# ----------------------------------------------------------------------

BIG = "1" + "0" * 5000
BIG_SHOWN = f"{BIG[:77]}... (5,001 characters)"

#: (op, field, bounds) for every integer field of every op.
INT_FIELDS = [
    (op, name, replay_input.INT_KINDS[field.kind])
    for op, spec in TABLE.items()
    for name, field in spec.fields.items()
    if field.kind in replay_input.INT_KINDS
]


def _line_with(op: str, field: str, text: str) -> bytes:
    """A line of ``op`` with its other required fields valid and ``field``
    written as the JSON text ``text``."""
    parts = [f'"op": "{op}"']
    for name, spec in TABLE[op].fields.items():
        if name == field:
            parts.append(f'"{name}": {text}')
        elif spec.default is None:
            parts.append(f'"{name}": ' + json.dumps(_valid_value(spec.kind, random.Random(1))))
    return ("{" + ", ".join(parts) + "}").encode()


@pytest.mark.parametrize(("op", "field", "bounds"), INT_FIELDS,
                         ids=[f"{op}.{f}" for op, f, _ in INT_FIELDS])
def test_a_5000_digit_integer_is_out_of_range(op: str, field: str, bounds: Any) -> None:
    lo, hi, _hex_ok = bounds
    for text in (BIG, "-" + BIG):
        reason = through_parse(_line_with(op, field, text))
        assert reason == f"{op}: field {field!r}: {cut_like(text)} is outside {lo}..{hi}"
        assert len(reason) < 200
    assert cut_like(BIG) == BIG_SHOWN


def cut_like(text: str) -> str:
    return f"{text[:77]}... ({len(text):,} characters)" if len(text) > 80 else text


@pytest.mark.parametrize(("op", "field", "bounds"), INT_FIELDS,
                         ids=[f"{op}.{f}" for op, f, _ in INT_FIELDS])
def test_just_out_of_range_in_decimal(op: str, field: str, bounds: Any) -> None:
    lo, hi, _hex_ok = bounds
    for value in (hi + 1, lo - 1, MASK64 + 1, 1 << 64 | 1, -(1 << 63) - 1):
        if lo <= value <= hi:
            continue
        reason = through_parse(_line_with(op, field, str(value)))
        assert reason == f"{op}: field {field!r}: {value} is outside {lo}..{hi}"


def test_2_64_is_out_of_range_not_a_fraction() -> None:
    reason = through_parse(b'{"op": "tlb_remove_tlb_entry", "addr": 18446744073709551616}')
    assert reason == ("tlb_remove_tlb_entry: field 'addr': 18446744073709551616 is outside "
                      "0..18446744073709551615")
    reason = through_parse(b'{"op": "tlb_remove_tlb_entry", "addr": 18446744073709551616.0}')
    assert reason == ('tlb_remove_tlb_entry: field \'addr\' must be a non-negative integer or a '
                      '"0x..." string, not a number with a fraction or exponent')


def test_a_long_hex_string_is_cut_and_out_of_range() -> None:
    value = "0x1" + "0" * 6000
    reason = through_parse(_line_with("pte_free_tlb", "table", json.dumps(value)))
    assert reason == (f"pte_free_tlb: field 'table': {cut_like(repr(value))} is outside "
                      "0..18446744073709551615")
    assert "int_max_str_digits" not in reason
    # Short enough to show in decimal: shown in decimal, as before.
    reason = through_parse(b'{"op":"tlb_remove_pud_tlb_entry","addr":"0x10000000000000000"}')
    assert reason == ("tlb_remove_pud_tlb_entry: field 'addr': 18446744073709551616 is "
                      "outside 0..18446744073709551615")


@pytest.mark.parametrize("value", [" 0x400000", "0x400000 ", "0x400000\n", "\t0x400000",
                                   "0x400000\u00a0", "\u00a00x400000", "0x40_0000", "+0x400000",
                                   "-0x400000", "0x\uff14"])
def test_padded_or_signed_hex_strings_are_rejected(value: str) -> None:
    raw = json.dumps({"op": "tlb_remove_tlb_entry", "addr": value}).encode()
    assert through_parse(raw) == (f"tlb_remove_tlb_entry: field 'addr': {value!r} is not an "
                                  'integer nor a "0x..." string')


def test_long_values_are_cut_in_messages() -> None:
    name = "x" * 10_000_000
    cases = {
        json.dumps({"op": name}): f"unknown op {cut_like(repr(name))}",
        json.dumps({"op": "tlb_flush_mmu", name: 1}):
            f"tlb_flush_mmu: unknown field {cut_like(repr(name))} (fields: none)",
        json.dumps({"op": "tlb_start_vma", "start": 0, "end": 1, "flags": [name]}):
            f"tlb_start_vma: field 'flags': unknown flag {cut_like(repr(name))} "
            "(known: exec, hugetlb, pfnmap)",
        json.dumps({"op": "fail_alloc", "what": name}):
            f"fail_alloc: field 'what': unknown allocation kind {cut_like(repr(name))} "
            "(known: page_batch, table_batch)",
        json.dumps({"op": "tlb_remove_tlb_entry", "addr": "0x" + name}):
            f"tlb_remove_tlb_entry: field 'addr': {cut_like(repr('0x' + name))} is not an "
            'integer nor a "0x..." string',
    }
    for line, want in cases.items():
        assert through_parse(line.encode()) == want
    # A long list is cut too.
    reason = through_parse(json.dumps({"op": "fail_alloc", "what": [name] * 3}).encode())
    assert isinstance(reason, str) and len(reason) < 200
    assert reason.endswith(f"... ({3 * len(repr(name)) + 6:,} characters) "
                           "(known: page_batch, table_batch)")


def test_messages_of_odd_json() -> None:
    assert through_parse(b'{"op": "tlb_flush_mmu"') == (
        "not JSON: Expecting ',' delimiter: line 1 column 23 (char 22)")
    assert through_parse(("[" * 100_000).encode()) == "not JSON: nested too deeply"
    assert through_parse(BIG.encode()) == "not a JSON object but an integer"
    assert through_parse(b'{"op": ' + BIG.encode() + b"}") == (
        "field 'op' must be a string, not an integer")
    assert through_parse(b'{"op": "tlb_gather_mmu", "fullmm": ' + BIG.encode() + b"}") == (
        "tlb_gather_mmu: field 'fullmm' must be true or false, not an integer")
    assert through_parse(b'{"op": "tlb_remove_tlb_entry", "addr": NaN}') == (
        "tlb_remove_tlb_entry: field 'addr' must be a non-negative integer or a \"0x...\" "
        "string, not a number with a fraction or exponent")
    assert through_parse(b'{"op": "tlb_remove_tlb_entry", "addr": 1e400}').endswith(
        "not a number with a fraction or exponent")
    assert through_parse(b'{"op": "\\ud800"}') == "unknown op '\\ud800'"
    assert through_parse(b'{"op": "tlb_flush_mmu", "x\xe9": 1}') == "not UTF-8 text (byte 27)"
    # Duplicate keys: the last one counts, as for json and orjson.
    assert through_parse(b'{"op": "tlb_remove_tlb_entry", "addr": -1, "addr": 4096}') == (
        7, CODES["tlb_remove_tlb_entry"], "tlb_remove_tlb_entry", 4096, None, None)


# ----------------------------------------------------------------------
# The revised contract: a huge entry's size is an unsigned long
# ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, MASK32, MASK32 + 1, 1 << 40, MASK64])
def test_huge_entry_size_takes_an_unsigned_long(size: int) -> None:
    for text in (str(size), json.dumps(hex(size))):
        line = f'{{"op": "tlb_remove_huge_tlb_entry", "addr": 4096, "size": {text}}}'
        assert through_parse(line.encode()) == (
            7, CODES["tlb_remove_huge_tlb_entry"], "tlb_remove_huge_tlb_entry", 4096, size, None)


@pytest.mark.parametrize(("op", "field"), [("tlb_change_page_size", "size"),
                                           ("__tlb_remove_page_size", "size"),
                                           ("tlb_remove_page_size", "size")])
def test_other_sizes_stay_unsigned_int(op: str, field: str) -> None:
    line = _line_with(op, field, str(MASK32 + 1))
    assert through_parse(line) == f"{op}: field 'size': 4294967296 is outside 1..4294967295"


# ----------------------------------------------------------------------
# The compiled program
# ----------------------------------------------------------------------


def test_repeated_lines_share_their_op_and_keep_their_line() -> None:
    lines = [GATHER, b'{"op": "tlb_batch_rmap"}', b"", b'{"op": "tlb_batch_rmap"}',
             b'{"op":"tlb_remove_tlb_entry","addr":4096}', b'{"op": "tlb_batch_rmap"}']
    program = parse(iter(lines), "f", PS)
    assert list(program.lines) == [1, 2, 4, 5, 6]
    assert program.ops[1] is program.ops[2] is program.ops[4]
    assert program[2] == (4, CODES["tlb_batch_rmap"], "tlb_batch_rmap", None, None, None)
    assert program[1:3] == [program[1], program[2]]
    assert replay_input.Program.of(list(program)) == program
    assert len(program) == 5 and list(program)[-1][0] == 6


def test_a_bug_reports_the_line_of_its_op(tmp_path: Path) -> None:
    from conftest import machine
    from mmugather.core.replay import run

    path = tmp_path / "bug.jsonl"
    path.write_text('{"op": "tlb_gather_mmu"}\n\n{"op": "tlb_batch_rmap"}\n'
                    '{"op": "tlb_batch_rmap"}\n# no entry cleared\n'
                    '{"op": "__tlb_remove_page_size", "page": 1}\n{"op": "tlb_batch_rmap"}\n')
    m, _c = machine("generic-smp")
    program = parse_file(str(path), PS)
    result = run(program, m)
    assert (result.bug_line, result.ops) == (6, 3)
    # The same, given as plain tuples.
    m, _c = machine("generic-smp")
    assert run(list(program), m) == result


def test_a_value_too_deep_to_show_is_named_not_shown() -> None:
    assert replay_input.show([1]) == "[1]"
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert replay_input.show(deep) == "(a list nested too deeply to show)"
