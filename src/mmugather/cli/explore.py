"""``mmugather explore``: a concurrent scenario's interleavings searched for
a failing property; a failure printed as a per-CPU timeline, saved as a
trace, and replayed (``docs/explorer.md``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from mmugather.cli.common import EXIT_FAIL, EXIT_OK, default_arch
from mmugather.cli.common import error as _error

DEFAULT_SCENARIO = "dirty-writeback"


def _writable(path: str) -> str | None:
    """Why ``path`` cannot be written, or None."""
    if os.path.isdir(path):
        return f"{path}: cannot write: Is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{path}: cannot write: No such file or directory"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{path}: cannot write: Permission denied"
    return None


class Progress:
    """States and rate on stderr, once the search has run a second (TTY only)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, counts: Any, depth: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.t0 < 1.0 or now - self.last < 0.25:
            return
        self.last = now
        rate = counts.states / (now - self.t0)
        self.stream.write(f"\rexploring: {counts.states:,} states, {counts.transitions:,} "
                          f"transitions, {counts.interleavings:,} interleavings, "
                          f"{rate:,.0f} states/s   ")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def _coverage(result: Any, bound: int, cpus: int, random: int | None, seed: int) -> str:
    c = result.counts
    mode = (f"{random:,} random runs (seed {seed}), " if random is not None else "")
    return (f"{mode}{c.states:,} states, {c.transitions:,} transitions, "
            f"{c.interleavings:,} interleavings, depth {c.depth} (bound {bound}), "
            f"{cpus} CPUs, {result.seconds:.2f} s")


def configuration(cfg: Any, eng: Any) -> str:
    """``arch A, strategy S, mutant M`` (or ``no mutant``), and the fixes."""
    mutant = f"mutant {cfg.mutant}" if cfg.mutant else "no mutant"
    fixes = "".join(f", fix {commit}" for commit in cfg.fixes)
    return f"arch {cfg.arch}, strategy {eng.setup.strategy}, {mutant}{fixes}"


