"""The ``mmugather`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

from mmugather import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _default_arch() -> str:
    from mmugather.arches import DEFAULT_ARCH

    return os.environ.get("MMUGATHER_ARCH", DEFAULT_ARCH)


def _error(message: str) -> int:
    sys.stderr.write(f"mmugather: {message}\n")
    return EXIT_USAGE


def cmd_replay(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, make_machine, registry
    from mmugather.core.events import Processor, make_emit
    from mmugather.core.replay import ReplayError, parse_file, run

    try:
        spec = registry().get(args.arch)
        page_size = args.page_size or spec.page_sizes[0]
        if page_size not in spec.page_sizes:
            raise ArchError(f"arch {spec.name!r} does not support --page-size {page_size}")
        compiled = parse_file(args.file, page_size)
    except (ArchError, ReplayError) as exc:
        return _error(str(exc))
    if args.events in (None, "-"):
        out = sys.stdout.buffer if args.format == "json" else sys.stdout
        close = False
    else:
        try:
            out = open(args.events, "wb" if args.format == "json" else "w")  # noqa: SIM115
        except OSError as exc:
            return _error(f"{args.events}: cannot write: {exc.strerror}")
        close = True
    checker = None
    try:
        observers: list[Processor] = []
        if args.check:
            from mmugather.core.check import Checker

            checker = Checker(spec, page_size, replay=True)
            observers.append(checker)
            if not args.detail:
                observers.append(_drop_detail)
        emit = make_emit(file=out, fmt=args.format, observers=observers)
        if checker is not None:
            checker.emit = emit
        detail = emit if args.detail or args.check else None
        machine = make_machine(spec, page_size=page_size, emit=emit, detail=detail)
        result = run(compiled, machine, check=args.check)
        if checker is not None:
            checker.finish()
    finally:
        out.flush()
        if close:
            out.close()
    status = EXIT_OK
    if result.bug is not None:
        sys.stderr.write(f"{args.file}:{result.bug_line}: VM_BUG_ON: {result.bug}\n")
        status = EXIT_FAIL
    if checker is not None and checker.counts:
        sys.stderr.write(f"{args.file}: {checker.total} invariant violations "
                         f"({checker.summary()})\n")
        for v in checker.violations[:3]:
            sys.stderr.write(v.render() + "\n")
        status = EXIT_FAIL
    return status


def _drop_detail(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Keep the checker's extra input out of the replay's output."""
    import structlog

    from mmugather.core.events import DETAIL_EVENTS

    if event_dict["event"] in DETAIL_EVENTS or event_dict["event"] in ("pte_clear",
                                                                        "table_unhook"):
        raise structlog.DropEvent
    return event_dict


def cmd_run(args: argparse.Namespace) -> int:
    import json

    from mmugather.core import mutants
    from mmugather.core.arch import ArchError, make_machine, registry
    from mmugather.core.run import Progress, format_table, run_arch
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


def cmd_arches(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, registry

    try:
        reg = registry()
    except ArchError as exc:
        return _error(str(exc))
    rows = []
    for spec in reg:
        rows.append(
            (
                spec.name,
                ", ".join(spec.resolved_features()) or "-",
                ", ".join(str(s) for s in spec.page_sizes),
                spec.origin,
                spec.description,
            )
        )
    if args.json:
        import json

        keys = ("name", "features", "page_sizes", "origin", "description")
        print(json.dumps([dict(zip(keys, r, strict=False)) for r in rows], indent=2))
        return EXIT_OK
    width = max(len(r[0]) for r in rows)
    for name, feats, sizes, origin, desc in rows:
        print(f"{name:<{width}}  {desc}")
        print(f"{'':<{width}}  features:   {feats}")
        print(f"{'':<{width}}  PAGE_SIZE:  {sizes}")
        print(f"{'':<{width}}  from:       {origin}")
    return EXIT_OK


def cmd_mutants(args: argparse.Namespace) -> int:
    from mmugather.core.check import RULES
    from mmugather.core.mutants import MUTANTS

    for m in MUTANTS.values():
        print(f"{m.name}\n    {m.description}\n    caught by: {m.rule} ({RULES[m.rule]})")
    return EXIT_OK


def cmd_scenarios(args: argparse.Namespace) -> int:
    from mmugather.core.scenario import builtin_names, load_builtin

    for name in builtin_names():
        sc = load_builtin(name)
        print(f"{name}  ({sc.mapped_pages():,} mapped pages, {len(sc.vmas)} VMAs)")
        print(f"    {sc.description}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmugather",
        description="An executable model of the Linux kernel's mmu_gather "
        "(v6.5 with the generalized rmap-removal patch).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  mmugather run                                  the default scenario on every arch, checked
  mmugather run --mutant free-before-flush       a broken ordering the checker must catch
  mmugather replay calls.jsonl --arch s390       recorded calls in, the kernel's effects out
  mmugather compare thp-pte                      the rmap-removal strategies side by side
  mmugather run --events run.jsonl && mmugather analyze run.jsonl --trace run.trace.json
  pytest --mmu-arch NAME                         the conformance kit for an arch plugin

'mmugather COMMAND --help' explains each command; docs/ has the rest.""",
    )
    parser.add_argument("--version", action="version", version=f"mmugather {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rp = sub.add_parser(
        "replay",
        help="replay recorded mmu_gather calls and print the kernel's effects",
        description="Replay a replay-v1 file (JSON Lines of mmu_gather calls) under an "
        "arch configuration and write the effect events as JSON Lines. The whole file "
        "is validated before anything runs. Exit status: 0; 1 when a VM_BUG_ON ended "
        "the replay; 2 when the input or the options were rejected (nothing written).",
    )
    rp.add_argument("file", metavar="FILE", help="the replay file (replay-v1 JSON Lines)")
    rp.add_argument(
        "--arch",
        default=_default_arch(),
        help="arch configuration (default: $MMUGATHER_ARCH or generic-smp; "
        "see 'mmugather arches')",
    )
    rp.add_argument("--events", metavar="PATH", help="write events here instead of stdout")
    rp.add_argument(
        "--page-size",
        type=int,
        metavar="N",
        help="PAGE_SIZE in bytes: 4096, 16384 or 65536 where the arch supports it",
    )
    rp.add_argument(
        "--format",
        choices=("json", "console"),
        default="json",
        help="json: JSON Lines (default); console: a readable rendering",
    )
    rp.add_argument(
        "--check",
        action="store_true",
        help="run the invariant checker on the replay (the rules that need no address-space "
        "model); violations go to stderr and make the exit status 1",
    )
    rp.add_argument(
        "--detail",
        action="store_true",
        help="also emit the reader's events (page queued, new batch, rmap pointer moved)",
    )
    rp.set_defaults(func=cmd_replay)

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

    mt = sub.add_parser("mutants", help="list the mutants the checker must catch")
    mt.set_defaults(func=cmd_mutants)

    sc = sub.add_parser("scenarios", help="list the built-in scenarios")
    sc.set_defaults(func=cmd_scenarios)

    from mmugather.core.analyze import add_analyze_parser
    from mmugather.core.bench import add_bench_parser

    add_analyze_parser(sub)
    add_bench_parser(sub)
    from mmugather.core.compare import add_compare_parser

    add_compare_parser(sub)

    ap = sub.add_parser(
        "arches",
        help="list the arch configurations, their features and where they came from",
        description="List every arch configuration known: built-in ones and those "
        "installed through the 'mmugather.arches' entry-point group.",
    )
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.set_defaults(func=cmd_arches)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # A closed pipe (| head) is not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
