"""Campaigns beyond one process: the search split into tasks that local
processes (``--workers N``) or a Dask cluster (``--dask ADDRESS``) run.

The split does not depend on how many workers there are, so neither do the
results.  Exhaustive: the states reachable in the first few steps are
enumerated breadth-first until there are at least :data:`FRONTIER_TASKS` of
them (or :data:`FRONTIER_DEPTH` steps); each becomes a task, searched with
a visited set of its own; the reported counterexample is the first failure
in task order (a concrete failure before a checker's finding).  Random: the
runs are cut into blocks of :data:`RUN_BLOCK`; the reported counterexample
is the lowest-numbered failing run, and the counts are those of the blocks
up to and including its block.  Each worker keeps one engine per
configuration (and per thread: greenlets stay in the thread that made them).
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mmugather.core.explore.engine import Engine
from mmugather.core.explore.real import Config
from mmugather.core.explore.search import (
    Counterexample,
    Counts,
    Result,
    _counterexample,
    exhaustive,
    random_walks,
)

FRONTIER_TASKS = 32
FRONTIER_DEPTH = 12
RUN_BLOCK = 64

_local = threading.local()


#: engines a thread keeps (each holds its memo and real worlds)
ENGINES_KEPT = 4


def engine_for(blob: bytes) -> Engine:
    """This thread's engine for a pickled Config (the last few are kept)."""
    cache: dict[bytes, Engine] | None = getattr(_local, "engines", None)
    if cache is None:
        cache = _local.engines = {}
    eng = cache.pop(blob, None)
    if eng is None:
        eng = Engine(pickle.loads(blob))
    cache[blob] = eng
    while len(cache) > ENGINES_KEPT:
        cache.pop(next(iter(cache))).close()
    return eng


def _concrete(ce: Counterexample | None) -> bool:
    return ce is not None and not ce.prop.startswith("checker:")


def frontier(eng: Engine, depth: int) -> tuple[list[tuple[int, ...]], Counts,
                                               list[Counterexample]]:
    """The task prefixes, the counts of the states above them, and the
    failures met on the way (in the order met)."""
    counts = Counts()
    found: list[Counterexample] = []
    init = eng.initial
    level: list[tuple[tuple[int, ...], Any, list[Any]]] = [((), init, [])]
    seen = {init.key}
    d = 0
    while d < min(FRONTIER_DEPTH, depth) and len(level) < FRONTIER_TASKS:
        nxt = []
        for prefix, st, path in level:
            counts.states += 1
            enabled = eng.enabled(st)
            if not enabled:
                counts.interleavings += 1
                v = eng.terminal_violation(st)
                if v is not None:
                    found.append(_counterexample(eng, path, v))
                continue
            for a in enabled:
                s2, events, _fp = eng.step(st, a)
                counts.transitions += 1
                p2 = [*path, (a, events)]
                if s2.checker is not None:
                    found.append(_counterexample(eng, p2, s2.checker))
                if s2.violation is not None:
                    found.append(_counterexample(eng, p2, s2.violation))
                    continue
                if s2.key in seen:
                    continue
                seen.add(s2.key)
                nxt.append(((*prefix, a), s2, p2))
        counts.depth = d + 1 if nxt else d
        if not nxt:
            return [], counts, found
        level = nxt
        d += 1
    return [prefix for prefix, _st, _path in level], counts, found


def run_task(blob: bytes, prefix: tuple[int, ...], depth: int) -> tuple[dict[str, int],
                                                                       Counterexample | None]:
    """One exhaustive task: the subtree under ``prefix``."""
    eng = engine_for(blob)
    st = eng.initial
    path = []
    for a in prefix:
        st, events, _fp = eng.step(st, a)
        path.append((a, events))
    r = exhaustive(eng, depth, start=st, prefix=path)
    return r.counts.as_dict(), r.counterexample


def run_block(blob: bytes, depth: int, seed: int, start: int, stop: int) -> tuple[
        dict[str, int], Counterexample | None]:
    """One block of random runs."""
    eng = engine_for(blob)
    r = random_walks(eng, depth, seed, range(start, stop))
    return r.counts.as_dict(), r.counterexample


#: runs the calls (function, args) and returns their results in order
Mapper = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]


def local_mapper(workers: int) -> Mapper:
    """Processes of this machine (spawned: safe wherever Python runs)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def mapper(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(fn, *args) for args in calls]
            return [f.result() for f in futures]

    return mapper


def dask_mapper(address: str) -> Mapper:
    """The workers of a Dask distributed cluster."""
    from distributed import Client

    def mapper(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        with Client(address) as client:  # type: ignore[no-untyped-call]
            futures = [client.submit(fn, *args, pure=False) for args in calls]
            return list(client.gather(futures))

    return mapper


def serial_mapper(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in calls]


def split_exhaustive(cfg: Config, depth: int, mapper: Mapper) -> Result:
    import time

    t0 = time.perf_counter()
    blob = pickle.dumps(cfg)
    eng = engine_for(blob)
    prefixes, counts, found = frontier(eng, depth)
    if any(_concrete(c) for c in found):
        prefixes = []  # the answer is known: the first failure of the frontier
    results = mapper(run_task, [(blob, p, depth) for p in prefixes])
    cands: list[Counterexample] = list(found)
    for task_counts, ce in results:
        counts.add(Counts(**task_counts))
        if ce is not None:
            cands.append(ce)
    best = next((c for c in cands if _concrete(c)), cands[0] if cands else None)
    return Result(counts, best, time.perf_counter() - t0)


def split_random(cfg: Config, depth: int, seed: int, runs: int, mapper: Mapper) -> Result:
    import time

    t0 = time.perf_counter()
    blob = pickle.dumps(cfg)
    blocks = [(blob, depth, seed, start, min(start + RUN_BLOCK, runs))
              for start in range(0, runs, RUN_BLOCK)]
    results = mapper(run_block, blocks)
    counts = Counts()
    best = None
    for block_counts, ce in results:
        counts.add(Counts(**block_counts))
        if ce is not None:
            best = ce
            break
    return Result(counts, best, time.perf_counter() - t0)
