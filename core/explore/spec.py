"""Concurrent scenarios: a ``mmugather run`` scenario plus the actors that
race its zapping thread, in TOML (``docs/explorer.md``).

The file is a normal scenario (``[[vma]]``, ``[[op]]``: the operations of
the zapping thread, CPU 0) with two more kinds of table::

    [explore]
    cpus = 3          # CPUs of the machine (default: enough for the actors)
    depth = 120       # the default bound on steps

    [[actor]]
    kind = "user"     # zap | user | writeback | gup_fast | reclaim | allocator
    cpu = 1
    accesses = [{op = "store", addr = 0x10000000}]

Those two are read here; the rest goes to :func:`mmugather.core.scenario.parse`
unchanged, so the scenario format has one definition.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from typing import Any

import attrs
from mmugather.core.scenario import OPS, USER_TOP, Scenario, ScenarioError, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_PACKAGE = "mmugather.core.explore.scenarios"

KINDS = ("zap", "user", "writeback", "gup_fast", "reclaim", "allocator", "driver", "sharer")
#: actors that are threads of the process (they run on a CPU of the mm)
THREAD_KINDS = ("zap", "user", "gup_fast")
ACTOR_KEYS: dict[str, set[str]] = {
    "zap": {"kind", "cpu", "op"},
    "user": {"kind", "cpu", "accesses", "warm"},
    "writeback": {"kind", "cpu", "addr"},
    "gup_fast": {"kind", "cpu", "addr", "write"},
    "reclaim": {"kind", "cpu", "addr", "batched_flush"},
    "allocator": {"kind", "cpu", "reuse", "count"},
    "driver": {"kind", "cpu", "addr"},
    "sharer": {"kind", "cpu", "addr"},
}
EXPLORE_KEYS = {"cpus", "depth", "needs", "fail_alloc"}
#: what [explore] fail_alloc may make fail (Machine.fail_alloc())
ALLOC_KINDS = ("page_batch", "table_batch")
ACCESS_OPS = ("load", "store")
REUSE = ("page", "table", "any")
DEFAULT_DEPTH = 120
MAX_CPUS = 16


@attrs.frozen
class ActorSpec:
    """One actor of a concurrent scenario (``docs/explorer.md``)."""

    kind: str
    #: its name in timelines and traces: kind and number (``user1``)
    name: str
    #: the CPU it runs on (None: a kernel thread whose CPU does not matter)
    cpu: int | None
    #: zap: the system calls, as ``[[op]]`` tables
    ops: tuple[dict[str, Any], ...] = ()
    #: user: (op, address) in order
    accesses: tuple[tuple[str, int], ...] = ()
    #: user: its TLB holds what it accesses when the run starts
    warm: bool = True
    #: writeback, gup_fast, reclaim, driver: the user address of the page
    #: (driver: of a PFN in a PFN map; sharer: in its shared PMD table's range)
    addr: int = 0
    #: gup_fast: FOLL_WRITE
    write: bool = False
    #: reclaim: TTU_BATCH_FLUSH defers the flush (None: where the arch selects
    #: ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH, as v6.5 does)
    batched_flush: bool | None = None
    #: allocator: what it hands out again, and how many times
    reuse: str = "any"
    count: int = 1


@attrs.frozen
class ExploreScenario:
    """A scenario with its racing actors.  ``actors[0]`` is the zapping
    thread of ``[[op]]``."""

    base: Scenario
    actors: tuple[ActorSpec, ...]
    cpus: int
    depth: int
    #: what the scenario needs that the model does not have yet ("" if nothing)
    needs: str = ""
    #: the CPUs running threads of the process; None: those of the thread
    #: actors (a ``mmugather run`` scenario keeps run's default, CPUs 0 and 1)
    threads: tuple[int, ...] | None = None
    #: GFP_NOWAIT allocations that fail first, per kind (``Machine.fail_alloc()``)
    fail_alloc: tuple[tuple[str, int], ...] = ()
    #: the decoded TOML document (a trace carries it, to be replayed anywhere)
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def path(self) -> str:
        return self.base.path


def _int(path: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, key, f"must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ScenarioError(path, key, f"{value} is outside {lo}..{hi}")
    return value


def _bool(path: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, key, f"must be true or false, not {type(value).__name__}")
    return value


def _choice(path: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ScenarioError(path, key, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _addr(path: str, key: str, value: Any, page_size: int) -> int:
    addr = _int(path, key, value, 0, USER_TOP)
    if addr % page_size:
        raise ScenarioError(path, key, f"{addr:#x} is not page-aligned")
    return addr


def _table(path: str, key: str, raw: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScenarioError(path, key, "must be a table")
    for k in raw:
        if k not in allowed:
            raise ScenarioError(path, f"{key}.{k}" if key else k,
                                f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def parse_explore(data: dict[str, Any], path: str, page_size: int = 4096) -> ExploreScenario:
    """Validate a decoded concurrent-scenario document."""
    if not isinstance(data, dict):
        raise ScenarioError(path, "", "must be a table")
    raw_actors = data.get("actor", [])
    raw_explore = data.get("explore", {})
    base_doc = {k: v for k, v in data.items() if k not in ("actor", "explore")}
    base = parse(base_doc, path, page_size)
    explore = _table(path, "explore", raw_explore, EXPLORE_KEYS)
    if not isinstance(raw_actors, list):
        raise ScenarioError(path, "actor", "must be an array of tables ([[actor]])")
    zap0 = ActorSpec("zap", "zap0", 0, ops=base.ops)
    actors: list[ActorSpec] = [zap0]
    counts: dict[str, int] = {"zap": 1}
    used_cpus = {0}
    pending_cpu: list[int] = []
    for n, raw in enumerate(raw_actors):
        key = f"actor[{n}]"
        if not isinstance(raw, dict):
            raise ScenarioError(path, key, "must be a table")
        if "kind" not in raw:
            raise ScenarioError(path, f"{key}.kind", "missing")
        kind = _choice(path, f"{key}.kind", raw["kind"], KINDS)
        _table(path, key, raw, ACTOR_KEYS[kind])
        number = counts.get(kind, 0)
        counts[kind] = number + 1
        name = f"{kind}{number}"
        cpu: int | None = None
        if "cpu" in raw:
            cpu = _int(path, f"{key}.cpu", raw["cpu"], 0, MAX_CPUS - 1)
            if kind in THREAD_KINDS:
                if cpu in used_cpus:
                    raise ScenarioError(path, f"{key}.cpu",
                                        f"CPU {cpu} already runs another thread of the process")
                used_cpus.add(cpu)
        elif kind in THREAD_KINDS:
            pending_cpu.append(len(actors))
        fields: dict[str, Any] = {}
        if kind == "zap":
            if "op" not in raw:
                raise ScenarioError(path, f"{key}.op", "missing")
            fields["ops"] = _zap_ops(path, key, raw["op"], data, page_size)
        elif kind == "user":
            fields["accesses"] = _accesses(path, key, raw.get("accesses"), page_size)
            fields["warm"] = _bool(path, f"{key}.warm", raw.get("warm", True))
        elif kind in ("writeback", "gup_fast", "reclaim", "driver", "sharer"):
            if "addr" not in raw:
                raise ScenarioError(path, f"{key}.addr", "missing")
            fields["addr"] = _addr(path, f"{key}.addr", raw["addr"], page_size)
            if kind == "gup_fast":
                fields["write"] = _bool(path, f"{key}.write", raw.get("write", False))
            if kind == "reclaim" and "batched_flush" in raw:
                fields["batched_flush"] = _bool(path, f"{key}.batched_flush",
                                                raw["batched_flush"])
        else:
            fields["reuse"] = _choice(path, f"{key}.reuse", raw.get("reuse", "any"), REUSE)
            fields["count"] = _int(path, f"{key}.count", raw.get("count", 1), 1, 64)
        actors.append(ActorSpec(kind, name, cpu, **fields))
    # Threads without a CPU get the lowest free ones, in order.
    free = (c for c in range(MAX_CPUS) if c not in used_cpus)
    for index in pending_cpu:
        actors[index] = attrs.evolve(actors[index], cpu=next(free))
    needed = 1 + max(a.cpu for a in actors if a.cpu is not None)
    cpus = _int(path, "explore.cpus", explore.get("cpus", needed), 1, MAX_CPUS)
    if cpus < needed:
        raise ScenarioError(path, "explore.cpus",
                            f"{cpus} CPUs, but an actor runs on CPU {needed - 1}")
    depth = _int(path, "explore.depth", explore.get("depth", DEFAULT_DEPTH), 1, 100_000)
    needs = explore.get("needs", "")
    if not isinstance(needs, str):
        raise ScenarioError(path, "explore.needs", "must be a string")
    fails = _table(path, "explore.fail_alloc", explore.get("fail_alloc", {}), set(ALLOC_KINDS))
    fail_alloc = tuple((what, _int(path, f"explore.fail_alloc.{what}", count, 0, 64))
                       for what, count in sorted(fails.items()))
    return ExploreScenario(base=base, actors=tuple(actors), cpus=cpus, depth=depth,
                           needs=needs, fail_alloc=fail_alloc, raw=data)


def _zap_ops(path: str, key: str, raw: Any, data: dict[str, Any],
             page_size: int) -> tuple[dict[str, Any], ...]:
    """A second zapping thread's operations, checked as ``[[op]]`` tables are."""
    try:
        sub = parse({"vma": data.get("vma", []), "op": raw}, path, page_size)
    except ScenarioError as exc:
        if exc.key.startswith("op"):
            raise ScenarioError(path, f"{key}.{exc.key}", exc.reason) from None
        raise
    return sub.ops


