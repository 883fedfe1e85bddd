"""The worked examples of replay-v1: every ``tests/data/replay/<arch>/<name>.ops.jsonl``
replayed under its arch must give the effects the reference kernel code gave,
in order (``<name>.effects.jsonl``).

Comparison rules (the contract's): only contract events count; integers are
equal (a ``"0x..."`` string in the expected file is an integer); ``levels`` is
a set; a boolean never equals an integer; fields the expected event does not
name are ignored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ARCHES, machine
from mmugather.core.events import CONTRACT_EVENTS
from mmugather.core.replay import ReplayResult, parse_file, run

DATA = Path(__file__).parent / "data" / "replay"
EXAMPLES = sorted(DATA.glob("*/*.ops.jsonl"))


def _example_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name.removesuffix('.ops.jsonl')}"


def effects_path(ops: Path) -> Path:
    return ops.with_name(ops.name.removesuffix(".ops.jsonl") + ".effects.jsonl")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def normalize_expected(value: Any) -> Any:
    """A ``"0x..."`` string stands for the integer it spells."""
    if isinstance(value, str) and value[:2].lower() == "0x":
        return int(value, 16)
    if isinstance(value, list):
        return [normalize_expected(v) for v in value]
    return value


def same_value(expected: Any, got: Any) -> bool:
    """Equality where a boolean is never an integer (Python says True == 1)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool) and expected is got
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(expected) == len(got)
            and all(same_value(e, g) for e, g in zip(expected, got, strict=True))
        )
    return type(expected) is type(got) and expected == got


def event_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    """Why ``got`` does not match ``expected``, or None when it does."""
    for key, raw in expected.items():
        if key not in got:
            return f"field {key!r} missing"
        want = normalize_expected(raw)
        have = got[key]
        if key == "levels":
            if not isinstance(have, list) or set(have) != set(want):
                return f"levels {have!r} != {want!r} (as sets)"
        elif not same_value(want, have):
            return f"field {key!r}: {have!r} != {want!r}"
    return None


def assert_effects(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    """``got`` (contract events only) matches ``expected`` event by event."""
    for i, (want, have) in enumerate(zip(expected, got, strict=False)):
        why = event_mismatch(want, have)
        assert why is None, f"event {i}: {why}\n  expected {want}\n  got      {have}"
    assert len(got) == len(expected), (
        f"{len(got)} events, expected {len(expected)}; first extra/missing: "
        f"{(got[len(expected) :] or expected[len(got) :])[:1]}"
    )


def check_bug_semantics(expected: list[dict[str, Any]], result: ReplayResult, ops: int) -> None:
    """A replay ends early exactly when the reference hit a VM_BUG_ON."""
    if expected and expected[-1]["event"] == "bug":
        assert result.bug is not None
        assert result.bug_line is not None
        assert result.ops < ops
    else:
        assert all(e["event"] != "bug" for e in expected)
        assert result.bug is None
        assert result.bug_line is None
        assert result.ops == ops


# ----------------------------------------------------------------------
# The comparator itself must be able to fail.
# ----------------------------------------------------------------------


def test_comparator_rules() -> None:
    assert event_mismatch({"event": "x", "start": "0x1000"}, {"event": "x", "start": 4096}) is None
    assert event_mismatch({"event": "x", "start": "0x1000"}, {"event": "x", "start": 4097})
    assert event_mismatch({"event": "x", "ok": True}, {"event": "x", "ok": 1})
    assert event_mismatch({"event": "x", "value": 1}, {"event": "x", "value": True})
    assert event_mismatch({"event": "x", "value": False}, {"event": "x", "value": 0})
    assert event_mismatch({"event": "x", "ok": False}, {"event": "x", "ok": False}) is None
    assert (
        event_mismatch(
            {"event": "tlb_flush", "levels": ["pmd", "pte"]},
            {"event": "tlb_flush", "levels": ["pte", "pmd"], "extra": 1},
        )
        is None
    )
    assert event_mismatch({"event": "t", "levels": ["pte"]}, {"event": "t", "levels": ["pmd"]})
    assert event_mismatch({"event": "t", "pages": [1, 2]}, {"event": "t", "pages": [2, 1]})
    assert event_mismatch({"event": "t", "pages": ["0x1"]}, {"event": "t", "pages": [1]}) is None
    assert event_mismatch({"event": "t", "page": 1}, {"event": "t"})
    assert event_mismatch({"event": "a"}, {"event": "b"})
    with pytest.raises(AssertionError):
        assert_effects([{"event": "a"}], [{"event": "a"}, {"event": "b"}])
    with pytest.raises(AssertionError):
        assert_effects([{"event": "a"}, {"event": "b"}], [{"event": "a"}])


def test_examples_cover_every_arch() -> None:
    assert {p.parent.name for p in EXAMPLES} == set(ARCHES)
    for ops in EXAMPLES:
        assert effects_path(ops).is_file(), ops


# ----------------------------------------------------------------------
# In-process replay of every example
# ----------------------------------------------------------------------


@pytest.mark.parametrize("ops_path", EXAMPLES, ids=_example_id)
def test_example_in_process(ops_path: Path) -> None:
    arch = ops_path.parent.name
    m, c = machine(arch)
    compiled = parse_file(str(ops_path), m.geometry.page_size)
    result = run(compiled, m)
    expected = load_jsonl(effects_path(ops_path))
    assert_effects(expected, c.contract())
    check_bug_semantics(expected, result, len(compiled))


@pytest.mark.parametrize("arch", ["generic-smp", "up", "page-size", "rcu-table-free"])
def test_replay_stops_at_a_bug(arch: str, tmp_path: Path) -> None:
    """A VM_BUG_ON ends the replay: the bug is the last event, later ops never run."""
    path = tmp_path / "bug.ops.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"op":"tlb_gather_mmu"}',
                '{"op":"tlb_batch_rmap"}',
                # Nothing recorded: tlb->end is 0, VM_BUG_ON(!tlb->end).
                '{"op":"__tlb_remove_page_size","page":1}',
                '{"op":"tlb_batch_rmap"}',
                '{"op":"tlb_finish_mmu"}',
            ]
        )
        + "\n"
    )
    m, c = machine(arch)
    compiled = parse_file(str(path), 4096)
    result = run(compiled, m)
    events = c.contract()
    assert [e["event"] for e in events] == ["return", "bug"]
    assert events[0]["value"] is (arch != "up")
    assert result.bug is not None
    assert result.bug_line == 3
    assert result.ops == 2
    check_bug_semantics(events, result, len(compiled))


