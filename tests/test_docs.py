"""The reference documentation under docs/ stays in step with the code.

* every hookspec has a section in docs/hooks.md, and every section names a
  hookspec, with the spec's parameters in its signature;
* every event name has a section in docs/events.md, and every section names
  an event, with a JSON example whose fields are in its field table;
* the replay ops and arch names of docs/replay.md are the code's;
* the complete example of docs/api.md runs;
* every hookspec is exercised by some test module other than this one.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from mmugather.core import hookspecs
from mmugather.core.events import (
    ALL_EVENTS,
    CALLER_EVENTS,
    CONTRACT_EVENTS,
    DETAIL_EVENTS,
    EXPLORER_EVENTS,
    HARDWARE_EVENTS,
    MODEL_EVENTS,
)
from mmugather.core.replay import OPS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"

SECTION = re.compile(r"^## `([A-Za-z0-9_]+)`[ \t]*$", re.MULTILINE)


def sections(name: str) -> dict[str, str]:
    """The ``## `name` `` sections of a page, name -> body up to the next heading
    of the same or a higher level."""
    text = (DOCS / name).read_text()
    out: dict[str, str] = {}
    matches = list(SECTION.finditer(text))
    for m in matches:
        rest = text[m.end() :]
        stop = re.search(r"^#{1,2} ", rest, re.MULTILINE)
        body = rest[: stop.start()] if stop else rest
        assert m.group(1) not in out, f"{name}: section {m.group(1)!r} appears twice"
        out[m.group(1)] = body
    return out


def table_first_column(body: str) -> set[str]:
    """The backquoted names in the first column of the section's table rows."""
    names = set()
    for line in body.splitlines():
        cell = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if cell:
            names.add(cell.group(1))
    return names


# ---------------------------------------------------------------------------
# hooks.md
# ---------------------------------------------------------------------------


def test_every_hookspec_has_a_section() -> None:
    documented = sections("hooks.md")
    missing = [name for name in hookspecs.hook_names() if name not in documented]
    assert not missing, f"docs/hooks.md has no section for: {', '.join(missing)}"


def test_every_hook_section_names_a_hookspec() -> None:
    stale = sorted(set(sections("hooks.md")) - set(hookspecs.hook_names()))
    assert not stale, f"docs/hooks.md documents hooks that no longer exist: {', '.join(stale)}"


@pytest.mark.parametrize("name", hookspecs.hook_names())
def test_hook_section_shows_the_signature(name: str) -> None:
    body = sections("hooks.md").get(name)
    if body is None:
        pytest.fail(f"docs/hooks.md has no section for {name}")
    spec = getattr(hookspecs, name)
    params = list(inspect.signature(spec).parameters)
    m = re.search(rf"def {name}\(([^)]*)\)", body)
    assert m, f"docs/hooks.md: section {name} shows no 'def {name}(...)' signature"
    shown = [p.split(":")[0].strip() for p in m.group(1).split(",") if p.strip()]
    assert shown == params, f"{name}: documented {shown}, hookspec has {params}"
    firstresult = bool(getattr(spec, hookspecs.PROJECT + "_spec").get("firstresult"))
    assert ("firstresult=True" in body) == firstresult, f"{name}: firstresult mismatch"


# ---------------------------------------------------------------------------
# events.md
# ---------------------------------------------------------------------------


def test_event_sets_are_disjoint() -> None:
    sets = [CONTRACT_EVENTS, MODEL_EVENTS, DETAIL_EVENTS, CALLER_EVENTS, HARDWARE_EVENTS,
            EXPLORER_EVENTS]
    assert sum(len(s) for s in sets) == len(ALL_EVENTS)


