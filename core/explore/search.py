"""The search: exhaustive, bounded DFS with state hashing and sleep sets, and
random walks with seeds.  Both are deterministic.

Exhaustive: a depth-first search over the states of an :class:`Engine`,
each step one actor's transition, to at most ``depth`` steps.  A state seen
before is not explored again unless it is now reached with more steps left
(a bounded search must not cut a state off because it was first reached
late) or with transitions enabled that its sleep set put to sleep the first
time.  Sleep sets: after a transition t has been explored from a state,
its siblings' subtrees need not take t first as long as nothing dependent
on t ran (footprints decide dependence: what each transition read and
wrote when it ran).

Random: ``runs`` walks from the initial state, walk i choosing uniformly
among the enabled actors with a generator seeded by (seed, i).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from mmugather.core.explore.engine import Engine
from mmugather.core.explore.state import Fp, State, Violation


@attrs.define
class Counts:
    #: distinct states
    states: int = 0
    #: steps taken
    transitions: int = 0
    #: complete executions: walks that ended with nobody able to move
    interleavings: int = 0
    #: walks cut off by the depth bound
    cutoffs: int = 0
    #: the most steps any walk took
    depth: int = 0

    def add(self, other: Counts) -> None:
        self.states += other.states
        self.transitions += other.transitions
        self.interleavings += other.interleavings
        self.cutoffs += other.cutoffs
        self.depth = max(self.depth, other.depth)

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen
class Step:
    """One step of a counterexample."""

    number: int
    actor: str
    cpu: int | None
    events: tuple[dict[str, Any], ...]


@attrs.frozen
class Counterexample:
    """A failing execution: the actors' choices, step by step, and what broke."""

    choices: tuple[str, ...]
    steps: tuple[Step, ...]
    prop: str
    message: str
    #: random mode: the index of the run that failed
    run: int | None = None


@attrs.define
class Result:
    counts: Counts
    counterexample: Counterexample | None
    seconds: float = 0.0


Progress = Callable[[Counts, int], None]
#: one step of a path: the actor that moved and the events it emitted
PathStep = tuple[int, Sequence[dict[str, Any]]]


def _counterexample(eng: Engine, path: Sequence[PathStep],
                    violation: Violation, run: int | None = None) -> Counterexample:
    steps = []
    choices = []
    for n, (index, events) in enumerate(path, 1):
        actor = eng.actors[index]
        choices.append(actor.name)
        steps.append(Step(n, actor.name, actor.cpu, tuple(events)))
    return Counterexample(tuple(choices), tuple(steps), violation.prop, violation.message, run)


class _Frame:
    __slots__ = ("cands", "depth", "done", "events", "index", "pos", "sleep", "state")

    def __init__(self, state: State, depth: int, sleep: dict[int, Fp], cands: list[int],
                 index: int, events: Sequence[dict[str, Any]]) -> None:
        self.state = state
        self.depth = depth
        self.sleep = sleep
        self.cands = cands
        self.pos = 0
        self.done: dict[int, Fp] = {}
        #: the actor whose step led here, and its events
        self.index = index
        self.events = events


