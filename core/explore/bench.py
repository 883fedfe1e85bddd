"""How fast the explorer searches: states per second of the exhaustive
search of each built-in concurrent scenario at its default bound.

    python -m mmugather.core.explore.bench [--arch NAME] [--repeat N]

Each scenario is searched ``repeat`` times, each time by a new engine (so
with an empty memo: every real step the search needs is run, every real
world it needs is built); the best CPU time of the search itself counts
(the engine's construction, a plugin manager and the first world, does
not).  CPU time, not wall time: the figure should not depend on what else
the machine runs.  The total is all the scenarios' states over all their
seconds.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence

import attrs
from mmugather.core.explore import spec
from mmugather.core.explore.engine import Engine
from mmugather.core.explore.real import Config
from mmugather.core.explore.search import exhaustive


@attrs.frozen
class Row:
    scenario: str
    states: int
    transitions: int
    interleavings: int
    real_steps: int
    worlds: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.states / self.seconds if self.seconds else 0.0


def bench_explore(arch: str = "generic-smp", repeat: int = 5,
                  names: Sequence[str] | None = None) -> list[Row]:
    rows = []
    for name in names or spec.builtin_names():
        sc = spec.load_builtin(name)
        best = None
        for _ in range(repeat):
            eng = Engine(Config(sc, arch))
            gc.collect()
            t0 = time.process_time()
            result = exhaustive(eng, sc.depth)
            seconds = time.process_time() - t0
            c = result.counts
            row = Row(name, c.states, c.transitions, c.interleavings, eng.real_steps,
                      eng.worlds_built, seconds)
            eng.close()
            if best is None or seconds < best.seconds:
                best = row
        assert best is not None
        rows.append(best)
    return rows


def table(rows: Sequence[Row]) -> str:
    out = [f"{'scenario':<22}{'states':>8}{'transitions':>13}{'real steps':>12}{'worlds':>8}"
           f"{'CPU ms':>9}{'states/s':>10}"]
    for r in rows:
        out.append(f"{r.scenario:<22}{r.states:>8,}{r.transitions:>13,}{r.real_steps:>12,}"
                   f"{r.worlds:>8,}{r.seconds * 1e3:>9.1f}{r.rate:>10,.0f}")
    states = sum(r.states for r in rows)
    seconds = sum(r.seconds for r in rows)
    out.append(f"{'all':<22}{states:>8,}{sum(r.transitions for r in rows):>13,}"
               f"{sum(r.real_steps for r in rows):>12,}{sum(r.worlds for r in rows):>8,}"
               f"{seconds * 1e3:>9.1f}{states / seconds:>10,.0f}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmugather.core.explore.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="generic-smp")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    print(table(bench_explore(args.arch, args.repeat)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