def test_replay_on_s390_has_no_empty_range_bug(tmp_path: Path) -> None:
    """s390's own __tlb_remove_page_size() frees the page and checks nothing."""
    path = tmp_path / "s390.ops.jsonl"
    path.write_text(
        '{"op":"tlb_gather_mmu"}\n{"op":"__tlb_remove_page_size","page":9}\n'
        '{"op":"tlb_finish_mmu"}\n'
    )
    m, c = machine("s390")
    compiled = parse_file(str(path), 4096)
    result = run(compiled, m)
    assert c.contract() == [
        {"event": "free_page", "page": 9},
        {"event": "return", "op": "__tlb_remove_page_size", "value": False},
    ]
    check_bug_semantics(c.contract(), result, len(compiled))


# ----------------------------------------------------------------------
# The real command, one example per arch
# ----------------------------------------------------------------------


def _one_per_arch() -> list[Path]:
    chosen: dict[str, Path] = {}
    for ops in EXAMPLES:
        if ops.name.startswith("random_01"):
            chosen[ops.parent.name] = ops
    for ops in EXAMPLES:
        chosen.setdefault(ops.parent.name, ops)
    return [chosen[a] for a in sorted(chosen)]


@pytest.mark.parametrize("ops_path", _one_per_arch(), ids=_example_id)
def test_example_through_cli(ops_path: Path, tmp_path: Path) -> None:
    arch = ops_path.parent.name
    proc = subprocess.run(
        [sys.executable, "-m", "mmugather", "replay", str(ops_path), "--arch", arch],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    expected = load_jsonl(effects_path(ops_path))
    bug = bool(expected) and expected[-1]["event"] == "bug"
    assert proc.returncode == (1 if bug else 0), proc.stderr.decode()
    if not bug:
        assert proc.stderr == b""
    lines = proc.stdout.decode().splitlines()
    assert all(line.strip() for line in lines)
    got = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) and isinstance(e.get("event"), str) for e in got)
    assert_effects(expected, [e for e in got if e["event"] in CONTRACT_EVENTS])
