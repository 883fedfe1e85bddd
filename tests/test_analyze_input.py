"""``mmugather analyze`` on logs it did not write, or that were cut or
edited: every line is checked before it is counted, and a bad one is
``FILE:LINE: reason`` (exit 2, stdout empty, no trace file), never a
traceback.  A replay's log says what it holds and shows only what it can
count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mmugather.core.stats import CALLER_ROWS, ROWS

from mmugather import cli
from mmugather.cli.analyze import FIELDS, INT, INTS, NAT, RANGES, STR

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ROOT / "tests" / "data" / "replay" / "generic-smp" / "flow_munmap_small.ops.jsonl"

#: A valid value of each field kind, and one of another kind.
GOOD: dict[Any, Any] = {INT: 4096, NAT: 3, STR: "x", "bool": True, INTS: [1, 2],
                        RANGES: [[1, 2]]}
BAD: dict[Any, list[Any]] = {INT: ["4096", None, True, 1.5], NAT: [-1, "3", [3]],
                             STR: [1, None], "bool": [1, "true"], INTS: ["abc", [1, "2"], 7],
                             RANGES: [[[1]], [1, 2], "x"]}


def good_event(name: str) -> dict[str, Any]:
    ev: dict[str, Any] = {"event": name}
    for field, kind in FIELDS[name].items():
        ev[field] = kind[0] if isinstance(kind, tuple) else GOOD[kind]
    if name == "tlb_flush":
        ev.update(scope="range", start=0x400000, end=0x401000)
    return ev


def analyze(capsys: pytest.CaptureFixture[str], tmp_path: Path,
            lines: list[Any]) -> tuple[int, str, str, Path]:
    log = tmp_path / "log.jsonl"
    log.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    trace = tmp_path / "t.json"
    status = cli.main(["analyze", str(log), "--trace", str(trace)])
    out = capsys.readouterr()
    return status, out.out, out.err, log


def assert_rejected(status: int, out: str, err: str, log: Path, where: str) -> None:
    assert (status, out) == (2, "")
    assert err.startswith(f"mmugather: {log}:{where}")
    assert err.count("\n") == 1 and len(err) < 300
    assert not (log.parent / "t.json").exists()
    assert [p.name for p in log.parent.iterdir()] == ["log.jsonl"]


CASES = [(name, field) for name, fields in FIELDS.items() for field in fields]


@pytest.mark.parametrize(("name", "field"), CASES, ids=[f"{n}.{f}" for n, f in CASES])
def test_a_missing_field(name: str, field: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    ev = good_event(name)
    del ev[field]
    status, out, err, log = analyze(capsys, tmp_path, [{"event": "gather_begin"}, ev])
    assert_rejected(status, out, err, log, "2: ")
    assert err.endswith(f": {name}: field {field!r} is missing\n")


@pytest.mark.parametrize(("name", "field"), CASES, ids=[f"{n}.{f}" for n, f in CASES])
def test_a_field_of_the_wrong_type(name: str, field: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    kind = FIELDS[name][field]
    for value in ["nope", 7] if isinstance(kind, tuple) else BAD[kind]:
        ev = good_event(name)
        ev[field] = value
        status, out, err, log = analyze(capsys, tmp_path, [ev])
        assert_rejected(status, out, err, log, "1: ")
        assert f": {name}: field {field!r} must be " in err


def test_every_checked_event_is_counted_when_well_formed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err, _ = analyze(capsys, tmp_path, [good_event(n) for n in FIELDS])
    assert (status, err) == (0, "")
    assert "TLB flushes: range" in out


@pytest.mark.parametrize(("line", "reason"), [
    ("[1, 2, 3]", "not an event (an object with an 'event' name)"),
    ('"text"', "not an event (an object with an 'event' name)"),
    ('{"event": 3}', "not an event (an object with an 'event' name)"),
    ('{"op": "tlb_gather_mmu"}', "not an event (an object with an 'event' name)"),
    ("{not json", "not JSON: "),
    ("[" * 100_000 + "]" * 100_000, "not JSON: "),
    ('{"event": "tlb_flush", "scope": "range", "start": 4096}', "tlb_flush: field 'end' is "
     "missing"),
    ('{"event": "free_pages", "pages": "abc"}', "free_pages: field 'pages' must be a list of "
     "integers, not \"abc\""),
    ('{"event": "pte_clear", "level": "p5d"}', "pte_clear: field 'level' must be one of "
     '"pte", "pmd", "pud", "huge", not "p5d"'),
    # orjson reads a number beyond 64 bits as a float
    ('{"event": "rmap_walk", "walked": 1' + "0" * 30 + "}", "rmap_walk: field 'walked' must "
     "be an integer >= 0, not 1e+30"),
    ('{"event": "vma_unmap", "kind": "' + "k" * 100_000 + '", "vma_start": "0x400000"}',
     "vma_unmap: field 'vma_start' must be an integer, not \"0x400000\""),
])
def test_a_foreign_line(line: str, reason: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, log = analyze(capsys, tmp_path, ['{"event": "gather_begin"}', "", line])
    assert_rejected(status, out, err, log, "3: ")
    assert err.startswith(f"mmugather: {log}:3: {reason}")


def test_an_empty_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err, log = analyze(capsys, tmp_path, ["", ""])
    assert (status, out) == (2, "")
    assert err == f"mmugather: {log}: no events in the log\n"


def test_a_pud_entry_from_replay_check_is_counted_without_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``replay --check --detail`` logs pte_clear at level pud; RunStats knew
    only pte, pmd and huge."""
    status, _, err, _ = analyze(capsys, tmp_path, [
        {"event": "pte_clear", "addr": 0, "page": None, "level": "pud", "size": 1 << 30}])
    assert (status, err) == (0, "")


@pytest.fixture
def replay_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    log = tmp_path / "replay.jsonl"
    assert cli.main(["replay", str(REPLAY), "--events", str(log)]) == 0
    capsys.readouterr()
    return log


def test_a_replay_log_shows_only_what_it_can_count(
    replay_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "PTEs zapped 0" and "invariant violations 0", though a replay
    zaps no PTE of its own and no checker ran."""
    assert cli.main(["analyze", str(replay_log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the log: a replay's (no vma_unmap events): the rows counted from "
                          "the callers' events (PTEs zapped, forced flushes, folios, "
                          "violations) are left out\n")
    labels = {label for _, label in ROWS}
    shown = {line.split("  ")[0] for line in out.splitlines() if line.split("  ")[0] in labels}
    assert shown == {label for key, label in ROWS if key not in CALLER_ROWS}
    assert "gathers" in shown and "PTEs zapped" not in shown
    assert "invariant violations" not in out
    assert cli.main(["analyze", str(replay_log), "--json"]) == 0
    (data,) = json.loads(capsys.readouterr().out).values()
    assert data["log"] == "replay"
    assert {k for k, v in data["stats"].items() if v is None} == CALLER_ROWS
    assert data["stats"]["gathers"] == 1


def test_a_run_log_counts_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.jsonl"
    assert cli.main(["run", "thp-pte", "--arch", "up", "--events", str(log), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert cli.main(["analyze", str(log), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["up"]
    assert data["log"] == "run"
    assert data["stats"] == run["stats"]
    assert cli.main(["analyze", str(log)]) == 0
    out = capsys.readouterr().out
    assert "replay" not in out and "PTEs zapped" in out and "invariant violations" in out
