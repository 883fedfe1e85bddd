"""One set of callers: run with no actor but its zapping thread, the explorer
emits exactly the event stream of ``mmugather run`` (``core.run.run_arch``)
on the same scenario, arch and strategy, so the explorer explores the code
the checker judges.

The only events it adds are its own (``syscall_enter``/``syscall_return``,
one of each per operation).  ``exit-4g`` (2.1 million events, about 20 s a
combination) is compared on one arch and strategy: it is ``order0-anon``'s
code paths at 128 times the size.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from conftest import ARCHES
from mmugather.core import strategies
from mmugather.core.arch import registry
from mmugather.core.events import EXPLORER_EVENTS, Collector
from mmugather.core.explore import Config, Engine
from mmugather.core.explore.real import RealWorld, Setup
from mmugather.core.explore.spec import from_run_scenario
from mmugather.core.run import run_arch
from mmugather.core.scenario import builtin_names, load_builtin

SCENARIOS = [n for n in builtin_names() if n != "exit-4g"]


def solo(name: str, arch: str, strategy: str, check: bool = True) -> list[dict[str, Any]]:
    cfg = Config(from_run_scenario(load_builtin(name)), arch, strategy=strategy, check=check)
    world = RealWorld(Setup(cfg), track=False)
    events: list[dict[str, Any]] = []
    world.run_solo(events.append)
    return events


def first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    for n, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"event #{n}: explorer {x} != run {y}"
    return f"explorer {len(a)} events, run {len(b)}"


@pytest.mark.parametrize("strategy", strategies.names())
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", SCENARIOS)
def test_explorer_emits_the_run_event_stream(name: str, arch: str, strategy: str) -> None:
    run = Collector()
    run_arch(load_builtin(name), registry().get(arch), strategy=strategy, stats=False,
             extra_observers=[run])
    explored = solo(name, arch, strategy)
    own = [e for e in explored if e["event"] in EXPLORER_EVENTS]
    ops = load_builtin(name).ops
    assert [(e["event"], e["op"]) for e in own] == [
        (ev, op["kind"]) for op in ops for ev in ("syscall_enter", "syscall_return")]
    callers = [e for e in explored if e["event"] not in EXPLORER_EVENTS]
    assert callers == run.events, first_difference(callers, run.events)


def test_exit_4g_emits_the_run_event_stream() -> None:
    """Compared as a digest of each event's JSON, 2.1 million of them."""

    def digester() -> tuple[Any, list[int]]:
        h = hashlib.blake2b()
        n = [0]

        def feed(ev: dict[str, Any]) -> dict[str, Any]:
            if ev["event"] not in EXPLORER_EVENTS:
                h.update(orjson.dumps(ev))
                n[0] += 1
            return ev

        return (h, feed), n

    (run_hash, run_feed), run_n = digester()
    run_arch(load_builtin("exit-4g"), registry().get("generic-smp"), check=False, stats=False,
             extra_observers=[lambda logger, method, ev: run_feed(ev)])
    (ex_hash, ex_feed), ex_n = digester()
    cfg = Config(from_run_scenario(load_builtin("exit-4g")), "generic-smp", check=False)
    RealWorld(Setup(cfg), track=False).run_solo(ex_feed)
    assert ex_n == run_n
    assert ex_hash.hexdigest() == run_hash.hexdigest()


#: a small process with one of everything the callers tear down differently
SMALL = {
    "name": "small",
    "vma": [
        {"name": "text", "start": 0x400000, "end": 0x408000, "kind": "file", "file": "app",
         "exec": True, "populate": [{"pages": 4}]},
        {"name": "heap", "start": 0x1000000, "end": 0x1010000, "kind": "anon",
         "populate": [{"pages": 4, "dirty": True},
                      {"offset": 0x8000, "pages": 2, "state": "swap"},
                      {"offset": 0xa000, "pages": 2, "state": "zero"}]},
        {"name": "mthp", "start": 0x2000000, "end": 0x2020000, "kind": "anon",
         "populate": [{"pages": 32, "folio_order": 4, "dirty": True}]},
        {"name": "thp", "start": 0x2200000, "end": 0x2600000, "kind": "anon",
         "populate": [{"pages": 512, "folio_order": "pmd", "pmd_mapped": True}]},
        {"name": "db", "start": 0x10000000, "end": 0x10004000, "kind": "file-shared",
         "file": "db", "populate": [{"pages": 4, "dirty": True}]},
        {"name": "hugetlb", "start": 0x40000000, "end": 0x40400000, "kind": "hugetlb",
         "populate": [{"pages": 512, "dirty": True}]},
        {"name": "fb", "start": 0x50000000, "end": 0x50004000, "kind": "pfnmap",
         "populate": [{"pages": 4}]},
    ],
    "op": [
        {"kind": "munmap", "start": 0x1000000, "end": 0x1004000},
        {"kind": "madvise_dontneed", "start": 0x2000000, "end": 0x2010000},
        {"kind": "munmap", "start": 0x10000000, "end": 0x10004000},
        {"kind": "exit"},
    ],
}


@pytest.mark.parametrize("arch", ARCHES)
def test_the_engine_steps_emit_the_same_stream(arch: str) -> None:
    """Through the engine (memoised steps, the shared memory pushed and
    pulled at every step, reads tracked), the zapping thread's steps emit
    the solo run's events, then a grace period runs the RCU callbacks."""
    from mmugather.core.scenario import parse

    scenario = from_run_scenario(parse(SMALL, "<small>"))
    eng = Engine(Config(scenario, arch))
    st = eng.initial
    events: list[dict[str, Any]] = list(eng.init_events)
    zap = eng.by_name["zap0"]
    while zap.enabled(eng, st):
        st, evs, _fp = eng.step(st, zap.index)
        assert st.violation is None and st.checker is None
        events.extend(evs)
    rcu = eng.by_name["rcu"]
    if rcu.enabled(eng, st):
        st, evs, _fp = eng.step(st, rcu.index)
        events.extend(evs)
    world = RealWorld(Setup(Config(scenario, arch)), track=False)
    expected: list[dict[str, Any]] = []
    world.run_solo(expected.append)
    if not st.rcu and expected[-1] == {"callbacks": 0, "event": "rcu_grace_period"}:
        # The run ends with a grace period; with nothing queued it is not a
        # step of the explorer (it changes nothing).
        expected = expected[:-1]
    assert events == expected, first_difference(events, expected)
    assert not eng.enabled(st)
    run = Collector()
    run_arch(parse(SMALL, "<small>"), registry().get(arch), stats=False, extra_observers=[run])
    callers = [e for e in expected if e["event"] not in EXPLORER_EVENTS]
    assert callers == run.events[: len(callers)]
    assert len(run.events) - len(callers) in (0, 1)
    # Every operation ran, and the stream is not trivial.
    assert sum(e["event"] == "syscall_return" for e in events) == len(SMALL["op"])
    assert sum(e["event"] == "pte_clear" for e in events) > 20
    eng.close()