def _accesses(path: str, key: str, raw: Any, page_size: int) -> tuple[tuple[str, int], ...]:
    if raw is None:
        raise ScenarioError(path, f"{key}.accesses", "missing")
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(path, f"{key}.accesses", "must be a non-empty array of tables")
    out = []
    for k, item in enumerate(raw):
        akey = f"{key}.accesses[{k}]"
        _table(path, akey, item, {"op", "addr"})
        for field in ("op", "addr"):
            if field not in item:
                raise ScenarioError(path, f"{akey}.{field}", "missing")
        out.append((_choice(path, f"{akey}.op", item["op"], ACCESS_OPS),
                    _addr(path, f"{akey}.addr", item["addr"], page_size)))
    return tuple(out)


def load(path: str, page_size: int = 4096) -> ExploreScenario:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "", f"not TOML: {exc}") from None
    return parse_explore(data, path, page_size)


def builtin_names() -> list[str]:
    files = resources.files(BUILTIN_PACKAGE)
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def load_builtin(name: str, page_size: int = 4096) -> ExploreScenario:
    item = resources.files(BUILTIN_PACKAGE) / f"{name}.toml"
    if not item.is_file():
        raise ScenarioError(name, "", "no such built-in concurrent scenario (built-in: "
                            f"{', '.join(builtin_names())})")
    return parse_explore(tomllib.loads(item.read_text()), f"<builtin {name}>", page_size)


def resolve(name_or_path: str, page_size: int = 4096) -> ExploreScenario:
    """A built-in concurrent scenario by name, else a TOML file."""
    if name_or_path in builtin_names():
        return load_builtin(name_or_path, page_size)
    return load(name_or_path, page_size)


def from_run_scenario(scenario: Scenario, raw: dict[str, Any] | None = None) -> ExploreScenario:
    """A ``mmugather run`` scenario with no actor but its zapping thread."""
    return ExploreScenario(base=scenario, actors=(ActorSpec("zap", "zap0", 0, ops=scenario.ops),),
                           cpus=2, depth=DEFAULT_DEPTH, raw=raw or {}, threads=(0, 1))


def raw_json(scenario: ExploreScenario) -> str:
    """The scenario document as JSON (what a trace stores)."""
    return json.dumps(scenario.raw, separators=(",", ":"))


__all__ = ["KINDS", "OPS", "ActorSpec", "ExploreScenario", "builtin_names", "from_run_scenario",
           "load", "load_builtin", "parse_explore", "raw_json", "resolve"]
