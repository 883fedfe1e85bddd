"""The ``mmugather`` command: one module per subcommand, each adding its own
parser.  The engine (:mod:`mmugather.core`) imports nothing from here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mmugather import __version__
from mmugather.cli.common import EXIT_OK, EXIT_USAGE


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
  mmugather explore --mutant rmap-before-flush   the lost write of 5df397dec7c4, step by step
  mmugather run --events run.jsonl && mmugather analyze run.jsonl --trace run.trace.json
  pytest --mmu-arch NAME                         the conformance kit for an arch plugin

'mmugather COMMAND --help' explains each command; docs/ has the rest.""",
    )
    parser.add_argument("--version", action="version", version=f"mmugather {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from mmugather.cli import analyze, bench, compare, explore, listing, replay, run

    replay.add_replay_parser(sub)
    run.add_run_parser(sub)
    listing.add_listing_parsers(sub)
    analyze.add_analyze_parser(sub)
    bench.add_bench_parser(sub)
    compare.add_compare_parser(sub)
    explore.add_explore_parser(sub)
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
