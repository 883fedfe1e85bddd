"""``mmugather replay`` as a command: rejected input, comments, hex, exit statuses.

Rejected input (replay-v1): one line on standard error naming ``FILE:LINE``
where a line applies and the reason, exit status 2, nothing on standard
output, and no ``--events`` file created: the whole file is validated before
anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SMP_RMAP = ("generic-smp", "page-size", "rcu-table-free")


def mmugather(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mmugather", *args],
        capture_output=True,
        timeout=120,
        env=env,
    )


def write(tmp_path: Path, lines: list[str], name: str = "calls.ops.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def events_of(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def contract_of(stdout: bytes) -> list[dict[str, Any]]:
    from mmugather.core.events import CONTRACT_EVENTS

    return [e for e in events_of(stdout) if e["event"] in CONTRACT_EVENTS]


def assert_rejected(proc: subprocess.CompletedProcess[bytes], events: Path, *needles: str) -> str:
    """Exit 2, empty stdout, one stderr line holding every needle, no events file."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert proc.stdout == b""
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    assert not events.exists()
    return err


GATHER = '{"op":"tlb_gather_mmu"}'
ENTRY = '{"op":"tlb_remove_tlb_entry","addr":4096}'

#: (id, the offending line, words the message must hold). The line goes in at
#: line 4 of a file that opens a gather at line 2 after a comment at line 1.
BAD_LINES: list[tuple[str, str, tuple[str, ...]]] = [
    ("not-json", '{"op": "tlb_flush_mmu"', ("json",)),
    ("not-json-garbage", "tlb_flush_mmu()", ("json",)),
    ("array", '["tlb_flush_mmu"]', ("object",)),
    ("string", '"tlb_flush_mmu"', ("object",)),
    ("number", "42", ("object",)),
    ("no-op", '{"addr": 4096}', ("op",)),
    ("op-not-string", '{"op": 7}', ("op",)),
    ("unknown-op", '{"op":"tlb_frobnicate"}', ("tlb_frobnicate",)),
    ("unknown-field", '{"op":"tlb_flush_mmu","force":true}', ("force",)),
    ("unknown-field-typo", '{"op":"tlb_remove_tlb_entry","address":4096}', ("address",)),
    ("missing-addr", '{"op":"tlb_remove_tlb_entry"}', ("addr", "missing")),
    ("missing-page", '{"op":"__tlb_remove_page_size","size":4096}', ("page", "missing")),
    ("missing-size", '{"op":"tlb_change_page_size"}', ("size", "missing")),
    ("missing-vma-end", '{"op":"tlb_start_vma","start":0}', ("end", "missing")),
    ("missing-what", '{"op":"fail_alloc"}', ("what", "missing")),
    (
        "string-for-bool",
        '{"op":"__tlb_remove_page_size","page":1,"delay_rmap":"no"}',
        ("delay_rmap",),
    ),
    ("int-for-bool", '{"op":"__tlb_remove_page_size","page":1,"delay_rmap":0}', ("delay_rmap",)),
    ("float-for-addr", '{"op":"tlb_remove_tlb_entry","addr":4096.0}', ("addr",)),
    ("exponent-for-addr", '{"op":"tlb_remove_tlb_entry","addr":4e3}', ("addr",)),
    ("float-for-size", '{"op":"tlb_change_page_size","size":4096.5}', ("size",)),
    ("bool-for-page", '{"op":"__tlb_remove_page_size","page":true}', ("page",)),
    ("bool-for-addr", '{"op":"tlb_remove_pmd_tlb_entry","addr":false}', ("addr",)),
    ("bool-for-size", '{"op":"tlb_change_page_size","size":true}', ("size",)),
    ("bool-for-count", '{"op":"fail_alloc","what":"page_batch","count":true}', ("count",)),
    ("decimal-string-addr", '{"op":"tlb_remove_tlb_entry","addr":"4096"}', ("addr",)),
    ("bad-hex-addr", '{"op":"tlb_remove_tlb_entry","addr":"0xfoo"}', ("addr",)),
    ("null-addr", '{"op":"tlb_remove_tlb_entry","addr":null}', ("addr",)),
    ("negative-addr", '{"op":"tlb_remove_tlb_entry","addr":-4096}', ("addr",)),
    ("addr-2-64", '{"op":"tlb_remove_tlb_entry","addr":18446744073709551616}', ("addr",)),
    ("hex-addr-2-64", '{"op":"tlb_remove_pud_tlb_entry","addr":"0x10000000000000000"}', ("addr",)),
    ("negative-page", '{"op":"__tlb_remove_page_size","page":-1}', ("page",)),
    ("page-2-64", '{"op":"tlb_remove_page_size","page":18446744073709551616}', ("page",)),
    ("table-2-64", '{"op":"pte_free_tlb","table":18446744073709551616,"addr":0}', ("table",)),
    ("negative-table", '{"op":"pmd_free_tlb","table":-5,"addr":0}', ("table",)),
    ("vma-start-2-64", '{"op":"tlb_end_vma","start":18446744073709551616,"end":0}', ("start",)),
    ("size-0", '{"op":"tlb_change_page_size","size":0}', ("size",)),
    # The huge entry's size is an unsigned long (replay-v1 revised 2026-12-02).
    ("huge-size-0", '{"op":"tlb_remove_huge_tlb_entry","addr":0,"size":0}', ("size",)),
    (
        "huge-size-2-64",
        '{"op":"tlb_remove_huge_tlb_entry","addr":0,"size":18446744073709551616}',
        ("size", "18446744073709551616 is outside 1..18446744073709551615"),
    ),
    ("size-2-32", '{"op":"tlb_change_page_size","size":4294967296}', ("size",)),
    ("page-size-2-32", '{"op":"__tlb_remove_page_size","page":1,"size":4294967296}', ("size",)),
    ("negative-size", '{"op":"tlb_remove_page_size","page":1,"size":-4096}', ("size",)),
    ("unknown-flag", '{"op":"tlb_start_vma","start":0,"end":4096,"flags":["shared"]}', ("shared",)),
    ("flags-not-list", '{"op":"tlb_flush_rmaps","start":0,"end":4096,"flags":"exec"}', ("flags",)),
    ("unknown-what", '{"op":"fail_alloc","what":"pte_table"}', ("pte_table",)),
    ("negative-count", '{"op":"fail_alloc","what":"table_batch","count":-1}', ("count",)),
    ("nested-gather", '{"op":"tlb_gather_mmu","fullmm":true}', ("tlb_gather_mmu", "nest")),
]


