"""The direct JSON Lines writer against the structlog chain it stands in for.

``make_emit(file=...)`` writes JSON Lines without structlog (the observers,
``orjson.dumps``, a buffered write); ``make_structlog_emit`` is the
configurable structlog path.  Both must write the same bytes, whatever
writes the events: the engine, the replay's own ``return`` lines, the
per-page rows, the callers, the checker's violations.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import ARCHES
from mmugather.core import events as events_mod
from mmugather.core.arch import make_machine, registry
from mmugather.core.check import Checker
from mmugather.core.events import Collector, JsonRows, make_emit, make_stream, raw_write
from mmugather.core.events_structlog import make_structlog_emit
from mmugather.core.replay import parse, parse_file, run
from mmugather.core.run import run_arch
from mmugather.core.scenario import builtin_names, load_builtin

from mmugather.cli.bench_ops import generate_ops

DATA = Path(__file__).parent / "data" / "replay"
EXAMPLES = sorted(DATA.glob("*/*.ops.jsonl"))


def _replay_bytes(compiled: list[Any], arch: str, emit_of: Any, *, detail: bool,
                  check: bool = False) -> bytes:
    out = io.BytesIO()
    observers: list[Any] = []
    checker = None
    if check:
        checker = Checker(registry().get(arch), 4096, replay=True)
        observers.append(checker)
    emit = emit_of(file=out, observers=observers)
    if checker is not None:
        checker.emit = emit
    machine = make_machine(arch, emit=emit, detail=emit if detail else None)
    run(compiled, machine, check=check)
    return out.getvalue()


@pytest.mark.parametrize("arch", ARCHES)
def test_replay_writes_the_same_bytes_as_the_structlog_chain(arch: str) -> None:
    files = [parse_file(str(p), 4096) for p in EXAMPLES]
    files.append(parse(generate_ops(20_000, 4), "generated", 4096))
    for compiled in files:
        for detail in (False, True):
            for check in (False, True):
                direct = _replay_bytes(compiled, arch, make_emit, detail=detail, check=check)
                chain = _replay_bytes(compiled, arch, make_structlog_emit, detail=detail,
                                      check=check)
                assert direct == chain
                assert direct.count(b"\n") > 0


def test_a_plain_replay_writes_rows_and_returns_directly() -> None:
    out = io.BytesIO()
    emit = make_emit(file=out)
    assert raw_write(emit) == out.write
    assert isinstance(make_stream(file=out)[1], JsonRows)
    # Observed streams go through emit: observers see every event.
    observed = make_emit(file=out, observers=[Collector()])
    assert raw_write(observed) is None
    assert raw_write(make_emit(observers=[Collector()])) is None


#: The built-in scenarios small enough to log twice in a test.
SMALL = [n for n in builtin_names() if n not in ("exit-4g", "munmap-large")]


@pytest.mark.parametrize("name", SMALL)
def test_run_writes_the_same_bytes_as_the_structlog_chain(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mmugather run --events``: callers' events, rows, the checker's
    violations and the run's ``arch`` tag."""
    scenario = load_builtin(name)
    spec = registry().get("generic-smp")
    direct = io.BytesIO()
    run_arch(scenario, spec, events=direct, mutant="free-before-flush")
    monkeypatch.setattr(
        events_mod, "_json_writer",
        lambda file, observers: make_structlog_emit(file=file, observers=observers),
    )
    chain = io.BytesIO()
    run_arch(scenario, spec, events=chain, mutant="free-before-flush")
    assert direct.getvalue() == chain.getvalue()
    assert b'"event":"pte_clear"' in direct.getvalue()