def cmd_explore(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError
    from mmugather.core.explore import Config, Engine, ExploreError, explore, spec, trace
    from mmugather.core.scenario import ScenarioError

    if args.list:
        for name in spec.builtin_names():
            sc = spec.load_builtin(name)
            print(f"{name}\n    {' '.join(sc.base.description.split())}")
            if sc.needs:
                print(f"    needs: {' '.join(sc.needs.split())}")
        from mmugather.core import fixes

        print("\nfixes newer than v6.5 (--fix COMMIT):")
        for commit in fixes.names():
            fix = fixes.get(commit)
            print(f"{commit}  {fix.title}\n    {fix.description}")
        return EXIT_OK
    if args.replay is not None:
        return _replay(args)
    if args.corpus is not None:
        from mmugather.cli.corpus import run_corpus

        return run_corpus(args.corpus or None, show=bool(args.corpus))
    if args.events is not None:
        problem = _writable(args.events)
        if problem:
            return _error(problem)
    if args.dask is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            return _error("--dask needs dask.distributed: pip install 'mmugather[distributed]'")
    name = args.scenario or DEFAULT_SCENARIO
    try:
        sc = spec.resolve(name)
        cfg = Config(sc, args.arch, strategy=args.strategy, mutant=args.mutant, cpus=args.cpus,
                     fixes=tuple(args.fix or ()))
        eng = Engine(cfg)
    except (ArchError, ScenarioError, ValueError) as exc:
        return _error(str(exc))
    bound = args.depth if args.depth is not None else sc.depth
    progress = Progress()
    try:
        result = explore(cfg, depth=bound, runs=args.random, seed=args.seed,
                         workers=args.workers, dask=args.dask, progress=progress,
                         engine=eng)
    except ExploreError as exc:
        progress.close()
        return _error(f"{sc.path}: {exc}")
    finally:
        progress.close()
    print(f"scenario {sc.name}: {configuration(cfg, eng)}")
    if sc.needs:
        print(f"note: it needs {' '.join(sc.needs.split())}")
    coverage = _coverage(result, bound, eng.nr_cpus, args.random, args.seed)
    ce = result.counterexample
    if ce is None:
        print(f"no property failed within the bound: {coverage}")
        if args.events is not None:
            print(f"no counterexample: nothing saved to {args.events}")
        return EXIT_OK
    run = f" (run {ce.run})" if ce.run is not None else ""
    print(f"{ce.prop}{run}: a counterexample in {len(ce.steps)} steps\n")
    print(trace.timeline(eng, ce))
    print(f"\nsearched: {coverage}")
    if args.events is not None:
        with open(args.events, "w", encoding="utf-8") as out:
            trace.write_trace(out, cfg, eng, ce, sc.path if os.path.exists(sc.path) else name)
        print(f"trace saved to {args.events} (mmugather explore --replay {args.events})")
    return EXIT_FAIL


def _replay(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError
    from mmugather.core.explore import Engine, ExploreError, trace

    if args.scenario is not None:
        return _error("--replay takes the scenario from the trace: give no SCENARIO")
    if args.events is not None:
        problem = _writable(args.events)
        if problem:
            return _error(problem)
    try:
        tr = trace.read_trace(args.replay)
        eng = Engine(tr.config)
        ce = trace.replay(eng, tr.choices)
    except trace.TraceError as exc:
        return _error(str(exc))
    except (ArchError, ValueError, ExploreError) as exc:
        return _error(f"{args.replay}: {exc}")
    cfg = tr.config
    print(f"scenario {cfg.scenario.name}: {configuration(cfg, eng)}")
    if ce is None:
        print(f"replayed {len(tr.choices)} steps: no property fails at their end "
              f"(the trace says {tr.prop})")
        return EXIT_OK
    print(f"{ce.prop}: a counterexample in {len(ce.steps)} steps\n")
    print(trace.timeline(eng, ce))
    if args.events is not None:
        with open(args.events, "w", encoding="utf-8") as out:
            trace.write_trace(out, cfg, eng, ce, cfg.scenario.path)
    return EXIT_FAIL


def add_explore_parser(sub: Any) -> None:
    from mmugather.core import strategies

    p = sub.add_parser(
        "explore",
        help="search the interleavings of a concurrent scenario for a failing property",
        description="Run a concurrent scenario (a built-in name, see --list, or a TOML file: "
        "docs/explorer.md): the zapping thread is the real callers of 'mmugather run', "
        "interleaved with user threads, writeback, gup_fast, reclaim, a second zapping "
        "thread, the allocator and RCU on other CPUs. Every interleaving within the bound "
        "is searched (or RUNS random ones); a failing property is printed as a per-CPU "
        "timeline. Exit status: 0 when no property fails within the bound; 1 when one "
        "does; 2 when the scenario, the trace or the options were rejected. With --corpus: "
        "0 when every run of the historical-bug corpus is as expected, 1 when one is not.",
    )
    p.add_argument("scenario", nargs="?", metavar="SCENARIO",
                   help=f"a built-in concurrent scenario or a TOML file (default: "
                   f"{DEFAULT_SCENARIO})")
    p.add_argument("--arch", default=default_arch(), metavar="NAME",
                   help="the arch configuration (default: %(default)s)")
    p.add_argument("--strategy", default=strategies.DEFAULT_STRATEGY, metavar="NAME",
                   help=f"the rmap-removal strategy: {', '.join(strategies.names())} "
                   "(default: %(default)s)")
    p.add_argument("--mutant", metavar="NAME", help="run with a deliberately broken behaviour")
    p.add_argument("--fix", action="append", metavar="COMMIT",
                   help="add a kernel fix newer than v6.5 (--list names them); repeatable")
    p.add_argument("--cpus", type=int, metavar="N", help="CPUs of the machine (default: the "
                   "scenario's)")
    p.add_argument("--depth", type=int, metavar="D", help="the bound: steps per execution "
                   "(default: the scenario's)")
    p.add_argument("--random", type=int, metavar="RUNS",
                   help="RUNS random walks instead of the exhaustive search")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="the seed of --random (default 0)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="split the search over N local processes")
    where.add_argument("--dask", metavar="ADDRESS",
                       help="split the search over the Dask cluster at ADDRESS")
    p.add_argument("--events", metavar="PATH",
                   help="save a counterexample as a trace (JSON Lines) here")
    p.add_argument("--replay", metavar="TRACE", help="re-execute a saved trace")
    p.add_argument("--list", action="store_true", help="list the built-in concurrent scenarios")
    p.add_argument("--corpus", nargs="?", const="", metavar="BUG",
                   help="run the historical-bug corpus and print its table (exit 1 when a "
                   "run is not as expected); with BUG (a name or a commit id), that entry "
                   "and the timeline of each counterexample")
    p.set_defaults(func=_checked)


def _checked(args: argparse.Namespace) -> int:
    for opt in ("cpus", "depth", "random", "workers"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            return _error(f"--{opt} {value}: must be at least 1")
    if args.seed < 0:
        return _error(f"--seed {args.seed}: must not be negative")
    if args.corpus is not None:
        for opt in ("scenario", "replay", "random", "workers", "dask", "cpus", "depth", "mutant",
                    "fix", "events"):
            if getattr(args, opt) is not None:
                what = "SCENARIO" if opt == "scenario" else f"--{opt}"
                return _error(f"--corpus runs the configurations of its entries: {what} does "
                              "not go with it")
    if args.replay is not None:
        for opt in ("random", "workers", "dask", "cpus", "depth", "mutant", "fix"):
            if getattr(args, opt) is not None:
                return _error(f"--replay takes its configuration from the trace: "
                              f"--{opt} does not go with it")
    return cmd_explore(args)
