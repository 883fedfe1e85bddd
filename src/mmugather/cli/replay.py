"""``mmugather replay``: a replay-v1 file of mmu_gather calls in, the kernel's
effects out (``docs/replay.md``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import MutableMapping
from typing import Any

from mmugather.cli.common import EXIT_FAIL, EXIT_OK, default_arch
from mmugather.cli.common import error as _error


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



def add_replay_parser(sub: Any) -> None:
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
        default=default_arch(),
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

