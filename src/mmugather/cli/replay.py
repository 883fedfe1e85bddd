"""``mmugather replay``: a replay-v1 file of mmu_gather calls in, the kernel's
effects out (``docs/replay.md``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import MutableMapping
from typing import Any

from mmugather.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    STATUS_HELP,
    CliError,
    StoreOnce,
    default_arch,
    outputs,
)
from mmugather.cli.progress import Progress


def cmd_replay(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, make_machine, registry
    from mmugather.core.events import Processor, make_emit
    from mmugather.core.replay import ReplayError, parse_file, run

    text = args.format == "console"
    to_file = args.events not in (None, "-")
    with Progress(f"replay {args.file}: reading") as progress:
        try:
            spec = registry().get(args.arch)
            page_size = args.page_size or spec.page_sizes[0]
            if page_size not in spec.page_sizes:
                raise ArchError(f"arch {spec.name!r} does not support --page-size {page_size}")
            # Opened before the reading: a path that cannot be written is
            # refused at once (a rejected replay removes it again).
            out = outputs().open(args.events, text=text) if to_file else None
            compiled = parse_file(args.file, page_size)
        except (ArchError, ReplayError) as exc:
            raise CliError(str(exc)) from None
        if out is None:
            out = outputs().open_stdout(text=text)
        progress.describe(f"replay {args.file}: {len(compiled):,} calls")
        checker = None
        observers: list[Processor] = []
        if args.check:
            from mmugather.core.check import Checker

            checker = Checker(spec, page_size, replay=True)
            observers.append(checker)
            if not args.detail:
                observers.append(_drop_detail)
        if text:
            observers.append(_hex_addresses)
        emit = make_emit(file=out, fmt=args.format, observers=observers)
        if checker is not None:
            checker.emit = emit
        detail = emit if args.detail or args.check else None
        machine = make_machine(spec, page_size=page_size, emit=emit, detail=detail)
        result = run(compiled, machine, check=args.check)
        if checker is not None:
            checker.finish()
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


#: Fields the console format shows in hex: addresses and page, folio and
#: table ids (as the checker's reports show them).
HEX_FIELDS = frozenset({"start", "end", "addr", "vma_start", "page", "folio", "first", "table"})
HEX_LISTS = frozenset({"pages", "folios", "tables"})


def _hex_addresses(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """``--format console``: addresses and ids in hex, as kernel people read
    them (a copy: the checker may keep the dict it saw)."""
    shown = dict(event_dict)
    for key, value in event_dict.items():
        if key in HEX_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            shown[key] = hex(value)
        elif key in HEX_LISTS and isinstance(value, list):
            shown[key] = "[" + ", ".join(
                hex(v) if isinstance(v, int) else str(v) for v in value) + "]"
    return shown


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
        "the replay or the checker found a violation; " + STATUS_HELP,
    )
    rp.add_argument("file", metavar="FILE", help="the replay file (replay-v1 JSON Lines)")
    rp.add_argument(
        "--arch",
        default=default_arch(),
        action=StoreOnce,
        help="arch configuration, given once (default: $MMUGATHER_ARCH or generic-smp; "
        "see 'mmugather arches')",
    )
    rp.add_argument("--events", metavar="PATH",
                    help="write events here instead of stdout (complete or not at all)")
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