@pytest.mark.parametrize(
    ("line", "needles"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_bad_line_is_rejected(tmp_path: Path, line: str, needles: tuple[str, ...]) -> None:
    path = write(
        tmp_path,
        ["# a comment counts as a line", GATHER, ENTRY, line, ENTRY, '{"op":"tlb_finish_mmu"}'],
    )
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--arch", "generic-smp", "--events", str(events))
    assert_rejected(proc, events, f"{path}:4", *needles)


@pytest.mark.parametrize(
    ("lines", "lineno", "needles"),
    [
        # An op other than tlb_batch_rmap / rcu_grace_period / fail_alloc before a gather.
        (['{"op":"tlb_flush_mmu"}'], 1, ("tlb_flush_mmu", "outside")),
        ([ENTRY], 1, ("tlb_remove_tlb_entry", "outside")),
        (['{"op":"tlb_finish_mmu"}'], 1, ("tlb_finish_mmu", "outside")),
        # ... and after the gather was finished.
        (
            [GATHER, '{"op":"tlb_finish_mmu"}', "", '{"op":"pte_free_tlb","table":1,"addr":0}'],
            4,
            ("pte_free_tlb", "outside"),
        ),
        (
            [GATHER, '{"op":"tlb_finish_mmu"}', '{"op":"tlb_finish_mmu"}'],
            3,
            ("tlb_finish_mmu", "outside"),
        ),
        ([GATHER, "   ", GATHER], 3, ("tlb_gather_mmu", "nest")),
    ],
    ids=["flush-first", "entry-first", "finish-first", "after-finish", "finish-twice", "nested"],
)
def test_op_outside_a_gather_is_rejected(
    tmp_path: Path, lines: list[str], lineno: int, needles: tuple[str, ...]
) -> None:
    path = write(tmp_path, lines)
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--arch", "rcu-table-free", "--events", str(events))
    assert_rejected(proc, events, f"{path}:{lineno}", *needles)


def test_ops_allowed_outside_a_gather(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            '{"op":"tlb_batch_rmap"}',
            '{"op":"rcu_grace_period"}',
            '{"op":"fail_alloc","what":"page_batch","count":0}',
        ],
    )
    proc = mmugather("replay", str(path), "--arch", "up")
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == [{"event": "return", "op": "tlb_batch_rmap", "value": False}]


def test_unknown_arch(tmp_path: Path) -> None:
    path = write(tmp_path, [GATHER, '{"op":"tlb_finish_mmu"}'])
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--arch", "vax", "--events", str(events))
    assert_rejected(proc, events, "vax", "arch")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.ops.jsonl"
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--arch", "generic-smp", "--events", str(events))
    assert_rejected(proc, events, str(path), "no such file")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "a-directory"
    path.mkdir()
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--arch", "generic-smp", "--events", str(events))
    assert_rejected(proc, events, str(path), "directory")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.ops.jsonl"
    path.write_bytes(GATHER.encode() + b'\n{"op":"tlb_flush_mmu","x\xe9":1}\n')
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--events", str(events))
    assert_rejected(proc, events, f"{path}:2")


@pytest.mark.parametrize(
    ("arch", "size"),
    [("generic-smp", "8192"), ("rcu-table-free", "2048"), ("s390", "16384"), ("s390", "65536")],
)
def test_unsupported_page_size(tmp_path: Path, arch: str, size: str) -> None:
    path = write(tmp_path, [GATHER, '{"op":"tlb_finish_mmu"}'])
    events = tmp_path / "events.jsonl"
    proc = mmugather(
        "replay", str(path), "--arch", arch, "--page-size", size, "--events", str(events)
    )
    assert_rejected(proc, events, size)


# ----------------------------------------------------------------------
# Accepted input
# ----------------------------------------------------------------------

MUNMAP = [
    GATHER,
    '{"op":"tlb_start_vma","start":4194304,"end":8388608,"flags":["exec"]}',
    '{"op":"tlb_change_page_size","size":4096}',
    '{"op":"tlb_discard_rmaps"}',
    '{"op":"tlb_remove_tlb_entry","addr":4194304}',
    '{"op":"__tlb_remove_page_size","page":77}',
    '{"op":"tlb_flush_rmaps","start":4194304,"end":8388608,"flags":["exec"]}',
    '{"op":"pte_free_tlb","table":5,"addr":4194304}',
    '{"op":"tlb_end_vma","start":4194304,"end":8388608,"flags":["exec"]}',
    '{"op":"tlb_finish_mmu"}',
]

MUNMAP_EFFECTS = [
    {"event": "flush_cache_range", "start": 0x400000, "end": 0x800000},
    {"event": "return", "op": "__tlb_remove_page_size", "value": False},
    {"event": "rmap_remove", "page": 77},
    {
        "event": "tlb_flush",
        "scope": "range",
        "start": 0x400000,
        "end": 0x401000,
        "exec": True,
        "huge": False,
        "freed_tables": True,
        "levels": ["pte", "pmd"],
    },
    {"event": "mmu_notifier_invalidate", "start": 0x400000, "end": 0x401000},
    {"event": "free_pages", "pages": [77, 5]},
]


def test_replay_writes_the_effects(tmp_path: Path) -> None:
    path = write(tmp_path, MUNMAP)
    proc = mmugather("replay", str(path), "--arch", "generic-smp")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    assert contract_of(proc.stdout) == MUNMAP_EFFECTS


def test_blank_and_comment_lines_are_ignored(tmp_path: Path) -> None:
    noisy = ["# recorded by hand", ""]
    for line in MUNMAP:
        noisy += [line, "", "   ", "  # between ops", "\t"]
    path = write(tmp_path, noisy)
    proc = mmugather("replay", str(path), "--arch", "generic-smp")
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == MUNMAP_EFFECTS


def test_hex_strings_for_addresses(tmp_path: Path) -> None:
    hexed = [
        GATHER,
        '{"op":"tlb_start_vma","start":"0x400000","end":"0x800000","flags":["exec"]}',
        '{"op":"tlb_change_page_size","size":4096}',
        '{"op":"tlb_discard_rmaps"}',
        '{"op":"tlb_remove_tlb_entry","addr":"0x400000"}',
        '{"op":"__tlb_remove_page_size","page":"0x4d"}',
        '{"op":"tlb_flush_rmaps","start":"0x400000","end":"0x800000","flags":["exec"]}',
        '{"op":"pte_free_tlb","table":"0x5","addr":"0x400000"}',
        '{"op":"tlb_end_vma","start":"0x400000","end":"0x800000","flags":["exec"]}',
        '{"op":"tlb_finish_mmu"}',
    ]
    path = write(tmp_path, hexed)
    proc = mmugather("replay", str(path), "--arch", "generic-smp")
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == MUNMAP_EFFECTS


def test_top_of_the_address_space_in_hex(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            '{"op":"tlb_gather_mmu","fullmm":true}',
            '{"op":"tlb_remove_tlb_entry","addr":"0xfffffffffffff000"}',
            '{"op":"tlb_finish_mmu"}',
        ],
    )
    proc = mmugather("replay", str(path), "--arch", "up")
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == [
        {
            "event": "tlb_flush",
            "scope": "mm",
            "exec": False,
            "huge": False,
            "freed_tables": False,
            "levels": ["pte"],
        },
        {"event": "mmu_notifier_invalidate", "start": (1 << 64) - 4096, "end": (1 << 64) - 1},
    ]


