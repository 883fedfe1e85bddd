"""analyze agrees with run; the trace is valid trace-event JSON; every
recipe in docs/analysis.md runs and gives the run's numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmugather.cli.analyze import LogError, analyze, to_trace

ROOT = Path(__file__).resolve().parent.parent


def _mmugather(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmugather", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def run_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("log") / "run.jsonl"
    out = _mmugather("run", "--events", str(path), "--json")
    assert out.returncode == 0, out.stderr
    return path, {r["arch"]: r for r in json.loads(out.stdout)["runs"]}


def test_analyze_numbers_equal_the_run_table(run_log: tuple[Path, dict[str, Any]]) -> None:
    path, runs = run_log
    results = analyze(str(path))
    assert sorted(results) == sorted(runs)
    for arch, run in runs.items():
        assert results[arch].stats.as_dict() == run["stats"], arch
    out = _mmugather("analyze", str(path), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for arch, run in runs.items():
        assert data[arch]["stats"] == run["stats"]
        walked = sum(int(k) * v for k, v in data[arch]["rmap_walk_lengths"].items())
        assert walked == run["stats"]["rmap_walked"]
        assert sum(data[arch]["flushes_per_vma"].values()) == (
            run["stats"]["tlb_flush_range"] + run["stats"]["tlb_flush_mm"]
        )
        tables = data[arch]["tables_freed"]
        assert tables["after RCU"] == run["stats"]["tables_rcu"]


def test_analyze_text_has_the_table_and_summaries(run_log: tuple[Path, Any]) -> None:
    path, _runs = run_log
    out = _mmugather("analyze", str(path))
    assert out.returncode == 0
    for needle in ("PTEs zapped", "TLB flushes per VMA", "queue length at each flush",
                   "tlb_flush_rmaps walk lengths", "page tables freed:", "rcu-table-free"):
        assert needle in out.stdout


def _validate_trace(trace: dict[str, Any]) -> None:
    """The trace-event format's rules for the phases we use."""
    assert set(trace) >= {"traceEvents"}
    assert trace["displayTimeUnit"] in ("ms", "ns")
    stacks: dict[tuple[int, int], list[str]] = {}
    last_ts: dict[tuple[int, int], float] = {}
    for ev in trace["traceEvents"]:
        assert isinstance(ev["name"], str) and ev["name"]
        assert ev["ph"] in ("B", "E", "X", "i", "M"), ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name")
            assert isinstance(ev["args"]["name"], str)
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        key = (ev["pid"], ev["tid"])
        assert ev["ts"] >= last_ts.get(key, 0), "timestamps go back on a track"
        last_ts[key] = ev["ts"]
        if ev["ph"] == "X":
            assert ev["dur"] >= 0
        elif ev["ph"] == "i":
            assert ev["s"] in ("g", "p", "t")
        elif ev["ph"] == "B":
            stacks.setdefault(key, []).append(ev["name"])
        elif ev["ph"] == "E":
            assert stacks.get(key), f"E without B on {key}"
            assert stacks[key].pop() == ev["name"]
    assert all(not s for s in stacks.values()), "unclosed slices"
    json.dumps(trace)


def test_trace_is_valid_trace_event_json(run_log: tuple[Path, Any], tmp_path: Path) -> None:
    path, runs = run_log
    trace = to_trace(str(path))
    _validate_trace(trace)
    procs = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert procs == set(runs)
    flushes = [e for e in trace["traceEvents"] if e["name"].startswith("tlb_flush ")]
    assert len(flushes) == sum(r["stats"]["tlb_flush_range"] + r["stats"]["tlb_flush_mm"]
                               for r in runs.values())
    out = tmp_path / "t.json"
    cli = _mmugather("analyze", str(path), "--trace", str(out))
    assert cli.returncode == 0
    _validate_trace(json.loads(out.read_text()))


def test_trace_of_a_replay(tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    ops = ROOT / "tests/data/replay/rcu-table-free/flow_exit_tiny.ops.jsonl"
    out = _mmugather("replay", str(ops), "--arch", "rcu-table-free", "--events", str(log))
    assert out.returncode == 0
    trace = to_trace(str(log))
    _validate_trace(trace)
    names = [e["name"] for e in trace["traceEvents"]]
    assert "rcu_queue" in names and "table_free" in names and "fullmm gather" in names


def test_bad_log_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event":"gather_begin","fullmm":true}\nnot json\n')
    with pytest.raises(LogError, match=r"bad.jsonl:2: not JSON"):
        analyze(str(bad))
    out = _mmugather("analyze", str(bad))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "bad.jsonl:2" in out.stderr
    missing = _mmugather("analyze", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def _recipes() -> list[str]:
    text = (ROOT / "docs" / "analysis.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_have_pandas_and_duckdb_recipes() -> None:
    recipes = _recipes()
    assert sum("pandas" in r for r in recipes) >= 3
    assert sum("duckdb" in r for r in recipes) >= 3


def test_recipes_run_and_agree_with_the_run(run_log: tuple[Path, dict[str, Any]]) -> None:
    path, runs = run_log
    results: dict[str, Any] = {}
    for code in _recipes():
        scope: dict[str, Any] = {"EVENTS": str(path)}
        exec(compile(code, "docs/analysis.md", "exec"), scope)
        results.update({k: v for k, v in scope.items() if not k.startswith("__")})
    per_scope = results["per_scope"]
    for arch, run in runs.items():
        assert per_scope.loc[arch].get("mm", 0) == run["stats"]["tlb_flush_mm"]
        assert per_scope.loc[arch].get("range", 0) == run["stats"]["tlb_flush_range"]
        if run["stats"]["tlb_flush_range"]:
            assert results["range_bytes"][arch] == run["stats"]["tlb_flush_bytes"]
    kinds = {(a, e): n for a, e, n in results["events_per_kind"]}
    for arch, run in runs.items():
        assert kinds.get((arch, "pte_clear"), 0) == (
            run["stats"]["ptes_zapped"] + run["stats"]["pmds_zapped"]
            + run["stats"]["huge_zapped"]
        )
    frees = {a: (calls, pages) for a, calls, pages in results["pages_per_free"]}
    for arch, run in runs.items():
        if arch in frees:
            assert frees[arch][1] == run["stats"]["pages_freed"] + run["stats"][
                "tables_page_batch"]
    rcu = dict(results["rcu_tables"])
    assert rcu.get("rcu-table-free") == runs["rcu-table-free"]["stats"]["tables_rcu"]
    assert results["walk_summary"].loc["generic-smp", "count"] > 0
