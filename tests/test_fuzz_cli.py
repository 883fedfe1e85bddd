"""A mutation fuzzer over the three inputs users hand the CLI: replay files,
scenarios and event logs.  Each example mutates a valid seed (numbers made
huge, negative, hex strings or padded; strings made long; junk bytes, invalid
UTF-8, deep nesting; lines cut, doubled or dropped) and runs the command
in-process.  Whatever the input:

- the exit status is 0, 1 or 2, and nothing escapes ``main()`` (no
  traceback);
- on exit 2, stdout is empty, no output file (nor temporary) is left, and
  stderr is one line, ``mmugather: FILE:LINE: reason`` (JSON Lines) or
  ``mmugather: FILE: ...`` (scenarios), of a bounded length.

Bounded and deterministic (``derandomize``), so it stays fast and never
flaky; the issue's reproducers are regression tests elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmugather import cli

ROOT = Path(__file__).resolve().parent.parent
REPLAYS = ROOT / "tests" / "data" / "replay"

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])

NUMBERS = [
    b"18446744073709551616", b"18446744073709551615", b"1" + b"0" * 5000, b"9" * 4000,
    b"-1", b"0", b"1.5", b"1e999", b"true", b"null", b"[]", b"{}", b'"0x400000"',
    b'" 0x400000"', b'"0x400000\\n"', b'"0x400000\\u00a0"', b'"0x' + b"f" * 5000 + b'"',
    b"0x7fffffffffff", b"0o17", b"4096", b"2097152",
]
STRINGS = [b'"' + b"x" * 100_000 + b'"', b'""', b'"\\u0000"', b'"tlb_flush_mmu"', b'"pud"',
           b'"present"', b'"file"', b'"hugetlb"', b'"exit"', b'"range"', b"3"]
JUNK = [b"\xff\xfe", b"\x00", b"[" * 1000, b"{" * 1000, b"{", b"}", b"\n", b"#", b'"', b"=",
        b"[[vma]]\n", b'{"op":"tlb_gather_mmu"}\n', b'{"event":"tlb_flush"}\n', b",", b"\r"]

_NUMBER = re.compile(rb"0x[0-9a-fA-F]+|-?\d+")
_STRING = re.compile(rb'"[^"\n]*"')


def mutate(data: st.DataObject, text: bytes) -> bytes:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        kind = data.draw(st.sampled_from(
            ["number", "number", "string", "junk", "cut", "dup_line", "del_line", "swap_lines"]),
            label="kind")
        if kind in ("number", "string"):
            spans = list((_NUMBER if kind == "number" else _STRING).finditer(text))
            if not spans:
                continue
            m = spans[data.draw(st.integers(0, len(spans) - 1), label="token")]
            new = data.draw(st.sampled_from(NUMBERS if kind == "number" else STRINGS))
            text = text[:m.start()] + new + text[m.end():]
        elif kind == "junk":
            at = data.draw(st.integers(0, len(text)), label="at")
            text = text[:at] + data.draw(st.sampled_from(JUNK)) + text[at:]
        elif kind == "cut":
            text = text[:data.draw(st.integers(0, len(text)), label="cut")]
        else:
            lines = text.split(b"\n")
            i = data.draw(st.integers(0, len(lines) - 1), label="line")
            if kind == "dup_line":
                lines.insert(i, lines[i])
            elif kind == "del_line":
                del lines[i]
            else:
                j = data.draw(st.integers(0, len(lines) - 1), label="other")
                lines[i], lines[j] = lines[j], lines[i]
            text = b"\n".join(lines)
    return text


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured; anything it raises
    fails the example."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    out.flush()
    return status, out.buffer.getvalue().decode("utf-8", "replace"), err.getvalue()  # type: ignore[attr-defined]


def check(status: int, out: str, err: str, source: Path, output: Path, jsonl: bool) -> None:
    assert status in (0, 1, 2), (status, err[:500])
    assert "Traceback" not in err, err[:2000]
    leftovers = sorted(p.name for p in output.parent.iterdir()
                       if p.name.endswith(".part"))
    assert leftovers == [], leftovers
    if status != 2:
        return
    assert out == "", out[:500]
    assert not output.exists()
    assert err.endswith("\n") and err.count("\n") == 1, err[:500]
    # Quoted values are cut to about 80 characters; a number may still be
    # echoed whole, and Python reads at most 4,300 digits.
    assert len(err) < 5000, f"{len(err):,} characters: {err[:300]}..."
    where = re.escape(str(source))
    if jsonl:
        # A line number, but for a file that holds no event at all.
        assert re.match(rf"mmugather: {where}:\d+: ", err) or err == (
            f"mmugather: {source}: no events in the log\n"), err
    else:
        assert re.match(rf"mmugather: {where}(:\d+)?: ", err), err


def replay_seeds() -> list[bytes]:
    return [(REPLAYS / "generic-smp" / f"{name}.ops.jsonl").read_bytes()
            for name in ("flow_exit_tiny", "flow_madvise_small", "flow_munmap_small",
                         "random_00")]


@settings(SETTINGS, max_examples=250)
@given(st.data(), st.sampled_from(replay_seeds()),
       st.sampled_from([[], ["--check"], ["--format", "console"],
                        ["--check", "--format", "console"], ["--arch", "s390", "--detail"]]))
def test_fuzz_replay(data: st.DataObject, seed: bytes, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / "calls.jsonl", Path(tmp) / "out" / "events.jsonl"
        output.parent.mkdir()
        source.write_bytes(mutate(data, seed))
        status, out, err = run(["replay", str(source), "--events", str(output), *extra])
        check(status, out, err, source, output, jsonl=True)


SCENARIO = b"""name = "fuzz"
description = "a little of everything"

