"""``mmugather explore``: its output, exit statuses, traces and replays, and
the one-line errors of bad input (with nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmugather.core.explore import spec

from mmugather import cli


def explore(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["explore", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_nothing_found_prints_the_coverage(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    trace = tmp_path / "none.jsonl"
    status, out, err = explore(capsys, "dirty-writeback", "--arch", "generic-smp", "--events",
                               str(trace))
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "scenario dirty-writeback: arch generic-smp, strategy pointer, no mutant"
    assert lines[1].startswith("no property failed within the bound: ")
    assert lines[1].endswith(" s")
    assert ", depth 24 (bound 120), 2 CPUs, " in lines[1]
    assert " states, " in lines[1] and " transitions, " in lines[1]
    assert " interleavings, " in lines[1]
    assert lines[2:] == [f"no counterexample: nothing saved to {trace}"]
    assert not trace.exists()


def test_a_failure_prints_a_timeline_and_saves_a_trace(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "lost.jsonl"
    status, out, err = explore(capsys, "dirty-writeback", "--arch", "generic-smp", "--mutant",
                               "rmap-before-flush", "--events", str(trace))
    assert status == 1 and err == ""
    lines = out.splitlines()
    assert lines[:2] == ["scenario dirty-writeback: arch generic-smp, strategy pointer, "
                         "mutant rmap-before-flush", "lost-write: a counterexample in 22 steps"]
    assert lines[3].startswith("step | CPU0 zap0")
    assert "after step 22: lost-write" in lines
    assert lines[-2].startswith("searched: ")
    assert lines[-1] == f"trace saved to {trace} (mmugather explore --replay {trace})"
    head = json.loads(trace.read_text().splitlines()[0])
    assert head["trace"] == 1 and head["arch"] == "generic-smp"
    assert head["mutant"] == "rmap-before-flush" and head["property"] == "lost-write"
    assert len(head["choices"]) == 22

    status, replayed, err = explore(capsys, "--replay", str(trace))
    assert status == 1 and err == ""
    timeline = out.split("\n\n", 1)[1].split("\nsearched: ")[0]
    assert replayed.split("\n\n", 1)[1].rstrip("\n") == timeline.rstrip("\n")


def test_random_mode_names_its_run(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = explore(capsys, "dirty-writeback", "--arch", "generic-smp", "--mutant",
                             "rmap-before-flush", "--random", "200", "--seed", "3")
    assert status == 1
    assert out.splitlines()[1] == "lost-write (run 93): a counterexample in 24 steps"
    assert out.splitlines()[-1].startswith("searched: 200 random runs (seed 3), ")


def test_workers_give_the_verdict_of_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = explore(capsys, "munmap-gup", "--arch", "rcu-table-free", "--mutant",
                             "direct-table-free", "--workers", "2")
    assert status == 1
    assert out.splitlines()[1].startswith("lockless-walk-freed-table: ")


def test_needs_are_shown(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text((spec.resources.files(spec.BUILTIN_PACKAGE) / "dontneed-race.toml")
                    .read_text().replace("cpus = 3", 'cpus = 3\nneeds = "a model of fork()"'))
    status, out, _ = explore(capsys, str(path), "--arch", "generic-smp")
    assert status == 0
    assert out.splitlines()[1] == "note: it needs a model of fork()"


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = explore(capsys, "--list")
    assert status == 0
    scenarios, fixes = out.split("\nfixes newer than v6.5 (--fix COMMIT):\n")
    names = [line for line in scenarios.splitlines() if not line.startswith(" ")]
    assert names == spec.builtin_names()
    assert fixes.splitlines()[0] == ("1013af4f585f  mm/hugetlb: fix huge_pmd_unshare() vs "
                                     "GUP-fast race")


def test_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--fix adds a fix newer than v6.5: the race v6.5 has is gone; a trace
    says which fixes it ran with, and its replay runs with them."""
    status, out, _ = explore(capsys, "hugetlb-unshare-gup", "--arch", "arm64")
    assert status == 1 and "lockless-walk-freed-table: a counterexample" in out
    status, out, _ = explore(capsys, "hugetlb-unshare-gup", "--arch", "arm64", "--fix",
                             "1013af4f585f")
    assert status == 0
    assert out.splitlines()[0] == ("scenario hugetlb-unshare-gup: arch arm64, strategy "
                                   "pointer, no mutant, fix 1013af4f585f")
    assert _bad(capsys, "hugetlb-unshare-gup", "--fix", "abc") == \
        "unknown fix 'abc' (known: 1013af4f585f)"
    trace_path = tmp_path / "t.jsonl"
    status, _out, _ = explore(capsys, "dontneed-race", "--arch", "generic-smp", "--fix",
                              "1013af4f585f", "--mutant", "no-nested-flush", "--events",
                              str(trace_path))
    assert status == 1
    head = json.loads(trace_path.read_text().splitlines()[0])
    assert head["fixes"] == ["1013af4f585f"]
    status, out, _ = explore(capsys, "--replay", str(trace_path))
    assert status == 1 and "mutant no-nested-flush, fix 1013af4f585f" in out.splitlines()[0]
    assert _bad(capsys, "--replay", str(trace_path), "--fix", "1013af4f585f") == \
        "--replay takes its configuration from the trace: --fix does not go with it"