def test_observers_may_change_and_drop_events_as_in_a_chain() -> None:
    def drop_returns(logger: Any, method: str, event_dict: Any) -> Any:
        if event_dict["event"] == "return":
            raise structlog.DropEvent
        return event_dict

    def tag(logger: Any, method: str, event_dict: Any) -> Any:
        return {**event_dict, "tag": 1}

    compiled = parse_file(str(EXAMPLES[0]), 4096)
    outs = []
    for make in (make_emit, make_structlog_emit):
        out = io.BytesIO()
        emit = make(file=out, observers=[drop_returns, tag])
        run(compiled, make_machine("generic-smp", emit=emit))
        outs.append(out.getvalue())
    assert outs[0] == outs[1]
    assert b'"event":"return"' not in outs[0] and b'"tag":1' in outs[0]


def test_processors_go_through_structlog() -> None:
    out = io.BytesIO()
    emit = make_emit(file=out, processors=[structlog.processors.add_log_level])
    assert emit is not None
    emit("rmap_remove", page=5)
    assert out.getvalue() == b'{"page":5,"event":"rmap_remove","level":"info"}\n'
    with pytest.raises(ValueError, match="file"):
        make_emit(processors=[structlog.processors.add_log_level])


def test_objects_orjson_cannot_write_fall_back_as_in_structlog() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    class Logged:
        def __structlog__(self) -> str:
            return "logged"

    outs = []
    for make in (make_emit, make_structlog_emit):
        out = io.BytesIO()
        emit = make(file=out)
        emit("x", a=Odd(), b=Logged(), c=3)
        rows = events_mod.page_rows(emit, None)
        assert rows is not None
        rows.rmap_remove([1, True, Odd(), (1 << 64) - 1], 0)  # type: ignore[list-item]
        rows.pte_clear((4096, None, None, False))
        rows.pte_clear((4096, 7, "batched", True))
        outs.append(out.getvalue())
    assert outs[0] == outs[1]
    assert outs[0].startswith(b'{"a":"<odd>","b":"logged","c":3,"event":"x"}\n')


def test_console_format_leaves_observed_events_whole() -> None:
    """The console renderer pops keys from what it renders; the checker keeps
    the dicts it saw and quotes them when it reports (issue 12: KeyError)."""
    compiled = parse_file(str(DATA / "generic-smp" / "random_00.ops.jsonl"), 4096)
    checker = Checker(registry().get("generic-smp"), 4096, replay=True)
    out = io.StringIO()
    emit = make_emit(file=out, fmt="console", observers=[checker])
    checker.emit = emit
    run(compiled, make_machine("generic-smp", emit=emit, detail=emit), check=True)
    assert checker.violations
    assert all("event" in ev for v in checker.violations for ev in v.trail)
    assert "violation" in out.getvalue()


def test_replay_check_console_through_the_command() -> None:
    ops = DATA / "generic-smp" / "random_00.ops.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "mmugather", "replay", str(ops), "--arch", "generic-smp",
         "--check", "--format", "console"],
        capture_output=True, timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.startswith(f"{ops}: 3 invariant violations (rmap-not-pending: 3)\n")
    assert b"violation" in proc.stdout


#: What a plain replay never needs, and whose loading is a good part of a
#: short replay's time: structlog (the direct writer does its job), numpy
#: (the teardown's fast paths), the scenario runner and the callers.
NOT_FOR_REPLAY = ("structlog", "numpy", "mmugather.core.run", "mmugather.core.callers",
                  "mmugather.core.check", "mmugather.core.stats")


def test_a_plain_replay_imports_only_what_it_uses(tmp_path: Path) -> None:
    ops = DATA / "generic-smp" / "random_00.ops.jsonl"
    code = (
        "import sys, io\n"
        "from mmugather.cli import main\n"
        f"sys.argv = ['mmugather', 'replay', {str(ops)!r}, '--events', {str(tmp_path / 'e')!r}]\n"
        "assert main(sys.argv[1:]) == 0\n"
        f"print([m for m in {NOT_FOR_REPLAY!r} if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"[]\n"
    assert (tmp_path / "e").read_bytes().count(b"\n") > 10