def test_events_option_writes_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MUNMAP)
    events = tmp_path / "out" / "events.jsonl"
    events.parent.mkdir()
    proc = mmugather("replay", str(path), "--arch", "generic-smp", "--events", str(events))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert contract_of(events.read_bytes()) == MUNMAP_EFFECTS


def test_a_bug_exits_1(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            GATHER,
            '{"op":"tlb_batch_rmap"}',
            "# no PTE cleared: tlb->end is 0",
            '{"op":"__tlb_remove_page_size","page":3}',
            '{"op":"tlb_batch_rmap"}',
            '{"op":"tlb_finish_mmu"}',
        ],
    )
    proc = mmugather("replay", str(path), "--arch", "rcu-table-free")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and f"{path}:4" in err, err
    got = contract_of(proc.stdout)
    assert [e["event"] for e in got] == ["return", "bug"]
    assert events_of(proc.stdout)[-1]["event"] == "bug"


def test_a_bug_exits_1_with_events_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            GATHER,
            ENTRY,
            '{"op":"fail_alloc","what":"page_batch"}',
            *[f'{{"op":"__tlb_remove_page_size","page":{p}}}' for p in range(1, 10)],
            '{"op":"tlb_finish_mmu"}',
        ],
    )
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--arch", "up", "--events", str(events))
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert f"{path}:12" in proc.stderr.decode()
    ret = {"event": "return", "op": "__tlb_remove_page_size"}
    assert contract_of(events.read_bytes()) == [
        *[{**ret, "value": False}] * 7,
        {"event": "batch_alloc", "what": "page_batch", "ok": False},
        {**ret, "value": True},
        {"event": "bug", "what": contract_of(events.read_bytes())[-1]["what"]},
    ]


