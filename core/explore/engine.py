"""The explored machine: its actors, its initial state, and one step of one
actor from any state.

The zapping threads and RCU grace periods run the project's own code (the
callers, the machine's RCU callbacks) in a :class:`~.real.RealWorld`; their
steps are memoised by (history, shared memory), so the real code runs once
per distinct step and a state reached again by another path costs a
dictionary lookup.  A real world is kept per set of histories (a few, most
recently used); one that is missing is rebuilt by running each thread's
history again over the memories it first ran over.  ``memo=False`` is the
plain reference path: every step of a zapping thread runs the callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmugather.core.explore.actors import Actor, GupFast, Result, UserThread
from mmugather.core.explore.hwx import Walk, walk
from mmugather.core.explore.kactors import Allocator, Reclaim, Writeback
from mmugather.core.explore.pactors import Driver, Sharer
from mmugather.core.explore.real import Config, RealWorld, Setup
from mmugather.core.explore.state import Fp, State, Violation
from mmugather.core.explore.zapstep import (
    CHECKER_RULES,
    CellEntry,
    Outcome,
    ZNode,
    apply_effects,
    cell_items,
    effect_items,
    effects_of,
    mem_items,
    rule_for,
    struct_key,
    want_items,
)
from mmugather.core.scenario import ScenarioError

#: how many real worlds a process keeps
MAX_WORLDS = 8


class ExploreError(Exception):
    """The model broke an assumption of the explorer (the message says which)."""


class ZapActor(Actor):
    """A zapping thread: the callers of ``mmugather run`` in a greenlet."""

    kind = "zap"
    real = True

    def __init__(self, index: int, spec: Any, zap: int) -> None:
        super().__init__(index, spec, spec.name, spec.cpu)
        self.zap = zap

    def enabled(self, eng: Engine, st: State) -> bool:
        node = st.nodes[self.zap]
        if node.done:
            return False
        want = node.want
        if want is None:
            return True
        kind, arg = want
        if kind == "lock":
            return st.lock_owner(arg) is None
        if kind == "ipi":
            return not st.irq & arg
        if arg == "write":
            return not st.mmap
        return all(mode == "read" for _who, mode in st.mmap)

    def step(self, eng: Engine, st: State) -> Result:
        return eng.zap_step(st, self)

    def idle(self, st: State) -> bool:
        return bool(st.nodes[self.zap].done)


class RcuActor(Actor):
    """RCU: a grace period ends when no CPU has interrupts off (RCU-sched),
    running the callbacks queued before it."""

    kind = "rcu"
    real = True

    def enabled(self, eng: Engine, st: State) -> bool:
        return bool(st.rcu) and not st.irq

    def step(self, eng: Engine, st: State) -> Result:
        return eng.rcu_step(st, self)


ACTOR_CLASSES: dict[str, Callable[[int, Any], Actor]] = {"user": UserThread, "gup_fast": GupFast,
                                         "writeback": Writeback, "reclaim": Reclaim,
                                         "allocator": Allocator, "driver": Driver,
                                         "sharer": Sharer}


class Engine:
    """One configuration's actors and steps.  ``memo``: reuse real steps."""

    def __init__(self, cfg: Config, *, memo: bool = True) -> None:
        self.cfg = cfg
        self.setup = Setup(cfg)
        self.geo = self.setup.geometry
        self.nr_cpus = self.setup.nr_cpus
        self.memo_on = memo
        self.memo: dict[Any, Outcome] = {}
        #: steps as rules over the cells they read: (node, structures) -> entries
        self.rules: dict[Any, list[CellEntry]] = {}
        self.rule_hits = 0
        self._walks: dict[Any, Walk] = {}
        #: what became of a page or table another actor than the allocator
        #: takes back (its words for a violation), set by the actors' init
        self.reused_how: dict[int, str] = {}
        #: real worlds not in use, least recently used first
        self.worlds: list[RealWorld] = []
        self.actors: list[Actor] = []
        zaps = 0
        for spec in cfg.scenario.actors:
            index = len(self.actors)
            if spec.kind == "zap":
                self.actors.append(ZapActor(index, spec, zaps))
                zaps += 1
            else:
                self.actors.append(ACTOR_CLASSES[spec.kind](index, spec))
        self.actors.append(RcuActor(len(self.actors), None, "rcu", None))
        self.zap_actors = [a for a in self.actors if isinstance(a, ZapActor)]
        self._enabled = [(a.index, a.enabled) for a in self.actors]
        self.watchers = [a for a in self.actors if type(a).watch is not Actor.watch]
        self.by_name = {a.name: a for a in self.actors}
        #: statistics
        self.real_steps = 0
        self.memo_hits = 0
        self.worlds_built = 0
        world = self._new_world()
        self.roots = tuple(ZNode(k, None, (), (), run.want, False, None)
                           for k, run in enumerate(world.runners))
        world.nodes = self.roots
        self.worlds.append(world)
        self.init_events = world.init_events
        self.initial = self._initial(world)

    # --- states -----------------------------------------------------------

    def _initial(self, world: RealWorld) -> State:
        s = State.__new__(State)
        n = self.nr_cpus
        s.nodes = self.roots
        s.mem = world.mem
        s.tlb = tuple(frozenset() for _ in range(n))
        s.walk = tuple(frozenset() for _ in range(n))
        s.locks = frozenset()
        s.mmap = frozenset()
        s.irq = 0
        s.rcu = ()
        s.versions = frozenset()
        s.disk = frozenset()
        s.freed = frozenset()
        s.reused = frozenset()
        s.returned = frozenset()
        s.local = tuple(None for _ in self.actors)
        s.violation = None
        s.checker = None
        s._key = None
        s._hash = None
        for actor in self.actors:
            try:
                actor.init(self, s)
            except ValueError as exc:
                # Actor n of the file is actors[n + 1]: actors[0] is [[op]]'s.
                raise ScenarioError(self.cfg.scenario.path, f"actor[{actor.index - 1}].addr",
                                    str(exc)) from None
        s._key = None
        s._hash = None
        return s

    def walk(self, st: State, cpu: int, va: int) -> Walk:
        """CPU ``cpu``'s walk of ``va`` in ``st`` (through its walk cache)."""
        cached = st.walk[cpu]
        key = (st.mem, cached, va, st.freed, st.reused)
        w = self._walks.get(key)
        if w is None:
            w = self._walks[key] = walk(st.mem, self.geo, cached, va, st.freed | st.reused)
        return w

    def mapping(self, mem: Any, va: int) -> Walk:
        """What the page tables of ``mem`` map at ``va`` (no walk cache)."""
        key = (mem, va)
        w = self._walks.get(key)
        if w is None:
            w = self._walks[key] = walk(mem, self.geo, frozenset(), va, frozenset())
        return w

    def enabled(self, st: State) -> list[int]:
        return [i for i, enabled in self._enabled if enabled(self, st)]

    def step(self, st: State, index: int) -> Result:
        """Actor ``index`` takes one step from ``st``."""
        s, events, fp = self.actors[index].step(self, st)
        if s.violation is None:
            for watcher in self.watchers:
                v = watcher.watch(self, s)
                if v is not None:
                    s.violation = v
                    break
        return s, events, fp

    def terminal_violation(self, st: State) -> Violation | None:
        """At a state where nobody can move: a thread that never finished."""
        stuck = [a for a in self.actors if not a.idle(st)]
        if not stuck:
            return None
        names = ", ".join(a.name for a in stuck)
        return Violation("deadlock", f"nothing can move, but {names} did not finish")

    # --- real steps -----------------------------------------------------------

    def _new_world(self) -> RealWorld:
        self.worlds_built += 1
        world = RealWorld(self.setup)
        world.nodes = getattr(self, "roots", ())
        return world

    def _world_for(self, k: int, node: ZNode) -> RealWorld:
        """A real world whose thread ``k`` stands at ``node`` (the others may
        stand anywhere: threads meet only in the shared memory), taken out
        of the cache; rebuilt when there is none."""
        for i, world in enumerate(self.worlds):
            if world.nodes[k] is node:
                del self.worlds[i]
                return world
        world = self._new_world()
        self._advance(world, k, node)
        return world

    def _advance(self, world: RealWorld, k: int, node: ZNode) -> None:
        """Bring thread ``k`` of a new world to ``node``: run its history
        again, each step over the memory it first ran over."""
        for n in node.path():
            assert n.mem_in is not None and n.mem_out is not None
            r = world.step_zap(k, n.mem_in, take=False)
            if len(r.events) != len(n.events) or list(r.events) != list(n.events):
                raise ExploreError(
                    f"zap{k} did not repeat step {n.depth} of its history: the callers "
                    "depend on something the shared memory does not hold")
            # Deterministic: the step left what it left the first time.
            world.mem = n.mem_out
            world.stale = False
        nodes = list(world.nodes)
        nodes[k] = node
        world.nodes = tuple(nodes)

    def _world_with(self, callbacks: tuple[tuple[int, int], ...],
                    nodes: tuple[ZNode, ...]) -> RealWorld:
        """A real world holding the RCU callbacks ``callbacks`` (queued by
        the threads at ``nodes`` or before)."""
        for i, world in enumerate(self.worlds):
            if all(cid in world.callbacks for cid in callbacks):
                del self.worlds[i]
                return world
        world = self._new_world()
        for k, node in enumerate(nodes):
            self._advance(world, k, node)
        return world

    def _keep(self, world: RealWorld) -> None:
        self.worlds.append(world)
        while len(self.worlds) > MAX_WORLDS:
            self.worlds.pop(0).close()

    def zap_step(self, st: State, actor: ZapActor) -> Result:
        k = actor.zap
        node = st.nodes[k]
        mem = st.mem
        key = (node, mem)
        out = self.memo.get(key) if self.memo_on else None
        if out is None and self.memo_on:
            # The same step over a memory that differs only where it did not read.
            for entry in self.rules.get((node, struct_key(mem)), ()):
                if entry.matches(mem):
                    o = entry.out
                    out = Outcome(o.events, entry.derive(mem), o.node, o.effects, o.queued,
                                  o.checker, o.fp)
                    self.memo[key] = out
                    self.rule_hits += 1
                    break
        if out is None:
            out = self._real_zap(st, actor)
            if self.memo_on:
                self.memo[key] = out
        else:
            self.memo_hits += 1
        s = st.copy()
        nodes = list(st.nodes)
        nodes[k] = out.node
        s.nodes = tuple(nodes)
        s.mem = out.mem
        if out.queued:
            s.rcu = st.rcu + out.queued
        if out.effects:
            apply_effects(s, out.effects, actor.index, out.tlb_cache, self.geo)
        s.checker = out.checker
        return s, out.events, out.fp

    def _real_zap(self, st: State, actor: ZapActor) -> Outcome:
        k = actor.zap
        node = st.nodes[k]
        world = self._world_for(k, node)
        r = world.step_zap(k, st.mem)
        self.real_steps += 1
        effects, mode = effects_of(r.events, self.geo.page_size, node.mode, actor.cpu or 0,
                                   self.nr_cpus)
        child = node.child(r.events, r.want, r.done, st.mem, mode)
        if child.mem_out is None:
            child.mem_out = world.mem
        nodes = list(world.nodes)
        nodes[k] = child
        world.nodes = tuple(nodes)
        self._keep(world)
        violation = None
        for name, message in r.violations:
            if name in CHECKER_RULES:
                violation = Violation(f"checker:{name}", message)
                break
        changed = mem_items(st.mem, world.mem)
        reads = want_items(node.want, self.nr_cpus)
        all_d = 2
        if r.reads is not None and not r.reads[1]:
            # Cells: those it was seen to read and write (not those whose
            # value happened to change: the footprint must not depend on
            # the memory it ran over, only on what it did).
            reads |= cell_items(r.reads[0])
            writes = cell_items(r.reads[2]) | {
                item for item in changed
                if item[1] not in ("page", "pte", "mm") or item == ("D", "mm", "context")}
            all_d = 1
        else:
            writes = changed
        writes |= effect_items(effects, self.nr_cpus)
        if r.queued:
            writes.add(("rcu",))
        if any(eff[0] == "returned" for eff in effects):
            # Which entries are stale when it returns depends on every
            # CPU's TLB and on the page tables.
            reads |= {("tlb", c) for c in range(self.nr_cpus)}
            all_d = 2
        fp = Fp(frozenset(reads), frozenset(writes), all_d=all_d)
        out = Outcome(r.events, world.mem, child, effects, r.queued, violation, fp)
        if r.reads is not None and self.memo_on:
            rule = rule_for(st.mem, out, r.reads, changed)
            if rule is not None:
                self.rules.setdefault((node, struct_key(st.mem)), []).append(rule)
        return out

    def rcu_step(self, st: State, actor: Actor) -> Result:
        key = ("rcu", st.rcu, st.mem)
        out = self.memo.get(key) if self.memo_on else None
        if out is None:
            world = self._world_with(st.rcu, st.nodes)
            events, mem = world.step_rcu(st.rcu, st.mem)
            self._keep(world)
            self.real_steps += 1
            effects, _mode = effects_of(events, self.geo.page_size, "keeps", 0, self.nr_cpus)
            writes = mem_items(st.mem, mem) | effect_items(effects, self.nr_cpus) | {("rcu",)}
            reads = {("irq", c) for c in range(self.nr_cpus)} | {("rcu",)}
            out = Outcome(events, mem, None, effects, (), None,
                          Fp(frozenset(reads), frozenset(writes), all_d=2))
            if self.memo_on:
                self.memo[key] = out
        else:
            self.memo_hits += 1
        s = st.copy()
        s.mem = out.mem
        s.rcu = ()
        apply_effects(s, out.effects, actor.index, out.tlb_cache, self.geo)
        return s, out.events, out.fp

    def close(self) -> None:
        for world in self.worlds:
            world.close()
        self.worlds.clear()
