"""``mmugather run`` (and ``mutants``, ``scenarios``): the side-by-side
table, ``--json``, ``--mutant``, ``--events`` (whose log gives the table's
numbers again), and the usage errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mmugather.core import scenario
from mmugather.core.check import RULES
from mmugather.core.stats import ROWS, RunStats
from teardown_kit import ARCHES, spec

from mmugather import cli
from mmugather.mutants import MUTANTS

KEYS = [k for k, _ in ROWS]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["run", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def stats_of_log(path: Path) -> dict[str, int]:
    """What ``mmugather analyze`` counts: RunStats fed the log line by line."""
    stats = RunStats()
    with path.open("rb") as f:
        for line in f:
            stats.feed(json.loads(line))
    return stats.as_dict()


def test_run_with_no_arguments_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys)
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "scenario: default"
    assert lines[1].split() == list(ARCHES)
    for (_key, label), line in zip(ROWS, lines[2:2 + len(ROWS)], strict=True):
        assert line.startswith(label)
        cells = line[len(label):].split()
        assert len(cells) == len(ARCHES)
        assert all(c.replace(",", "").isdigit() for c in cells)
    assert lines[-1] == "no invariant violations"
    assert "invariant violations" in out.splitlines()[1 + len(ROWS)]


def test_table_numbers_are_the_json_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["scenario"] == "default"
    runs = doc["runs"]
    assert [r["arch"] for r in runs] == list(ARCHES)
    for r in runs:
        assert list(r["stats"]) == KEYS
        assert r["violations"] == {} and r["reports"] == []
        assert r["mutant"] is None and r["mutant_applies"] is True
        assert r["stats"]["ptes_zapped"] > 0
    _, table, _ = run_cli(capsys)
    rows = table.splitlines()[2:2 + len(ROWS)]
    for (key, label), line in zip(ROWS, rows, strict=True):
        cells = [int(c.replace(",", "")) for c in line[len(label):].split()]
        assert cells == [r["stats"][key] for r in runs], key


def test_arch_option_selects_and_orders_columns(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--arch", "s390", "--arch", "up", "--json")
    assert status == 0
    assert [r["arch"] for r in json.loads(out)["runs"]] == ["s390", "up"]
    status, out, _ = run_cli(capsys, "--all-arches", "--json")
    assert [r["arch"] for r in json.loads(out)["runs"]] == list(ARCHES)


def test_mutant_exits_1_and_reports_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--mutant", "free-before-flush")
    assert status == 1
    assert err == ""
    assert out.splitlines()[0] == "scenario: default   mutant: free-before-flush"
    assert "[free-before-flush] " in out
    assert f"  rule: {RULES['free-before-flush']}" in out
    # s390 frees at once, rightly: no violation there, and the run says why.
    assert "s390: the mutant's ordering is not wrong on this arch" in out
    for arch in ("generic-smp", "up", "page-size", "rcu-table-free"):
        assert f"\n{arch}: " in out and "violations (free-before-flush: " in out
    assert "no invariant violations" not in out


def test_mutant_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--mutant", "no-discard-rmaps", "--json")
    assert status == 1
    runs = {r["arch"]: r for r in json.loads(out)["runs"]}
    for arch, r in runs.items():
        assert r["mutant"] == "no-discard-rmaps"
        applies = MUTANTS["no-discard-rmaps"].applies(spec(arch))
        assert r["mutant_applies"] == applies
        if applies:
            assert r["violations"].get("rmap-not-pending", 0) > 0
            assert r["stats"]["violations"] == sum(r["violations"].values())
            report = r["reports"][0]
            assert report["rule"] in RULES and report["trail"]
        else:
            assert r["violations"] == {} and r["stats"]["violations"] == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_events_log_gives_the_run_numbers(
    arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "run.jsonl"
    status, out, _ = run_cli(capsys, "--arch", arch, "--events", str(events), "--json")
    assert status == 0
    (run,) = json.loads(out)["runs"]
    assert stats_of_log(events) == run["stats"]
    names = Counter(json.loads(line)["event"] for line in events.read_bytes().splitlines())
    assert names["gather_begin"] == names["gather_end"] == run["stats"]["gathers"]


def test_events_log_of_every_arch_and_a_mutant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "run.jsonl"
    status, out, _ = run_cli(capsys, "--mutant", "direct-table-free", "--events", str(events),
                             "--json")
    assert status == 1
    runs = json.loads(out)["runs"]
    total = {k: sum(r["stats"][k] for r in runs) for k in KEYS}
    logged = stats_of_log(events)
    assert logged == total
    assert logged["violations"] > 0
    violations = [json.loads(line) for line in events.read_bytes().splitlines()
                  if b'"violation"' in line]
    assert {v["rule"] for v in violations} == {"table-free-walkers"}


def test_no_check_runs_without_the_checker(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--mutant", "free-before-flush", "--no-check", "--json")
    assert status == 0
    for r in json.loads(out)["runs"]:
        assert r["violations"] == {} and r["stats"]["violations"] == 0
        assert r["stats"]["pages_freed"] > 0


def test_scenario_file_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[[vma]]\nstart = 0x400000\nend = 0x800000\n'
                    'populate = [{ pages = 100, dirty = true }]\n[[op]]\nkind = "exit"\n')
    status, out, _ = run_cli(capsys, str(path), "--arch", "generic-smp", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["scenario"] == "mine"
    assert doc["runs"][0]["stats"]["ptes_zapped"] == 100
    assert doc["runs"][0]["stats"]["folios_freed"] == 100


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--arch", "vax"], "unknown arch 'vax'"),
        (["--arch", "up", "--arch", "vax"], "unknown arch 'vax'"),
        (["--mutant", "nope"], "unknown mutant 'nope'"),
        (["no-such-scenario"], "no-such-scenario: cannot read"),
        (["--page-size", "16384", "--arch", "s390"], "does not support --page-size 16384"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "e.jsonl"
    status, out, err = run_cli(capsys, *argv, "--events", str(events))
    assert status == 2
    assert out == ""
    assert err.startswith("mmugather: ") and fragment in err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert not events.exists()


def test_unwritable_events_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--events", str(tmp_path / "no" / "dir" / "e.jsonl"))
    assert status == 2 and out == ""
    assert "cannot write" in err and err.count("\n") == 1


def test_mutants_command_lists_each_mutant_and_its_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["mutants"]) == 0
    out = capsys.readouterr().out
    for m in MUTANTS.values():
        assert f"{m.name}\n    {m.description}\n    caught by: {m.rule} ({RULES[m.rule]})" in out


def test_scenarios_command_lists_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in scenario.builtin_names():
        sc = scenario.load_builtin(name)
        assert f"{name}  ({sc.mapped_pages():,} mapped pages, {len(sc.vmas)} VMAs)" in out


def test_console_script() -> None:
    """The installed entry point, end to end: exit status and streams."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmugather", "run", "--arch", "up", "--json"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert [r["arch"] for r in doc["runs"]] == ["up"]
    proc = subprocess.run([sys.executable, "-m", "mmugather", "run", "--mutant", "x"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
