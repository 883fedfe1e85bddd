"""The ``mmugather`` command: one module per subcommand, each adding its own
parser.  The engine (:mod:`mmugather.core`) imports nothing from here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from mmugather import __version__
from mmugather.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, run_command


class Parser(argparse.ArgumentParser):
    """argparse, with a rejected option reported in one line like every
    other error (argparse prints the usage as well)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("mmugather").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"mmugather: {where}{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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

    from mmugather.cli import analyze, bench, compare, explore, host_check, listing, replay, run

    replay.add_replay_parser(sub)
    run.add_run_parser(sub)
    listing.add_listing_parsers(sub)
    analyze.add_analyze_parser(sub)
    bench.add_bench_parser(sub)
    compare.add_compare_parser(sub)
    host_check.add_host_check_parser(sub)
    explore.add_explore_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (``--help`` and rejected
    options included: argparse's ``SystemExit`` ends here)."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("mmugather: interrupted\n")
        return EXIT_INTERRUPTED
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Called without argv, main() is the process (the console script, python
    # -m mmugather) and may take over its stdout on the way out.
    return run_command(args.func, args, process=argv is None)