def exhaustive(eng: Engine, depth: int, *, start: State | None = None,
               prefix: Sequence[PathStep] = (),
               progress: Progress | None = None, sleep_sets: bool = True) -> Result:
    """Every state within ``depth`` steps of ``start`` (the initial state,
    reached by ``prefix``), until a property fails."""
    t0 = time.perf_counter()
    counts = Counts()
    visited: dict[State, tuple[int, frozenset[int]]] = {}
    stack: list[_Frame] = []
    base = len(prefix)
    found: list[Counterexample] = []
    #: the first finding of a sequential checker (kept while the search
    #: looks on for a concrete failure)
    checked: list[Counterexample] = []

    def path_to(index: int, events: Sequence[dict[str, Any]]) -> list[PathStep]:
        out = list(prefix)
        out.extend((fr.index, fr.events) for fr in stack[1:])
        if index >= 0:
            out.append((index, events))
        return out

    def enter(st: State, d: int, sleep: dict[int, Fp], index: int,
              events: Sequence[dict[str, Any]]) -> None:
        if d > counts.depth:
            counts.depth = d
        if st.violation is not None:
            found.append(_counterexample(eng, path_to(index, events), st.violation))
            return
        remaining = depth - d
        key = st
        prev = visited.get(key)
        asleep = frozenset(sleep)
        explore: frozenset[int] | None = None  # None: everything awake
        if prev is None:
            counts.states += 1
            visited[key] = (remaining, asleep)
        elif remaining > prev[0]:
            visited[key] = (remaining, asleep)
        else:
            explore = prev[1] - asleep
            visited[key] = (prev[0], prev[1] & asleep)
            if not explore:
                if not eng.enabled(st):
                    counts.interleavings += 1
                return
        enabled = eng.enabled(st)
        if not enabled:
            counts.interleavings += 1
            if prev is None:
                v = eng.terminal_violation(st)
                if v is not None:
                    found.append(_counterexample(eng, path_to(index, events), v))
            return
        if remaining <= 0:
            counts.cutoffs += 1
            return
        cands = [a for a in enabled if a not in sleep and (explore is None or a in explore)]
        if cands:
            stack.append(_Frame(st, d, sleep, cands, index, events))

    start_state = start if start is not None else eng.initial
    enter(start_state, base, {}, -1, [])
    tick = 0
    step = eng.step
    while stack and not found:
        fr = stack[-1]
        if fr.pos >= len(fr.cands):
            stack.pop()
            continue
        a = fr.cands[fr.pos]
        fr.pos += 1
        s2, events, fp = step(fr.state, a)
        counts.transitions += 1
        if s2.checker is not None and not checked:
            checked.append(_counterexample(eng, path_to(a, events), s2.checker))
        child: dict[int, Fp] = {}
        if sleep_sets:
            # Asleep in the child: what was asleep here, and the siblings
            # already explored, unless this step depends on them.
            conflicts = fp.conflicts
            for b, f in fr.sleep.items():
                if not conflicts(f):
                    child[b] = f
            for b, f in fr.done.items():
                if not conflicts(f):
                    child[b] = f
            fr.done[a] = fp
        enter(s2, fr.depth + 1, child, a, events)
        tick += 1
        if progress is not None and tick >= 2048:
            tick = 0
            progress(counts, len(stack))
    best = found[0] if found else checked[0] if checked else None
    return Result(counts, best, time.perf_counter() - t0)


def random_walks(eng: Engine, depth: int, seed: int, runs: range, *,
                 progress: Progress | None = None) -> Result:
    """Walks ``runs`` (run indices), stopping at the first that fails."""
    t0 = time.perf_counter()
    counts = Counts()
    seen: set[Any] = set()
    found: Counterexample | None = None
    for i in runs:
        rng = random.Random(f"mmugather-explore:{seed}:{i}")
        st = eng.initial
        path: list[PathStep] = []
        if st not in seen:
            seen.add(st)
        violation: Violation | None = None
        checked: tuple[list[PathStep], Violation] | None = None
        for d in range(depth + 1):
            if st.violation is not None:
                violation = st.violation
                break
            enabled = eng.enabled(st)
            if not enabled:
                counts.interleavings += 1
                violation = eng.terminal_violation(st)
                break
            if d == depth:
                counts.cutoffs += 1
                break
            a = enabled[rng.randrange(len(enabled))]
            st, events, _fp = eng.step(st, a)
            counts.transitions += 1
            path.append((a, events))
            if st.checker is not None and checked is None:
                checked = (list(path), st.checker)
            if st not in seen:
                seen.add(st)
            if len(path) > counts.depth:
                counts.depth = len(path)
        if progress is not None and i % 64 == 0:
            counts.states = len(seen)
            progress(counts, i)
        if violation is not None:
            found = _counterexample(eng, path, violation, run=i)
            break
        if checked is not None:
            found = _counterexample(eng, checked[0], checked[1], run=i)
            break
    counts.states = len(seen)
    return Result(counts, found, time.perf_counter() - t0)


def replay_choices(eng: Engine, choices: Sequence[str]) -> tuple[list[PathStep], State]:
    """Run the named actors' steps in order from the initial state; a choice
    that is not enabled where it comes is an error (ValueError)."""
    st = eng.initial
    path: list[PathStep] = []
    for n, name in enumerate(choices, 1):
        actor = eng.by_name.get(name)
        if actor is None:
            raise ValueError(f"step {n}: no actor {name!r} in this scenario")
        if st.violation is not None:
            raise ValueError(f"step {n}: the execution already failed at step {n - 1}")
        if not actor.enabled(eng, st):
            raise ValueError(f"step {n}: {name} cannot move there")
        st, events, _fp = eng.step(st, actor.index)
        path.append((actor.index, events))
    return path, st