def _bad(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status, out, err = explore(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("mmugather: ")
    return err[len("mmugather: "):].rstrip("\n")


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _bad(capsys, "no-such", "--arch", "generic-smp") == \
        "no-such: cannot read: No such file or directory"
    assert _bad(capsys, "dirty-writeback", "--arch", "vax").startswith("unknown arch 'vax'")
    assert _bad(capsys, "dirty-writeback", "--arch", "up") == (
        "arch 'up' has 1 CPU (!CONFIG_SMP); scenario 'dirty-writeback' runs an actor on CPU 1")
    assert _bad(capsys, "dirty-writeback", "--arch", "generic-smp", "--cpus", "1") == (
        "--cpus 1: scenario 'dirty-writeback' runs an actor on CPU 1")
    assert _bad(capsys, "dirty-writeback", "--arch", "generic-smp", "--depth", "0") == (
        "--depth 0: must be at least 1")
    assert _bad(capsys, "dirty-writeback", "--arch", "generic-smp", "--mutant", "x") \
        .startswith("unknown mutant 'x'")
    assert _bad(capsys, "dirty-writeback", "--arch", "generic-smp", "--strategy", "x") == (
        "unknown strategy 'x' (known: pointer, legacy, ranges, folio-batch)")
    assert _bad(capsys, "dirty-writeback", "--arch", "generic-smp", "--strategy", "legacy",
                "--mutant", "rmap-before-flush") == (
        "mutant 'rmap-before-flush' changes the seed patch's zap_pte_range(); strategy "
        "'legacy' has another caller")
    missing = tmp_path / "no" / "t.jsonl"
    assert _bad(capsys, "dirty-writeback", "--arch", "generic-smp", "--mutant",
                "rmap-before-flush", "--events", str(missing)) == (
        f"{missing}: cannot write: No such file or directory")
    assert not missing.parent.exists()


def test_bad_scenario_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ('[[vma]]\nstart = 0x10000\nend = 0x12000\npopulate = [{ pages = 1 }]\n'
            '[[op]]\nkind = "munmap"\nstart = 0x10000\nend = 0x12000\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(base + '[[actor]]\nkind = "user"\ncpu = 1\nspeed = 3\n'
                   'accesses = [{ op = "load", addr = 0x10000 }]\n')
    assert _bad(capsys, str(bad), "--arch", "generic-smp") == (
        f"{bad}: actor[0].speed: unknown key (allowed: accesses, cpu, kind, warm)")
    bad.write_text(base + '[[actor]]\nkind = "zap"\nop = [{ kind = "munmap", start = 0x1000 }]\n')
    assert _bad(capsys, str(bad), "--arch", "generic-smp") == (
        f"{bad}: actor[0].op[0].end: missing")
    bad.write_text(base + '[explore]\ncpus = 1\n[[actor]]\nkind = "gup_fast"\ncpu = 1\n'
                   'addr = 0x10000\n')
    assert _bad(capsys, str(bad), "--arch", "generic-smp") == (
        f"{bad}: explore.cpus: 1 CPUs, but an actor runs on CPU 1")
    bad.write_text(base + '[[actor]]\nkind = "writeback"\naddr = 0x10000\n')
    assert _bad(capsys, str(bad), "--arch", "generic-smp") == (
        f"{bad}: actor[0].addr: the page at 0x10000 is anonymous, not in a page cache")
    bad.write_text("[[vma]\n")
    assert _bad(capsys, str(bad), "--arch", "generic-smp").startswith(f"{bad}: not TOML: ")


def test_replay_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    notrace = tmp_path / "x.jsonl"
    notrace.write_text('{"event": "tlb_flush"}\n')
    assert _bad(capsys, "--replay", str(notrace)) == (
        f"{notrace}:1: not a trace (no \"trace\" header; save one with 'mmugather explore "
        "--events PATH')")
    notrace.write_text("not json\n")
    assert _bad(capsys, "--replay", str(notrace)).startswith(f"{notrace}:1: not JSON: ")
    assert _bad(capsys, "--replay", str(tmp_path / "none")) == (
        f"{tmp_path / 'none'}: cannot read: No such file or directory")
    assert _bad(capsys, "dirty-writeback", "--replay", str(notrace)) == (
        "--replay takes the scenario from the trace: give no SCENARIO")
    assert _bad(capsys, "--replay", str(notrace), "--workers", "2") == (
        "--replay takes its configuration from the trace: --workers does not go with it")
    head = {"trace": 1, "scenario": spec.load_builtin("dirty-writeback").raw,
            "arch": "generic-smp", "strategy": "pointer", "mutant": None,
            "choices": ["zap0", "writeback0", "nobody"], "property": "lost-write"}
    notrace.write_text(json.dumps(head) + "\n")
    assert _bad(capsys, "--replay", str(notrace)) == (
        f"{notrace}: step 3: no actor 'nobody' in this scenario")


def test_a_replay_that_no_longer_fails(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    head = {"trace": 1, "scenario": spec.load_builtin("dirty-writeback").raw,
            "arch": "generic-smp", "strategy": "pointer", "mutant": None,
            "choices": ["zap0", "zap0"], "property": "lost-write"}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(head) + "\n")
    status, out, _ = explore(capsys, "--replay", str(path))
    assert status == 0
    assert out.splitlines()[1] == ("replayed 2 steps: no property fails at their end (the "
                                   "trace says lost-write)")