def test_event_sets_table_matches_the_code() -> None:
    text = (DOCS / "events.md").read_text()
    sets = {
        "CONTRACT_EVENTS": CONTRACT_EVENTS,
        "MODEL_EVENTS": MODEL_EVENTS,
        "DETAIL_EVENTS": DETAIL_EVENTS,
        "CALLER_EVENTS": CALLER_EVENTS,
        "HARDWARE_EVENTS": HARDWARE_EVENTS,
        "EXPLORER_EVENTS": EXPLORER_EVENTS,
    }
    for name, members in sets.items():
        row = re.search(rf"^\| `{name}` \|[^|]*\|(.*)\|$", text, re.MULTILINE)
        assert row, f"docs/events.md: no row for {name}"
        assert set(re.findall(r"`([a-z_0-9]+)`", row.group(1))) == members, name


def test_every_event_has_a_section() -> None:
    documented = sections("events.md")
    missing = sorted(ALL_EVENTS - set(documented))
    assert not missing, f"docs/events.md has no section for: {', '.join(missing)}"


def test_every_event_section_names_an_event() -> None:
    stale = sorted(set(sections("events.md")) - ALL_EVENTS)
    assert not stale, f"docs/events.md documents events that no longer exist: {', '.join(stale)}"


@pytest.mark.parametrize("name", sorted(ALL_EVENTS))
def test_event_section_example_matches_its_fields(name: str) -> None:
    body = sections("events.md").get(name)
    if body is None:
        pytest.fail(f"docs/events.md has no section for {name}")
    blocks = re.findall(r"```json\n(.*?)```", body, re.DOTALL)
    assert len(blocks) == 1, f"{name}: expected one JSON example, found {len(blocks)}"
    lines = blocks[0].strip().splitlines()
    assert len(lines) == 1, f"{name}: the example must be one line"
    example = json.loads(lines[0])
    assert example.get("event") == name, f"{name}: the example is a {example.get('event')!r}"
    fields = table_first_column(body)
    extra = sorted(set(example) - {"event"} - fields)
    assert not extra, f"{name}: example fields not in the field table: {extra}"
    if fields:
        assert "| field | type | meaning |" in body, f"{name}: no field table"
    else:
        assert "No fields." in body, f"{name}: no field table and no 'No fields.'"


