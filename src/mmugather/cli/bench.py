"""``mmugather bench``: the replay benchmark (``bench_replay``, on a file
from ``bench_ops``) or, with ``--teardown``, the teardown one
(``bench_teardown``).  It prints the figures and can keep them in a marked
section of a Markdown file (``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

#: The marked section of the Markdown file that ``--output`` rewrites.
START_MARK = "<!-- bench:replay:start -->"
END_MARK = "<!-- bench:replay:end -->"


def write_section(
    path: str, body: str, start_mark: str = START_MARK, end_mark: str = END_MARK
) -> None:
    """Put ``body`` between the markers in the Markdown file ``path``: replace
    the marked section if there is one, else append it; the rest stays."""
    START_MARK, END_MARK = start_mark, end_mark
    section = f"{START_MARK}\n{body.rstrip()}\n{END_MARK}\n"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    pattern = re.compile(re.escape(START_MARK) + r".*?" + re.escape(END_MARK) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        text += ("\n" if text else "") + section
    from mmugather.cli.common import atomic_output

    with atomic_output(path, text=True) as f:
        f.write(text)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from mmugather.cli.common import CliError, check_output, echo
    from mmugather.cli.progress import Progress as Bar
    from mmugather.core.arch import ArchError, registry

    if args.ops < 1 or args.repeat < 1:
        raise CliError("--ops and --repeat must be at least 1")
    from mmugather.cli.bench_replay import format_report, run_bench

    try:
        registry().get(args.arch)
    except ArchError as exc:
        raise CliError(str(exc)) from None
    if args.output:
        # Refused now, not after minutes of measuring.
        check_output(args.output)
        if os.path.exists(args.output) and not os.access(args.output, os.R_OK):
            raise CliError(f"{args.output}: cannot read it to keep the rest of the file")
    with Bar("bench", delay=0) as bar:
        if args.teardown:
            from mmugather.cli.bench_teardown import format_teardown, run_teardown_bench

            rows = run_teardown_bench(arch=args.arch, repeat=args.repeat,
                                      progress=lambda m: bar.describe(f"bench: {m}"))
            text = format_teardown(rows, args.arch, args.repeat)
        else:
            result = run_bench(ops=args.ops, arch=args.arch, repeat=args.repeat, seed=args.seed,
                               progress=lambda m: bar.describe(f"bench: {m}"))
            text = format_report(result)
    echo(text.rstrip("\n"))
    if args.output:
        marks = (("<!-- bench:teardown:start -->", "<!-- bench:teardown:end -->")
                 if args.teardown else (START_MARK, END_MARK))
        write_section(args.output, text, *marks)
        sys.stderr.write(f"bench: figures written to {args.output}\n")
    return 0


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``mmugather bench`` to the command's subparsers."""
    bp: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="time the replay on a generated, kernel-shaped replay file",
        description="Generate a replay-v1 file of exit and munmap flows, compact and as "
        "Python's json.dumps writes it, then time: parsing and validating each form, the "
        "whole 'mmugather replay' command on each (its bytecode cached, as an installed "
        "package has it, then under PYTHONDONTWRITEBYTECODE=1: modules with no __pycache__ "
        "compile at each start), replaying the ops with events off and "
        "with the events to /dev/null; each next to a reference measured in the same run "
        "(the stdlib json and orjson reading the same lines, structlog writing the same "
        "events). Each figure is the best of --repeat runs, in CPU time; progress goes to "
        "stderr when it is a terminal. Exit status: 0; 2 when an option was rejected "
        "(--output is checked before anything is measured) or the output could not be "
        "written; 130 on Ctrl-C "
        "(--output untouched).",
    )
    bp.add_argument("--ops", type=int, default=1_000_000, metavar="N", help="ops (1,000,000)")
    bp.add_argument("--arch", default="generic-smp", help="arch configuration (generic-smp)")
    bp.add_argument("--repeat", type=int, default=3, metavar="K", help="best of K runs (3)")
    bp.add_argument("--seed", type=int, default=1, help="generator seed (1)")
    bp.add_argument(
        "--output",
        metavar="MD",
        help="also write the figures into this Markdown file, between "
        f"{START_MARK} and {END_MARK} (the rest of the file is kept)",
    )
    bp.add_argument(
        "--teardown",
        action="store_true",
        help="instead: time the exit of address spaces of 1M, 4M and 16M mapped PTEs "
        "through the callers, checker off and on, in CPU time, with peak memory (each in a "
        "fresh process pinned to one CPU), next to references from the same processes (a "
        "bare Python loop, a bare numpy loop, the per-PTE paths at 1M); --output writes "
        "between <!-- bench:teardown:start --> and <!-- bench:teardown:end -->",
    )
    bp.set_defaults(func=cmd_bench)
    return bp


def main(argv: list[str] | None = None) -> int:
    """``python -m mmugather.cli.bench``: the ``bench`` command on its own."""
    parser = argparse.ArgumentParser(prog="python -m mmugather.cli.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    from mmugather.cli.common import run_command

    return run_command(args.func, args, process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
