"""``mmugather run`` (and ``mutants``, ``scenarios``): the side-by-side
table, ``--json``, ``--mutant``, ``--events`` (whose log gives the table's
numbers again), and the usage errors.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mmugather.arches import BUILTIN
from mmugather.core import scenario
from mmugather.core.check import RULES
from mmugather.core.run import ArchRun
from mmugather.core.stats import ROWS, RunStats
from teardown_kit import spec

from mmugather import cli
from mmugather.cli.run import format_table
from mmugather.cli.table import format_bytes, format_cell, format_ratio
from mmugather.mutants import MUTANTS

KEYS = [k for k, _ in ROWS]
#: A run with no --arch: every built-in arch, the contract's five and the real ones.
ALL = [s.name for s in BUILTIN]


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


def table_cells(out: str) -> dict[str, dict[str, str]]:
    """A printed table as {column: {row label: cell}}, its blocks joined
    (a block starts with a header line whose label column is blank)."""
    cells: dict[str, dict[str, str]] = {}
    cols: list[str] | None = None
    for line in out.splitlines():
        if not line.strip():
            cols = None
        elif line.startswith(" "):
            cols = line.split()
        elif cols is not None:
            label, *values = re.split(r" {2,}", line)
            if len(values) == len(cols):
                for col, value in zip(cols, values, strict=True):
                    cells.setdefault(col, {})[label] = value
    return cells


def test_run_with_no_arguments_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys)
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "scenario: default"
    assert max(len(line) for line in lines[:len(ROWS) + 6]) <= 100
    cells = table_cells(out)
    assert list(cells) == ALL
    for arch in ALL:
        assert list(cells[arch]) == [label for _, label in ROWS]
        for key, label in ROWS:
            cell = cells[arch][label]
            if key == "tlb_flush_bytes":
                assert re.fullmatch(r"0|\d+ B|[\d.]+ [KMGTPE]iB", cell), cell
            else:
                assert cell.replace(",", "").isdigit(), cell
    assert 'rows: docs/scenarios.md, "The table"' in out
    assert lines[-1] == "no invariant violations"


def test_run_table_wraps_by_arch_within_100_columns() -> None:
    """More arches than 100 columns hold: blocks of whole columns, each
    repeating the row labels."""
    names = [f"arch-with-a-long-name-{k}" for k in range(7)]
    runs = [ArchRun(arch=n, stats={k: 10**9 + i for i, (k, _) in enumerate(ROWS)},
                    violations=[], violation_counts={}, seconds=0.0, mapped_ptes=0)
            for n in names]
    text = format_table(runs)
    assert max(len(line) for line in text.splitlines()) <= 100
    cells = table_cells(text)
    assert list(cells) == names
    assert cells[names[6]]["PTEs zapped"] == "1,000,000,000"
    assert cells[names[0]]["bytes covered by range flushes"] == "954 MiB"
    blocks = text.split("\n\n")
    assert len(blocks) > 1
    assert all(block.count("PTEs zapped") == 1 for block in blocks)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0"), (512, "512 B"), (1024, "1 KiB"), (98304, "96 KiB"), (1536 * 1024, "1.5 MiB"),
    (4 << 30, "4 GiB"), (1000 * 1024, "1000 KiB"), ((1 << 47) - 4096, "128 TiB"),
])
def test_byte_counts_have_units(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(("r", "text"), [
    (None, "-"), (0.0, "0"), (9 / 4096, "0.0022"), (1 / 8192, "0.00012"), (0.011, "0.01"),
    (0.5, "0.50"), (1.0, "1.00"), (12.345, "12.35"),
])
def test_ratios_keep_small_values(r: float | None, text: str) -> None:
    assert format_ratio(r) == text


def test_table_numbers_are_the_json_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["scenario"] == "default"
    runs = doc["runs"]
    assert [r["arch"] for r in runs] == ALL
    for r in runs:
        assert list(r["stats"]) == KEYS
        assert r["violations"] == {} and r["reports"] == []
        assert r["mutant"] is None and r["mutant_applies"] is True
        assert r["stats"]["ptes_zapped"] > 0
    _, table, _ = run_cli(capsys)
    cells = table_cells(table)
    for key, label in ROWS:
        assert [cells[r["arch"]][label] for r in runs] == [
            format_cell(key, r["stats"][key]) for r in runs], key


def test_arch_option_selects_and_orders_columns(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--arch", "s390", "--arch", "up", "--json")
    assert status == 0
    assert [r["arch"] for r in json.loads(out)["runs"]] == ["s390", "up"]
    status, out, _ = run_cli(capsys, "--all-arches", "--json")
    assert [r["arch"] for r in json.loads(out)["runs"]] == ALL


def test_mutant_exits_1_and_reports_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "--mutant", "free-before-flush")
    assert status == 1
    assert err == ""
    assert out.splitlines()[0] == "scenario: default   mutant: free-before-flush"
    assert "[page-reachable] " in out
    assert f"  rule: {RULES['page-reachable']}" in out
    # s390 frees at once, rightly: no violation there, and the run says why.
    assert "s390: the mutant's ordering is not wrong on this arch" in out
    for arch in ("generic-smp", "up", "page-size", "rcu-table-free"):
        assert f"\n{arch}: " in out and "page-reachable: " in out
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


@pytest.mark.parametrize("arch", ALL)
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
    # Walk caches on every arch; lockless walkers where a munmap frees a
    # table while another thread runs (s390's 1 MiB tables).
    assert {v["rule"] for v in violations} == {"table-reachable", "table-free-walkers"}


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
        (["no-such-scenario"], "no-such-scenario: no such built-in scenario or file "
         "(built-in: default, "),
        (["--arch", "up", "--arch", "up"], "arch 'up' is named twice"),
        (["--show", "-1"], "run: argument --show: -1 is negative"),
        (["--max-pages", "0"], "run: argument --max-pages: must be at least 1"),
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
        caught = (f"    caught by: {m.rule} ({RULES[m.rule]}), mmugather run {m.scenario}"
                  if m.rule else f"    explorer: {m.prop}, mmugather explore {m.explore}")
        assert f"{m.name}\n    {m.description}\n{caught}\n" in out


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


def test_reports_beyond_show_and_the_cap_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--mutant", "free-before-flush", "--arch", "up",
                             "--show", "1")
    assert status == 1
    status, doc, _ = run_cli(capsys, "--mutant", "free-before-flush", "--arch", "up", "--json")
    (run,) = json.loads(doc)["runs"]
    total, kept = sum(run["violations"].values()), len(run["reports"])
    assert total > kept == 50
    assert f"\nup: {total:,} violations (page-reachable: " in out
    assert out.count("\n[") == 1
    assert out.splitlines()[-1] == (
        "  … 49 more reports (reports are capped at 50; --show N, --json for all)")
    status, out, _ = run_cli(capsys, "--mutant", "free-before-flush", "--arch", "up",
                             "--show", "0")
    assert "\n[" not in out
    assert "  … 50 more reports (reports are capped at 50; --show N, --json for all)" in out


def test_a_mutant_only_an_interleaving_shows(capsys: pytest.CaptureFixture[str]) -> None:
    """run says where to look for a mutant its checker cannot see."""
    status, out, _ = run_cli(capsys, "order0-anon", "--arch", "x86-64", "--arch", "up",
                             "--mutant", "no-flush-batched-pending")
    assert status == 0
    assert out.endswith(
        "\nx86-64: the checker cannot see this mutant, only an interleaving shows it: "
        "mmugather explore reclaim-munmap --arch x86-64 --mutant no-flush-batched-pending\n"
        "\nup: the mutant's ordering is not wrong on this arch: no violation expected\n")
