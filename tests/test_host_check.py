"""``mmugather host-check``: the shipped recording compared with the model
on every machine, the comparison's verdicts on doctored recordings, the
trace parser, the rejections, and the live check.

The live test never skips: where tracing is available (root, tracefs, the
tlb:tlb_flush event) it records and compares on the running kernel; where
it is not it checks that the command says why in one line and exits 2.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmugather import cli
from mmugather.hostcheck import tracer, workloads
from mmugather.hostcheck.model import judge, model_flushes, pages_text

DATA = Path(__file__).parent / "data" / "host-check"
RECORDED = DATA / "6.18.44-fc-v1098.json"

#: each workload's flush as the tracepoint counts it (strides; -1: full)
EXPECTED = {
    "munmap_1": 1,
    "munmap_16": 16,
    "munmap_33": 33,
    "munmap_34": -1,
    "munmap_512": -1,
    "dontneed_16": 16,
    "ptfree_16_off16": 32,
    "thp_munmap": 1,
    "thp_pmdfree_off1": 2,
}
TABLE = """\
workload                host       model  verdict
munmap_1                   1           1  agree
munmap_16                 16          16  agree
munmap_33                 33          33  agree
munmap_34               full        full  agree
munmap_512              full        full  agree
dontneed_16               16          16  agree
ptfree_16_off16           32          32  agree
thp_munmap                 1           1  agree
thp_pmdfree_off1           2           2  agree