[[vma]]
start = 0x400000
end = 0x800000
populate = [{ pages = 64, dirty = true },
            { offset = 0x100000, pages = 16, every = 4, state = "swap" }]

[[vma]]
start = 0x1000000
end = 0x1400000
kind = "file-shared"
file = "data"
populate = [{ pages = 512, folio_order = 4, dirty = true }]

[[vma]]
start = 0x40000000
end = 0x40400000
kind = "hugetlb"
populate = [{ pages = 512 }]

[[vma]]
start = 0x2000000
end = 0x2400000
populate = [{ pages = 512, folio_order = "pmd", pmd_mapped = true }]

[[op]]
kind = "munmap"
start = 0x500000
end = 0x600000

[[op]]
kind = "exit"
"""


@SETTINGS
@given(st.data(), st.sampled_from([["--arch", "up"], ["--arch", "s390"],
                                   ["--arch", "generic-smp", "--strategy", "ranges"]]))
def test_fuzz_scenario(data: st.DataObject, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / "s.toml", Path(tmp) / "out" / "events.jsonl"
        output.parent.mkdir()
        source.write_bytes(mutate(data, SCENARIO))
        status, out, err = run(["run", str(source), "--events", str(output), "--max-pages",
                                "20000", *extra])
        check(status, out, err, source, output, jsonl=False)


@pytest.fixture(scope="module")
def log_seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    tmp = tmp_path_factory.mktemp("seeds")
    small = tmp / "small.toml"
    small.write_bytes(SCENARIO.replace(b"pages = 512, folio_order = 4", b"pages = 32, "
                                       b"folio_order = 4"))
    seeds = []
    for argv in (["run", str(small), "--arch", "s390"], ["run", str(small), "--arch", "up"],
                 ["replay", str(REPLAYS / "generic-smp" / "flow_munmap_small.ops.jsonl"),
                  "--check", "--detail"]):
        log = tmp / "log.jsonl"
        assert cli.main([*argv, "--events", str(log)]) in (0, 1)
        seeds.append(log.read_bytes())
    return seeds


def test_fuzz_event_log(log_seeds: list[bytes]) -> None:
    @SETTINGS
    @given(st.data(), st.sampled_from(log_seeds), st.sampled_from([[], ["--json"]]))
    def fuzz(data: st.DataObject, seed: bytes, extra: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            source, output = Path(tmp) / "log.jsonl", Path(tmp) / "out" / "trace.json"
            output.parent.mkdir()
            source.write_bytes(mutate(data, seed))
            status, out, err = run(["analyze", str(source), "--trace", str(output), *extra])
            check(status, out, err, source, output, jsonl=True)

    fuzz()