def test_default_arch_from_environment(tmp_path: Path, arch: str) -> None:
    path = write(tmp_path, ['{"op":"tlb_batch_rmap"}'])
    env = dict(os.environ, MMUGATHER_ARCH=arch)
    proc = mmugather("replay", str(path), env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == [
        {"event": "return", "op": "tlb_batch_rmap", "value": arch in SMP_RMAP}
    ]


def test_page_size_option(tmp_path: Path) -> None:
    # --page-size sets the default `size` of page ops and the PTE entry size.
    path = write(
        tmp_path,
        [
            '{"op":"tlb_gather_mmu"}',
            '{"op":"tlb_change_page_size","size":16384}',
            '{"op":"tlb_remove_tlb_entry","addr":"0x10000"}',
            '{"op":"__tlb_remove_page_size","page":1}',
            '{"op":"tlb_finish_mmu"}',
        ],
    )
    proc = mmugather("replay", str(path), "--arch", "page-size", "--page-size", "16384")
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == [
        {"event": "return", "op": "__tlb_remove_page_size", "value": False},
        {
            "event": "tlb_flush",
            "scope": "range",
            "start": 0x10000,
            "end": 0x14000,
            "exec": False,
            "huge": False,
            "freed_tables": False,
            "levels": ["pte"],
            "page_size": 16384,
        },
        {"event": "mmu_notifier_invalidate", "start": 0x10000, "end": 0x14000},
        {"event": "free_pages", "pages": [1]},
    ]


def test_help() -> None:
    top = mmugather("--help")
    assert top.returncode == 0
    assert b"replay" in top.stdout
    sub = mmugather("replay", "--help")
    assert sub.returncode == 0
    for option in (b"--arch", b"--events", b"--page-size", b"FILE"):
        assert option in sub.stdout


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    """Files saved by Windows editors: a UTF-8 BOM and CRLF line ends."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"op":"tlb_gather_mmu","fullmm":true}\r\n'
                     b'{"op":"tlb_finish_mmu"}\r\n')
    out = subprocess.run([sys.executable, "-m", "mmugather", "replay", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line)["event"] for line in out.stdout.splitlines()]
    assert "tlb_flush" not in events  # nothing recorded: no flush
    assert events[0] == "gather_begin" and events[-1] == "gather_end"


# ----------------------------------------------------------------------
# Issue 12: odd values are rejected with a short reason, never a traceback
# ----------------------------------------------------------------------

_BIG = "1" + "0" * 5000
_MAX = "0..18446744073709551615"

ODD_VALUES: list[tuple[str, str, str]] = [
    # A 5,000-digit integer in each op's integer field (the old fast path: int()).
    *(
        (f"huge-{op}", line, f"{_BIG[:77]}... (5,001 characters) is outside ")
        for op, line in (
            ("entry", f'{{"op":"tlb_remove_tlb_entry","addr":{_BIG}}}'),
            ("queue", f'{{"op":"__tlb_remove_page_size","page":{_BIG}}}'),
            ("remove", f'{{"op":"tlb_remove_page_size","page":{_BIG}}}'),
            ("size", f'{{"op":"tlb_change_page_size","size":{_BIG}}}'),
            ("pmd", f'{{"op":"tlb_remove_pmd_tlb_entry","addr":{_BIG}}}'),
            ("pud", f'{{"op":"tlb_remove_pud_tlb_entry","addr":{_BIG}}}'),
            ("spaced", f'{{"op": "tlb_remove_tlb_entry", "addr": {_BIG}}}'),
        )
    ),
    (
        "2-64-decimal",
        '{"op": "tlb_remove_tlb_entry", "addr": 18446744073709551616}',
        f"field 'addr': 18446744073709551616 is outside {_MAX}",
    ),
    (
        "long-hex",
        '{"op":"tlb_remove_tlb_entry","addr":"0x1' + "0" * 6000 + '"}',
        "(6,005 characters) is outside " + _MAX,
    ),
    ("hex-leading-space", '{"op":"tlb_remove_tlb_entry","addr":" 0x400000"}', "' 0x400000'"),
    ("hex-newline", '{"op":"tlb_remove_tlb_entry","addr":"0x400000\\n"}', "'0x400000\\n'"),
    ("hex-nbsp", '{"op":"tlb_remove_tlb_entry","addr":"0x400000\\u00a0"}', "'0x400000\\xa0'"),
]


@pytest.mark.parametrize(("line", "needle"), [c[1:] for c in ODD_VALUES],
                         ids=[c[0] for c in ODD_VALUES])
def test_odd_values_are_rejected_in_one_short_line(
    tmp_path: Path, line: str, needle: str
) -> None:
    path = write(tmp_path, [GATHER, line, '{"op":"tlb_finish_mmu"}'])
    events = tmp_path / "events.jsonl"
    proc = mmugather("replay", str(path), "--events", str(events))
    err = assert_rejected(proc, events, f"{path}:2: ", needle)
    assert "Traceback" not in err and "int_max_str_digits" not in err
    assert "not JSON" not in err and "fraction" not in err
    assert len(err) < len(str(path)) + 200


def test_a_10_megabyte_op_name_gives_a_short_line(tmp_path: Path) -> None:
    name = "x" * 10_000_000
    path = write(tmp_path, [json.dumps({"op": name})])
    events = tmp_path / "events.jsonl"
    err = assert_rejected(mmugather("replay", str(path), "--events", str(events)), events,
                          f"{path}:1: unknown op 'xxxx", "(10,000,002 characters)")
    assert len(err) < len(str(path)) + 200


def test_huge_entry_size_is_an_unsigned_long(tmp_path: Path) -> None:
    """replay-v1 revised 2026-12-02: huge_page_size() is an unsigned long; the
    level follows the whole size, the range takes its low 32 bits."""
    path = write(
        tmp_path,
        [
            GATHER,
            '{"op":"tlb_remove_huge_tlb_entry","addr":"0x40000000","size":4294967296}',
            '{"op": "tlb_remove_huge_tlb_entry", "addr": "0x8000000000", '
            '"size": "0xffffffffffffffff"}',
            '{"op":"tlb_finish_mmu"}',
        ],
    )
    proc = mmugather("replay", str(path), "--arch", "generic-smp")
    assert proc.returncode == 0, proc.stderr.decode()
    assert contract_of(proc.stdout) == [
        {
            "event": "tlb_flush",
            "scope": "range",
            "start": 0x40000000,
            "end": 0x8000000000 + 0xFFFFFFFF,
            "exec": False,
            "huge": False,
            "freed_tables": False,
            "levels": ["pud", "p4d"],
        },
        {"event": "mmu_notifier_invalidate", "start": 0x40000000, "end": 0x8000000000 + 0xFFFFFFFF},
    ]