9 of 9 workloads agree"""


def host_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["host-check", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


def write(tmp_path: Path, rec: Any, name: str = "rec.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(rec))
    return str(path)


# ----------------------------------------------------------------------
# The shipped recording
# ----------------------------------------------------------------------


def test_shipped_recording_agrees_with_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = host_check(capsys, "--from", str(RECORDED))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (f"kernel 6.18.44-fc-v1098 (uname -r), x86_64, AMD EPYC; CPU 0, 5 runs "
                        f"each, recorded in {RECORDED}")
    assert lines[1] == ("model: x86-64 as v6.5 has it (arches/x86_64.py), one CPU, ceiling 33 "
                        "strides (the host's: unreadable)")
    assert out.endswith(TABLE + "\n")


def test_shipped_recording_is_what_the_kernel_did() -> None:
    """Every run of every workload: one local flush of the expected size."""
    rec = recording()
    assert [w["name"] for w in rec["workloads"]] == list(EXPECTED)
    for w in rec["workloads"]:
        assert len(w["runs"]) == 5
        for run in w["runs"]:
            assert run["problems"] == []
            assert [f[:2] for f in run["flushes"]] == [[3, EXPECTED[w["name"]]]], w["name"]


@pytest.mark.parametrize("w", workloads.WORKLOADS, ids=lambda w: w.name)
def test_model_flushes_each_layout_as_expected(w: workloads.Workload) -> None:
    """The model alone, on the planned layouts (no neighbouring VMAs)."""
    flushes, violations = model_flushes(w.name, workloads.layout(w, 0x7E0000000000))
    assert (flushes, violations) == ([(3, EXPECTED[w.name])], [])


# ----------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------


def _workload(rec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(w for w in rec["workloads"] if w["name"] == name)


def test_a_different_flush_is_a_difference(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rec = recording()
    for run in _workload(rec, "munmap_33")["runs"]:
        run["flushes"] = [[3, -1, 0]]
    status, out, _ = host_check(capsys, "--from", write(tmp_path, rec))
    assert status == 1
    assert "munmap_33               full          33  DIFFER" in out.splitlines()
    assert out.endswith("\n8 of 9 workloads agree\n")


def test_runs_that_disagree_are_a_difference(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rec = recording()
    _workload(rec, "munmap_16")["runs"][2]["flushes"].append([3, 1, 0])
    status, out, _ = host_check(capsys, "--from", write(tmp_path, rec))
    assert status == 1
    lines = out.splitlines()
    at = lines.index("munmap_16                 16          16  DIFFER")
    assert lines[at + 1] == "                  only 4 of 5 runs flushed this way"


def test_an_ipi_is_a_difference_and_a_foreign_reason_is_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = recording()
    # An IPI sent: the mm was on another CPU too, which the model does not have.
    for run in _workload(rec, "munmap_1")["runs"]:
        run["flushes"].insert(0, [4, 1, 0])
    # A task switch in the workload's context is not its own flush.
    for run in _workload(rec, "munmap_16")["runs"]:
        run["flushes"].insert(0, [0, -1, 0])
    status, out, _ = host_check(capsys, "--from", write(tmp_path, rec))
    assert status == 1
    lines = out.splitlines()
    assert "munmap_1             ipi:1 1           1  DIFFER" in lines
    assert "munmap_16                 16          16  agree" in lines


def test_a_layout_not_as_planned_is_reported(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rec = recording()
    w = _workload(rec, "thp_munmap")
    for run in w["runs"]:
        run["problems"] = ["target: not PMD-mapped (AnonHugePages 0 kB): is THP enabled?"]
        run["flushes"] = [[3, -1, 0]]
    status, out, _ = host_check(capsys, "--from", write(tmp_path, rec))
    assert status == 1
    lines = out.splitlines()
    at = lines.index("thp_munmap              none           1  NOT RUN AS PLANNED")
    assert lines[at + 1] == ("                  ! target: not PMD-mapped (AnonHugePages 0 kB): "
                             "is THP enabled?")


def test_judge_and_pages_text() -> None:
    verdict = judge(_workload(recording(), "ptfree_16_off16"))
    assert verdict.agrees and verdict.host == verdict.model == ((3, 32),)
    assert (verdict.agreeing_runs, verdict.runs) == (5, 5)
    assert pages_text(((4, -1), (3, -1))) == "ipi:full full"
    assert pages_text(()) == "none"


# ----------------------------------------------------------------------
# The trace
# ----------------------------------------------------------------------

TRACE = """\
# tracer: nop
#
 python3-41      [000] ..... 10.000001: tlb_flush: pages:4 reason:local MM shootdown (3)
 python3-41      [000] ..... 10.000002: tracing_mark_write: mmugather-begin munmap_16
 python3-42      [001] ..... 10.000003: tlb_flush: pages:9 reason:local MM shootdown (3)
 python3-41      [000] d.h.. 10.000004: tlb_flush: pages:-1 reason:flush on task switch (0)
 python3-41      [000] ..... 10.000005: tlb_flush: pages:16 reason:local MM shootdown (3)
 python3-41      [000] ..... 10.000006: tracing_mark_write: mmugather-end munmap_16
 python3-41      [000] ..... 10.000007: tlb_flush: pages:1 reason:local MM shootdown (3)
