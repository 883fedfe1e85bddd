"""``mmugather run``: a scenario torn down on each arch, checked, side by side."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmugather.cli import table
from mmugather.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    STATUS_HELP,
    CliError,
    echo,
    no_duplicates,
    non_negative,
    outputs,
    positive,
)
from mmugather.cli.progress import Progress

if TYPE_CHECKING:
    from mmugather.core.arch import ArchSpec
    from mmugather.core.run import ArchRun
    from mmugather.core.scenario import Scenario

#: Where the rows are explained.
LEGEND = "rows: docs/scenarios.md, \"The table\"; --json for the exact counts"


def cmd_run(args: argparse.Namespace) -> int:
    import json

    from mmugather import mutants
    from mmugather.core import strategies
    from mmugather.core.arch import ArchError, registry
    from mmugather.core.run import run_arch
    from mmugather.core.scenario import ScenarioError, resolve

    try:
        reg = registry()
        names = args.arch or ([] if args.all_arches else None)
        if names:
            no_duplicates(names, "arch")
        specs = [reg.get(n) for n in names] if names else list(reg)
        if args.mutant:
            mutants.get(args.mutant)
        for spec in specs:
            if args.page_size and args.page_size not in spec.page_sizes:
                raise ArchError(f"arch {spec.name!r} does not support --page-size {args.page_size}")
        # What does not depend on the arch is checked once, at 4096 (or
        # --page-size): an error there is the whole command's.
        scenario = resolve(args.scenario, args.page_size or 4096, max_pages=args.max_pages)
        # What depends on the arch's geometry, before any output: an arch
        # the scenario does not fit is skipped, with the reason.
        plans, skipped = plan_runs(specs, args, scenario)
        if not plans:
            raise CliError(skipped[0][1])
    except (ArchError, ScenarioError, ValueError) as exc:
        raise CliError(str(exc)) from None
    out = outputs().open(args.events) if args.events else None
    runs = []
    with Progress(f"run {scenario.name}") as progress:
        for n, (spec, size, fitted) in enumerate(plans, 1):
            progress.reset(f"run {scenario.name}: {spec.name} ({n}/{len(plans)})")
            runs.append(
                run_arch(
                    fitted, spec, page_size=size, check=not args.no_check,
                    mutant=args.mutant, events=out, progress=progress.advance,
                    progress_total=progress.set_total,
                )
            )
    outputs().close_files()
    failed = any(r.violation_counts for r in runs)
    if args.json:
        echo(json.dumps({"scenario": scenario.name, "runs": [r.as_json() for r in runs],
                         "skipped": [{"arch": spec.name, "reason": reason}
                                     for spec, reason in skipped]}, indent=2))
        return EXIT_FAIL if failed else EXIT_OK
    strategy = getattr(args, "strategy", strategies.DEFAULT_STRATEGY)
    echo(f"scenario: {scenario.name}"
         + (f"   strategy: {strategy}" if strategy != strategies.DEFAULT_STRATEGY else "")
         + (f"   mutant: {args.mutant}" if args.mutant else ""))
    echo(format_table(runs))
    echo(LEGEND)
    other_sizes = [f"{r.arch}: PAGE_SIZE {r.page_size}" for r in runs if r.page_size != 4096]
    if other_sizes:
        echo("; ".join(other_sizes))
    for spec, reason in skipped:
        echo(f"\n{spec.name}: skipped: the scenario does not fit this arch: {reason}")
    for r in runs:
        if r.violation_counts:
            total = sum(r.violation_counts.values())
            echo(f"\n{r.arch}: {total:,} violations "
                 f"({', '.join(f'{k}: {v}' for k, v in sorted(r.violation_counts.items()))})")
            for v in r.violations[: args.show]:
                echo(v.render())
            more = len(r.violations) - args.show
            if more > 0:
                capped = (f"reports are capped at {len(r.violations)}; "
                          if total > len(r.violations) else "")
                echo(f"  … {more} more reports ({capped}--show N, --json for all)")
        elif args.mutant and not r.mutant_applies:
            echo(f"\n{r.arch}: the mutant's ordering is not wrong on this arch: "
                 "no violation expected")
        elif args.mutant and not mutants.get(args.mutant).rule:
            m = mutants.get(args.mutant)
            echo(f"\n{r.arch}: the checker cannot see this mutant, only an interleaving "
                 f"shows it: mmugather explore {m.explore} --arch {r.arch} --mutant {m.name}")
    if args.no_check:
        echo("\ninvariant checker off (--no-check)")
    elif not failed and not args.mutant:
        echo("\nno invariant violations")
    return EXIT_FAIL if failed else EXIT_OK


def plan_runs(
    specs: Sequence[ArchSpec], args: argparse.Namespace, scenario: Scenario
) -> tuple[list[tuple[ArchSpec, int, Scenario]], list[tuple[ArchSpec, str]]]:
    """Each arch's PAGE_SIZE and the scenario read at it, or why it is
    skipped.  An arch runs at --page-size, else at its first PAGE_SIZE if
    the scenario fits it there, else at 4096 (the size scenarios are
    written in) if it has it; a scenario that fits neither (alignment,
    TASK_SIZE, folio orders, huge page sizes) skips the arch."""
    from mmugather.core.arch import make_machine
    from mmugather.core.scenario import ScenarioError, check_geometry, resolve

    base = args.page_size or 4096
    plans: list[tuple[ArchSpec, int, Scenario]] = []
    skipped: list[tuple[ArchSpec, str]] = []
    for spec in specs:
        sizes = [args.page_size] if args.page_size else [spec.page_sizes[0]]
        if 4096 in spec.page_sizes and 4096 not in sizes:
            sizes.append(4096)
        reason = ""
        for size in sizes:
            try:
                fitted = scenario if size == base else resolve(args.scenario, size,
                                                               max_pages=args.max_pages)
                check_geometry(fitted, make_machine(spec, page_size=size).geometry, spec.name)
            except ScenarioError as exc:
                reason = str(exc)
                continue
            plans.append((spec, size, fitted))
            break
        else:
            skipped.append((spec, reason))
    return plans, skipped


def format_table(runs: Sequence[ArchRun]) -> str:
    """The side-by-side table: one row per counter, one column per arch
    (wrapped by arch beyond 100 columns)."""
    from mmugather.core.stats import ROWS

    labels = [label for _, label in ROWS]
    columns = [(r.arch, [table.format_cell(key, r.stats.get(key, 0)) for key, _ in ROWS])
               for r in runs]
    return "\n".join(table.render(labels, columns))


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="tear down a scenario's address space on each arch, check the ordering rules",
        description="Run a scenario (a built-in name or a TOML file, see docs/scenarios.md) "
        "through the kernel's callers (exit_mmap, munmap, madvise) on one or more arch "
        "configurations, with the invariant checker watching. Prints a side-by-side table "
        "of what each arch did (docs/scenarios.md). Exit status: 0; 1 when an invariant "
        "was violated; " + STATUS_HELP,
    )
    run.add_argument(
        "scenario", nargs="?", default="default", metavar="SCENARIO",
        help="a built-in scenario name or a TOML file (default: the built-in 'default')",
    )
    group = run.add_mutually_exclusive_group()
    group.add_argument("--arch", action="append", metavar="NAME",
                       help="an arch to run on (repeatable, each arch once; default: every "
                       "arch, side by side: unlike replay, run does not read "
                       "$MMUGATHER_ARCH)")
    group.add_argument("--all-arches", action="store_true", help="every arch (the default)")
    run.add_argument("--events", metavar="PATH",
                     help="write every event as JSON Lines here (complete or not at all)")
    run.add_argument("--mutant", metavar="NAME",
                     help="run with a deliberately broken behaviour (see 'mmugather mutants')")
    run.add_argument("--page-size", type=int, metavar="N",
                     help="PAGE_SIZE (default: each arch's first, if the scenario fits it "
                     "there, else 4096)")
    run.add_argument("--no-check", action="store_true", help="turn the invariant checker off")
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.add_argument("--show", type=non_negative, default=3, metavar="N",
                     help="violation reports to print per arch (default 3)")
    add_max_pages(run)
    run.set_defaults(func=cmd_run)



def add_max_pages(parser: argparse.ArgumentParser) -> None:
    from mmugather.core.scenario import BYTES_PER_PAGE, MAX_PAGES

    parser.add_argument(
        "--max-pages", type=positive, default=MAX_PAGES, metavar="N",
        help=f"the most pages a scenario may populate (default {MAX_PAGES:,}: about "
        f"{table.format_bytes(MAX_PAGES * BYTES_PER_PAGE)} of memory at about "
        f"{BYTES_PER_PAGE} bytes a page); checked before anything is built",
    )
