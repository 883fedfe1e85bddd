"""``mmugather run``: a scenario torn down on each arch, checked, side by side."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from mmugather.cli.common import EXIT_FAIL, EXIT_OK
from mmugather.cli.common import error as _error
from mmugather.core.run import ArchRun
from mmugather.core.stats import ROWS


def cmd_run(args: argparse.Namespace) -> int:
    import json

    from mmugather import mutants
    from mmugather.core.arch import ArchError, make_machine, registry
    from mmugather.core.run import run_arch
    from mmugather.core.scenario import ScenarioError, check_geometry, resolve

    try:
        reg = registry()
        names = args.arch or ([] if args.all_arches else None)
        specs = [reg.get(n) for n in names] if names else list(reg)
        if args.mutant:
            mutants.get(args.mutant)
        page_size = args.page_size or 4096
        for spec in specs:
            if args.page_size and args.page_size not in spec.page_sizes:
                raise ArchError(f"arch {spec.name!r} does not support --page-size {args.page_size}")
        scenario = resolve(args.scenario, page_size)
        for spec in specs:
            # What depends on the arch's geometry is checked before any output.
            check_geometry(scenario, make_machine(spec, page_size=args.page_size).geometry)
    except (ArchError, ScenarioError, ValueError) as exc:
        return _error(str(exc))
    out = None
    if args.events:
        try:
            out = open(args.events, "wb")  # noqa: SIM115
        except OSError as exc:
            return _error(f"{args.events}: cannot write: {exc.strerror}")
    runs = []
    try:
        for spec in specs:
            progress = Progress(scenario.mapped_pages(), spec.name)
            try:
                runs.append(
                    run_arch(
                        scenario, spec, page_size=args.page_size, check=not args.no_check,
                        mutant=args.mutant, events=out, progress=progress,
                    )
                )
            finally:
                progress.close()
    finally:
        if out is not None:
            out.close()
    failed = any(r.violation_counts for r in runs)
    if args.json:
        print(json.dumps({"scenario": scenario.name, "runs": [r.as_json() for r in runs]},
                         indent=2))
        return EXIT_FAIL if failed else EXIT_OK
    print(f"scenario: {scenario.name}" + (f"   mutant: {args.mutant}" if args.mutant else ""))
    print(format_table(runs))
    for r in runs:
        if r.violation_counts:
            print(f"\n{r.arch}: {sum(r.violation_counts.values())} violations "
                  f"({', '.join(f'{k}: {v}' for k, v in sorted(r.violation_counts.items()))})")
            for v in r.violations[: args.show]:
                print(v.render())
            if len(r.violations) > args.show:
                print(f"  ... {len(r.violations) - args.show} more reports (--show N, --json)")
        elif args.mutant and not r.mutant_applies:
            print(f"\n{r.arch}: the mutant's ordering is not wrong on this arch: "
                  "no violation expected")
    if args.no_check:
        print("\ninvariant checker off (--no-check)")
    elif not failed and not args.mutant:
        print("\nno invariant violations")
    return EXIT_FAIL if failed else EXIT_OK


def format_table(runs: Sequence[ArchRun]) -> str:
    """The side-by-side table: one row per counter, one column per arch."""
    labels = [label for _, label in ROWS]
    width = max(len(x) for x in labels)
    cols = [r.arch for r in runs]
    colw = [max(len(c), 12) for c in cols]
    out = [f"{'':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, colw, strict=True))]
    for key, label in ROWS:
        cells = []
        for r, w in zip(runs, colw, strict=True):
            value = r.stats.get(key, 0)
            cells.append(f"{value:>{w},}")
        out.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(out)


class Progress:
    """A one-line progress bar on stderr, for runs long enough to need one."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.last = -1.0
        self.enabled = self.stream.isatty() and total >= 200_000

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label:<16} [{bar:<30}] {frac * 100:5.1f}%")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="tear down a scenario's address space on each arch, check the ordering rules",
        description="Run a scenario (a built-in name or a TOML file, see docs/scenarios.md) "
        "through the kernel's callers (exit_mmap, munmap, madvise) on one or more arch "
        "configurations, with the invariant checker watching. Prints a side-by-side table "
        "of what each arch did. Exit status: 0; 1 when an invariant was violated; 2 when "
        "the scenario or the options were rejected.",
    )
    run.add_argument(
        "scenario", nargs="?", default="default", metavar="SCENARIO",
        help="a built-in scenario name or a TOML file (default: the built-in 'default')",
    )
    group = run.add_mutually_exclusive_group()
    group.add_argument("--arch", action="append", metavar="NAME",
                       help="an arch to run on (repeatable; default: every arch)")
    group.add_argument("--all-arches", action="store_true", help="every arch (the default)")
    run.add_argument("--events", metavar="PATH", help="write every event as JSON Lines here")
    run.add_argument("--mutant", metavar="NAME",
                     help="run with a deliberately broken behaviour (see 'mmugather mutants')")
    run.add_argument("--page-size", type=int, metavar="N", help="PAGE_SIZE (default 4096)")
    run.add_argument("--no-check", action="store_true", help="turn the invariant checker off")
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.add_argument("--show", type=int, default=3, metavar="N",
                     help="violation reports to print per arch (default 3)")
    run.set_defaults(func=cmd_run)