"""


def test_flushes_between_markers_keeps_the_pid_and_the_window() -> None:
    assert tracer.flushes_between_markers(TRACE, 41, "munmap_16") == [[0, -1, 0], [3, 16, 0]]
    assert tracer.flushes_between_markers(TRACE, 42, "munmap_16") is None
    assert tracer.flushes_between_markers(TRACE.replace("mmugather-end", "x"), 41,
                                          "munmap_16") is None


# ----------------------------------------------------------------------
# Rejections: one line, exit 2, nothing on stdout, nothing written
# ----------------------------------------------------------------------


def _rejected(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status, out, err = host_check(capsys, *argv)
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    return err


def test_unreadable_or_malformed_recordings(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.json")
    assert _rejected(capsys, "--from", missing) == (
        f"mmugather: {missing}: cannot read: No such file or directory\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format":\n')
    assert _rejected(capsys, "--from", str(bad)) == (
        f"mmugather: {bad}:2: not JSON: Expecting value\n")
    other = write(tmp_path, {"format": "something", "version": 1})
    assert _rejected(capsys, "--from", other) == (
        f"mmugather: {other}: format: not a host-check recording "
        "(expected 'mmugather-host-check')\n")
    rec = recording()
    rec["workloads"][3]["runs"][0]["flushes"] = [[3, 1]]
    path = write(tmp_path, rec)
    assert _rejected(capsys, "--from", path) == (
        f"mmugather: {path}: workloads[3].runs[0].flushes: each is [reason, pages, cpu]\n")
    rec = recording()
    vmas = rec["workloads"][0]["layout"]["vmas"]
    vmas[1]["start"] = vmas[0]["start"]
    path = write(tmp_path, rec)
    assert _rejected(capsys, "--from", path).startswith(
        f"mmugather: {path}: workloads[0].layout: vma[1]: [")


def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _rejected(capsys, "--repeats", "0") == (
        "mmugather: host-check: --repeats: must be at least 1\n")
    assert _rejected(capsys, "--only", "nosuch").startswith(
        "mmugather: host-check: --only: no workload 'nosuch' (known: munmap_1, ")
    target = tmp_path / "no" / "rec.json"
    assert _rejected(capsys, "--record", str(target)) == (
        f"mmugather: {target}: cannot write: no such directory\n")
    assert not target.parent.exists()


def test_record_saves_what_was_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The path from a recording to --record and the report, with the
    tracer replaced by the shipped recording (no tracing needed)."""
    monkeypatch.setattr(tracer, "record", lambda chosen, **kw: recording())
    target = tmp_path / "rec.json"
    status, out, err = host_check(capsys, "--record", str(target))
    assert (status, err) == (0, "")
    assert out.endswith(TABLE + "\n")
    assert json.loads(target.read_text()) == recording()


def test_record_to_a_full_device_leaves_it_alone(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").is_char_device():
        pytest.fail("this test needs /dev/full")
    monkeypatch.setattr(tracer, "record", lambda chosen, **kw: recording())
    assert _rejected(capsys, "--record", "/dev/full") == (
        "mmugather: /dev/full: cannot write: No space left on device\n")
    assert Path("/dev/full").is_char_device()


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(tracer.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(tracer.os, "geteuid", lambda: 1000)
    target = tmp_path / "rec.json"
    assert _rejected(capsys, "--record", str(target)) == (
        "mmugather: host-check: tracing unavailable: not root (tracing needs tracefs and a "
        "trace instance)\n")
    assert not target.exists()
    monkeypatch.setattr(tracer.platform, "machine", lambda: "aarch64")
    assert tracer.unavailable() == "x86-64 only (this machine is aarch64)"


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = host_check(capsys, "--list")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == list(EXPECTED)
    assert out.splitlines()[5] == ("dontneed_16        madvise_dontneed 16p: 16 PTEs zapped by "
                                   "MADV_DONTNEED, the PTE table kept non-empty: 16 strides")


# ----------------------------------------------------------------------
# Live, on the running kernel
# ----------------------------------------------------------------------


def test_live(tmp_path: Path) -> None:
    """Record on this machine and compare; where tracing is unavailable the
    command must say why, in one line, and exit 2."""
    reason = tracer.unavailable()
    saved = tmp_path / "live.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mmugather", "host-check", "--repeats", "2",
         "--record", str(saved)],
        capture_output=True, text=True, timeout=600)
    if reason is not None:
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"mmugather: host-check: tracing unavailable: {reason}\n"
        assert not saved.exists()
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.endswith(TABLE + "\n")
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"kernel {tracer.os.uname().release} (uname -r), x86_64, ")
    # The saved recording compares the same without tracing.
    again = subprocess.run([sys.executable, "-m", "mmugather", "host-check", "--from",
                            str(saved)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert again.stdout.endswith(TABLE + "\n")
    rec = json.loads(saved.read_text())
    assert rec["repeats"] == 2 and all(len(w["runs"]) == 2 for w in rec["workloads"])


def test_recording_format_is_stable() -> None:
    rec = copy.deepcopy(recording())
    assert (rec["format"], rec["version"]) == (tracer.FORMAT, tracer.VERSION)
    assert set(rec) == {"format", "version", "host", "cpu", "repeats", "workloads"}
    assert set(rec["workloads"][0]) == {"name", "why", "layout", "runs"}