def explored_events(tmp: str) -> list[dict[str, Any]]:
    """The events of every step the explorer takes over its built-in
    scenarios, and a trace file of a counterexample (its lines carry the
    trace fields)."""
    from mmugather.core.explore import Config, Engine, spec
    from mmugather.core.explore.search import exhaustive

    events: list[dict[str, Any]] = []
    # x86-64 too: it batches reclaim's flushes and shares hugetlb PMD tables.
    for name, arch in [(n, a) for n in spec.builtin_names() for a in ("generic-smp", "x86-64")]:
        eng = Engine(Config(spec.load_builtin(name), arch))
        step = eng.step

        def recording(st: Any, index: int, step: Any = step) -> Any:
            out = step(st, index)
            events.extend(out[1])
            return out

        eng.step = recording  # type: ignore[method-assign]
        exhaustive(eng, eng.cfg.scenario.depth)
        eng.close()
    trace = Path(tmp) / "trace.jsonl"
    cmd = [sys.executable, "-m", "mmugather", "explore", "dirty-writeback", "--arch",
           "generic-smp", "--mutant", "rmap-before-flush", "--events", str(trace)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    with trace.open() as f:
        events.extend(json.loads(line) for line in f.readlines()[1:])
    return events


def emitted_events() -> list[dict[str, Any]]:
    """Events the code really emits: every replay example under its arch with
    detail on, a replay reaching the single-table fallback and a VM_BUG_ON,
    and caller runs of the default scenario on every arch, plus one with a
    mutant so that the checker reports violations; and the explorer's."""
    from mmugather.core.arch import make_machine
    from mmugather.core.events import Collector, make_emit
    from mmugather.core.replay import parse_file, run

    events: list[dict[str, Any]] = []

    def replay(path: Path, arch: str) -> Any:
        collector = Collector()
        emit = make_emit(observers=[collector])
        machine = make_machine(arch, emit=emit, detail=emit)
        result = run(parse_file(str(path), machine.geometry.page_size), machine)
        events.extend(collector.events)
        return result

    def caller_run(*args: str, status: int) -> None:
        out = Path(tmp) / "run.jsonl"
        cmd = [sys.executable, "-m", "mmugather", "run", "default", *args, "--events", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == status, proc.stdout + proc.stderr
        with out.open() as f:
            events.extend(json.loads(line) for line in f)

    for ops in sorted((TESTS / "data" / "replay").glob("*/*.ops.jsonl")):
        replay(ops, ops.parent.name)
    with tempfile.TemporaryDirectory() as tmp:
        edge = Path(tmp) / "edge.jsonl"
        edge.write_text(
            '{"op":"fail_alloc","what":"table_batch"}\n'
            '{"op":"tlb_gather_mmu"}\n'
            '{"op":"pte_free_tlb","table":7,"addr":4194304}\n'
            '{"op":"__tlb_remove_page_size","page":1}\n'
        )
        assert replay(edge, "rcu-table-free").bug == "!tlb->end"
        # The built-in arches by name: a subprocess sees installed arch plugins too.
        from conftest import ARCHES

        caller_run(*(a for arch in ARCHES for a in ("--arch", arch)), status=0)
        caller_run("--arch", "generic-smp", "--strategy", "ranges", status=0)
        caller_run("--arch", "generic-smp", "--strategy", "folio-batch", status=0)
        caller_run("--arch", "generic-smp", "--mutant", "free-before-flush", status=1)
        events.extend(explored_events(tmp))
    return events


#: Fields any event may carry, documented once under "Common fields".
COMMON_FIELDS = ("arch", "step", "actor", "cpu")


def test_common_fields_are_documented() -> None:
    text = (DOCS / "events.md").read_text()
    common = text.split("## Common fields", 1)[1].split("\n## ", 1)[0]
    for field in COMMON_FIELDS:
        assert f"`{field}`" in common


def test_emitted_fields_are_documented() -> None:
    documented = sections("events.md")
    fields = {name: table_first_column(body) for name, body in documented.items()}
    problems: set[str] = set()
    seen: set[str] = set()
    for event in emitted_events():
        name = event["event"]
        seen.add(name)
        if name not in documented:
            problems.add(f"{name}: emitted but not documented")
            continue
        for key in set(event) - {"event", *COMMON_FIELDS} - fields[name]:
            problems.add(f"{name}: field {key!r} is emitted but not documented")
    assert not problems, "\n".join(sorted(problems))
    # The sample is meant to be broad: most documented events really occur.
    assert seen == ALL_EVENTS, sorted(ALL_EVENTS - seen)


def test_events_version_is_documented() -> None:
    from mmugather.core.events import EVENTS_VERSION

    text = (DOCS / "events.md").read_text()
    assert f"currently **{EVENTS_VERSION}**" in text


# ---------------------------------------------------------------------------
# replay.md
# ---------------------------------------------------------------------------


def test_replay_ops_table_matches_the_parser() -> None:
    text = (DOCS / "replay.md").read_text()
    table = text[text.index("### Ops") :]
    table = table[: table.index("\n\n", table.index("| op |"))]
    documented: dict[str, set[str]] = {}
    for line in table.splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        fields = set(re.findall(r"`([a-z_]+)`", cells[1]))
        for op in re.findall(r"`([a-z_0-9]+)`", cells[0]):
            documented[op] = fields
    assert set(documented) == set(OPS)
    for op, spec in OPS.items():
        assert documented[op] == set(spec), f"replay.md: fields of {op}"


def test_replay_arches_are_the_builtin_ones() -> None:
    from mmugather.arches import BUILTIN

    text = (DOCS / "replay.md").read_text()
    arches = text[text.index("## Arches") :]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", arches, re.MULTILINE)
    assert rows == [spec.name for spec in BUILTIN]
    for spec in BUILTIN:
        row = next(line for line in arches.splitlines() if line.startswith(f"| `{spec.name}` |"))
        for feat in spec.resolved_features():
            assert f"`{feat}`" in row, f"replay.md: {spec.name} lacks feature {feat}"


def test_replay_options_are_documented() -> None:
    from mmugather.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    replay = sub.choices["replay"]  # type: ignore[attr-defined]
    options = {o for a in replay._actions for o in a.option_strings if o.startswith("--")}
    options -= {"--help"}
    text = (DOCS / "replay.md").read_text()
    table = text[text.index("## Options") : text.index("### Exit status")]
    documented = set(re.findall(r"^\| `(--[a-z-]+)", table, re.MULTILINE))
    assert documented == options, (sorted(options - documented), sorted(documented - options))


# ---------------------------------------------------------------------------
# api.md
# ---------------------------------------------------------------------------


def api_example() -> str:
    text = (DOCS / "api.md").read_text()
    part = text[text.index("## Complete example") :]
    m = re.search(r"```python\n(.*?)```", part, re.DOTALL)
    assert m, "docs/api.md: no python block under '## Complete example'"
    return m.group(1)


def test_api_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = compile(api_example(), str(DOCS / "api.md"), "exec")
    exec(code, {"__name__": "__docs_example__"})
    assert "VM_BUG_ON: batch->nr > batch->max" in capsys.readouterr().out


def test_api_documents_every_kernel_named_function() -> None:
    from mmugather.core import api

    text = (DOCS / "api.md").read_text()
    names = [*api.__all__, "__tlb_remove_page_size", "__tlb_remove_page"]
    missing = [n for n in names if f"`{n}(" not in text]
    assert not missing, f"docs/api.md does not show: {missing}"


# ---------------------------------------------------------------------------
# Every hook is tested somewhere
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", hookspecs.hook_names())
def test_every_hookspec_has_a_test(name: str) -> None:
    mentioned = [
        path.name
        for path in sorted(TESTS.glob("test_*.py"))
        if path.name != "test_docs.py" and re.search(rf"\b{name}\b", path.read_text())
    ]
    assert mentioned, f"no tests/test_*.py (besides test_docs.py) mentions hook {name}"


def test_api_documents_every_gather_method() -> None:
    from mmugather.core.gather import MmuGather

    text = (DOCS / "api.md").read_text()
    methods = text[text.index("### Methods") : text.index("## Kernel-named functions")]
    documented = set()
    for line in methods.splitlines():
        cells = line.split("|")
        if len(cells) > 3:
            documented.update(re.findall(r"`([a-z_0-9]+)\(", cells[2]))
    public = {
        name
        for name, value in vars(MmuGather).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    assert not public - documented, f"docs/api.md misses methods: {sorted(public - documented)}"
    stale = sorted(documented - public - {"_gather_mmu"})
    assert not stale, f"docs/api.md documents methods that no longer exist: {stale}"


# ---------------------------------------------------------------------------
# concepts.md: where each kernel function lives
# ---------------------------------------------------------------------------


def concepts_table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in docs/concepts.md, as
    lists of cells with their backquotes."""
    text = (DOCS / "concepts.md").read_text()
    start = text.index(f"\n{heading}\n")
    rows = []
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= set("- ") and cells[0] not in ("kernel file", "step"):
                rows.append(cells)
        elif in_table:
            break
    return rows


def _resolve(module_name: str, dotted: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module_name)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _unquote(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"docs/concepts.md: {cell!r} is not one backquoted name"
    return m.group(1)


MAP = concepts_table("## Where each kernel function lives")
STEPS = concepts_table("### Steps")


def test_concepts_map_is_there() -> None:
    assert len(MAP) > 60 and len(STEPS) > 10
    files = {_unquote(row[0]) for row in MAP}
    assert {"mm/memory.c", "mm/mmap.c", "mm/huge_memory.c", "mm/hugetlb.c", "mm/madvise.c",
            "mm/rmap.c", "mm/swap.c", "mm/mmu_gather.c"} <= files


@pytest.mark.parametrize("row", MAP, ids=lambda row: f"{row[2]}:{row[3]}".replace("`", ""))
def test_concepts_map_names_what_exists(row: list[str]) -> None:
    """Each function the map names exists where it says, and a callers
    module's docstring names the kernel file the map gives it."""
    kernel_file, functions, module_cell, model_cell = row
    assert re.search(r"`[a-z_0-9?]+\(\)`", functions), f"no kernel function in {functions!r}"
    module_name, model = _unquote(module_cell), _unquote(model_cell)
    obj = _resolve(module_name, model)
    assert callable(obj), f"{module_name}.{model} is not a function or method"
    module = sys.modules[module_name]
    if module_name.startswith("mmugather.core.callers."):
        assert _unquote(kernel_file) in (module.__doc__ or ""), (
            f"{module_name}'s docstring does not name {kernel_file}"
        )


@pytest.mark.parametrize("row", STEPS, ids=lambda row: row[0].replace("`", ""))
def test_concepts_steps_exist(row: list[str]) -> None:
    from mmugather.core import gather
    from mmugather.core.callers import memory_v6_9  # noqa: F401

    cls_name, method = _unquote(row[0]).split(".")
    classes = {c.__name__: c for c in _caller_classes()} | {"MmuGather": gather.MmuGather}
    assert callable(getattr(classes[cls_name], method))


def _caller_classes() -> list[type]:
    from mmugather.core import callers
    from mmugather.core.callers.model import GatherModel
    from mmugather.core.callers.rmap import SeriesRmap

    return [*callers.PARTS.values(), *callers.MEMORY.values(), SeriesRmap, GatherModel]


def test_every_caller_method_is_mapped() -> None:
    """Every public method of the callers' classes is in the map (a kernel
    function) or in the steps table."""
    named = {_unquote(row[3]) for row in MAP if row[2].startswith("`mmugather.core.callers")}
    named |= {_unquote(row[0]) for row in STEPS}
    missing = []
    for cls in _caller_classes():
        for name in vars(cls):
            if name.startswith("_") or not callable(getattr(cls, name)):
                continue
            # A step a subclass overrides is mapped on the class that has it first.
            if not any(f"{base.__name__}.{name}" in named for base in cls.__mro__):
                missing.append(f"{cls.__module__}.{cls.__name__}.{name}")
    assert not missing, f"docs/concepts.md does not map: {missing}"


# ---------------------------------------------------------------------------
# What an arch author needs: every field of ArchSpec and Geometry
# ---------------------------------------------------------------------------


def _section_of(page: str, heading: str) -> str:
    text = (DOCS / page).read_text()
    start = text.index(heading)
    stop = re.search(r"^#{1,2} ", text[start + len(heading):], re.MULTILINE)
    return text[start: start + len(heading) + stop.start()] if stop else text[start:]


def test_every_archspec_field_is_documented() -> None:
    import attrs
    from mmugather.core.arch import ArchSpec

    body = _section_of("hooks.md", "## Arch configurations")
    fields = {f.name for f in attrs.fields(ArchSpec)}
    assert table_first_column(body) == fields
    assert "tlb.machine.arch" in body


def test_every_geometry_field_is_documented() -> None:
    import attrs
    from mmugather.core.constants import Geometry

    body = _section_of("hardware.md", "## Page-table geometry").split("### ")[0]
    given = {f.name for f in attrs.fields(Geometry) if f.init}
    derived = {f.name for f in attrs.fields(Geometry) if not f.init} | {"queue_capacity"}
    assert table_first_column(body) == given
    shown = set(re.findall(r"`([a-z0-9_]+)`", body))
    assert not derived - shown, f"docs/hardware.md does not name {sorted(derived - shown)}"


def test_no_doc_keeps_a_placeholder() -> None:
    """A line that is one upper-case token (``BEFORE_AFTER_TABLE``) is a
    placeholder a figure or a table was meant to replace."""
    left = [
        f"{path.relative_to(ROOT)}:{n}: {line}"
        for path in sorted([*DOCS.glob("*.md"), ROOT / "README.md"])
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", line.strip())
    ]
    assert left == []
