"""The explorer: the real callers interleaved with other CPUs' actors, every
interleaving within a bound searched (``docs/explorer.md``).

Start here::

    from mmugather.core.explore import Config, explore, spec

    sc = spec.load_builtin("dirty-writeback")
    result = explore(Config(sc, "generic-smp", mutant=NAME))  # mmugather mutants
    if result.counterexample is not None:
        print(result.counterexample.prop)  # e.g. lost-write
"""

from __future__ import annotations

from mmugather.core.explore.engine import Engine, ExploreError
from mmugather.core.explore.real import Config
from mmugather.core.explore.search import Counterexample, Counts, Progress, Result, Step


def explore(cfg: Config, *, depth: int | None = None, runs: int | None = None, seed: int = 0,
            workers: int | None = None, dask: str | None = None,
            progress: Progress | None = None, engine: Engine | None = None) -> Result:
    """Search ``cfg``: exhaustively to ``depth`` steps (the scenario's bound
    by default), or ``runs`` random walks seeded by ``seed``; in this
    process, over ``workers`` local processes, or on the Dask cluster at
    ``dask``."""
    from mmugather.core.explore import parallel, search

    bound = cfg.scenario.depth if depth is None else depth
    mapper = None
    if dask is not None:
        mapper = parallel.dask_mapper(dask)
    elif workers is not None:
        mapper = parallel.local_mapper(workers)
    if runs is not None:
        return parallel.split_random(cfg, bound, seed, runs, mapper or parallel.serial_mapper)
    if mapper is not None:
        return parallel.split_exhaustive(cfg, bound, mapper)
    eng = engine if engine is not None else Engine(cfg)
    return search.exhaustive(eng, bound, progress=progress)


__all__ = ["Config", "Counterexample", "Counts", "Engine", "ExploreError", "Result", "Step",
           "explore"]
