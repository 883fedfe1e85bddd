"""Concurrent scenarios: the run format plus ``[[actor]]`` and ``[explore]``."""

from __future__ import annotations

from typing import Any

import pytest
from mmugather.core.explore import spec
from mmugather.core.scenario import ScenarioError

BASE: dict[str, Any] = {
    "vma": [{"start": 0x10000, "end": 0x12000, "kind": "file-shared",
             "populate": [{"pages": 1}]}],
    "op": [{"kind": "munmap", "start": 0x10000, "end": 0x12000}],
}


def parse(*actors: dict[str, Any], **explore: Any) -> spec.ExploreScenario:
    doc = {**BASE, "actor": list(actors)}
    if explore:
        doc["explore"] = explore
    return spec.parse_explore(doc, "s.toml")


def test_actors_are_named_and_placed() -> None:
    sc = parse({"kind": "user", "accesses": [{"op": "load", "addr": 0x10000}]},
               {"kind": "gup_fast", "addr": 0x10000},
               {"kind": "writeback", "addr": 0x10000},
               {"kind": "user", "cpu": 1, "accesses": [{"op": "store", "addr": 0x11000}]})
    assert [(a.name, a.cpu) for a in sc.actors] == [
        ("zap0", 0), ("user0", 2), ("gup_fast0", 3), ("writeback0", None), ("user1", 1)]
    assert sc.cpus == 4 and sc.depth == spec.DEFAULT_DEPTH
    assert sc.actors[0].ops == sc.base.ops
    assert sc.actors[1].accesses == (("load", 0x10000),)


def test_explore_table() -> None:
    sc = parse(cpus=4, depth=30, needs="something")
    assert (sc.cpus, sc.depth, sc.needs) == (4, 30, "something")


@pytest.mark.parametrize("actor,message", [
    ({"cpu": 1}, "s.toml: actor[0].kind: missing"),
    ({"kind": "ghost"}, "s.toml: actor[0].kind: 'ghost' is not one of zap, user, writeback, "
     "gup_fast, reclaim, allocator, driver, sharer"),
    ({"kind": "driver"}, "s.toml: actor[0].addr: missing"),
    ({"kind": "sharer", "addr": 0x10000, "file": "x"},
     "s.toml: actor[0].file: unknown key (allowed: addr, cpu, kind)"),
    ({"kind": "user"}, "s.toml: actor[0].accesses: missing"),
    ({"kind": "user", "accesses": [{"op": "jump", "addr": 0}]},
     "s.toml: actor[0].accesses[0].op: 'jump' is not one of load, store"),
    ({"kind": "user", "cpu": 0, "accesses": [{"op": "load", "addr": 0x10000}]},
     "s.toml: actor[0].cpu: CPU 0 already runs another thread of the process"),
    ({"kind": "gup_fast", "addr": 0x10001}, "s.toml: actor[0].addr: 0x10001 is not page-aligned"),
    ({"kind": "allocator", "reuse": "both"},
     "s.toml: actor[0].reuse: 'both' is not one of page, table, any"),
    ({"kind": "reclaim", "addr": 0x10000, "batched_flush": 1},
     "s.toml: actor[0].batched_flush: must be true or false, not int"),
    ({"kind": "zap", "op": [{"kind": "fork"}]},
     "s.toml: actor[0].op[0].kind: 'fork' is not one of exit, munmap, madvise_dontneed"),
])
def test_actor_errors(actor: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse(actor)
    assert str(exc.value) == message


def test_explore_errors() -> None:
    with pytest.raises(ScenarioError) as exc:
        parse(depth=0)
    assert str(exc.value) == "s.toml: explore.depth: 0 is outside 1..100000"
    with pytest.raises(ScenarioError) as exc:
        parse(speed=1)
    assert str(exc.value) == ("s.toml: explore.speed: unknown key (allowed: cpus, depth, "
                              "fail_alloc, needs)")
    with pytest.raises(ScenarioError) as exc:
        parse(fail_alloc={"page_bach": 1})
    assert str(exc.value) == ("s.toml: explore.fail_alloc.page_bach: unknown key (allowed: "
                              "page_batch, table_batch)")
    with pytest.raises(ScenarioError) as exc:
        parse(fail_alloc={"page_batch": 65})
    assert str(exc.value) == "s.toml: explore.fail_alloc.page_batch: 65 is outside 0..64"
    sc = parse(fail_alloc={"table_batch": 2, "page_batch": 1})
    assert sc.fail_alloc == (("page_batch", 1), ("table_batch", 2))
    with pytest.raises(ScenarioError) as exc:
        spec.parse_explore({**BASE, "vma": []}, "s.toml")
    assert str(exc.value) == "s.toml: vma: must be a non-empty array of tables ([[vma]])"


@pytest.mark.parametrize("name", spec.builtin_names())
def test_builtins_load(name: str) -> None:
    sc = spec.load_builtin(name)
    assert sc.name == name
    assert sc.path == f"<builtin {name}>"
    assert sc.base.description
    assert sc.raw["name"] == name
    assert len(sc.actors) >= 2


def test_builtin_names() -> None:
    assert spec.builtin_names() == ["dirty-writeback", "dontneed-munmap", "dontneed-race",
                                    "hugetlb-unshare-gup", "hugetlb-unshare-munmap",
                                    "munmap-ceiling", "munmap-gup", "munmap-nested",
                                    "munmap-queue-full", "pfnmap-revoke", "reclaim-munmap"]
