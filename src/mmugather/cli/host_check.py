"""``mmugather host-check``: the running kernel's TLB flushes next to the
``x86-64`` model's, workload by workload."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any

from mmugather.cli.common import EXIT_FAIL, EXIT_OK
from mmugather.cli.common import error as _error

DESCRIPTION = """\
Run small workloads on the running kernel and record, through tracefs and the
tlb:tlb_flush tracepoint, the TLB flushes each one makes; run the same
layouts on the x86-64 model and print both side by side with a verdict per
workload.  Each workload is a fresh single-threaded process pinned to one CPU
before it starts, with a fixed layout (MAP_FIXED_NOREPLACE in an empty 512 GiB
slot); only its own "local MM shootdown" flushes between two trace markers
count.  The tracepoint's pages is a count of strides (a THP's PMD-stride flush
is 1), -1 (shown "full") for a full flush.

The model follows v6.5; the running kernel is newer.  The decisions compared
(the stride, the 33-stride ceiling, full flushes, the range a freed page
table adds) have not changed since.  One change is avoided on purpose: from
6.14, CONFIG_PT_RECLAIM frees a PTE table that MADV_DONTNEED empties over a
whole PMD range, widening the flush down to the PMD start, which v6.5 never
does; the MADV_DONTNEED workload covers 16 pages and keeps a page of the same
PTE table mapped, so both kernels flush the same 16 strides.

Needs root (tracefs is mounted if it is not, and a private trace instance is
created and removed; the global trace settings are left alone).  Exit status:
0 when every workload agrees; 1 when one differs or could not be set up as
planned; 2 when tracing is unavailable (not root, no tracefs, no tlb_flush
event) or the options or --from file are rejected."""


def cmd_host_check(args: argparse.Namespace) -> int:
    from mmugather.hostcheck import tracer, workloads

    if args.list:
        for w in workloads.WORKLOADS:
            print(f"{w.name:18} {w.op} {_size(w.op_size)}: {w.why}")
        return EXIT_OK
    if args.repeats < 1:
        return _error("host-check: --repeats: must be at least 1")
    try:
        chosen = [workloads.by_name(n) for n in args.only] if args.only else \
            list(workloads.WORKLOADS)
    except KeyError as exc:
        return _error(f"host-check: --only: {exc.args[0]}")
    if args.record is not None:
        problem = _unwritable(args.record)
        if problem:
            return _error(f"{args.record}: cannot write: {problem}")
    if args.from_file is not None:
        rec, message = _load(args.from_file)
        if rec is None:
            return _error(message)
    else:
        try:
            rec = tracer.record(chosen, repeats=args.repeats, cpu=args.cpu)
        except tracer.TracingUnavailable as exc:
            return _error(f"host-check: tracing unavailable: {exc}")
        except tracer.RecordError as exc:
            return _error(f"host-check: {exc}")
        if args.record is not None:
            problem = _save(args.record, json.dumps(rec, indent=1) + "\n")
            if problem:
                return _error(f"{args.record}: cannot write: {problem}")
    return _report(rec, args.from_file)


def _unwritable(path: str) -> str | None:
    if os.path.isdir(path):
        return "is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return "no such directory"
    if not os.access(parent, os.W_OK):
        return "permission denied"
    return None


def _save(path: str, text: str) -> str | None:
    """Write ``text`` to ``path`` whole, or leave no partial file there (a
    device such as /dev/full is left alone)."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        if os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return exc.strerror or str(exc)
    return None


def _load(path: str) -> tuple[dict[str, Any] | None, str]:
    from mmugather.hostcheck.model import RecordingError, check_recording

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror}"
    except UnicodeDecodeError:
        return None, f"{path}: not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"{path}:{exc.lineno}: not JSON: {exc.msg}"
    try:
        return check_recording(path, data), ""
    except RecordingError as exc:
        return None, str(exc)


def _size(nbytes: int) -> str:
    return f"{nbytes // (1 << 20)}M" if nbytes >= 1 << 20 else f"{nbytes // 4096}p"


def _report(rec: dict[str, Any], source: str | None) -> int:
    from mmugather.hostcheck.model import judge, pages_text

    host = rec["host"]
    where = f"recorded in {source}" if source else "recorded now"
    ceiling = host.get("tlb_single_page_flush_ceiling")
    print(f"kernel {host['kernel']} (uname -r), {host.get('machine', '?')}, "
          f"{host.get('cpu_model', '?')}; CPU {rec.get('cpu', '?')}, {rec.get('repeats', '?')} "
          f"runs each, {where}")
    print("model: x86-64 as v6.5 has it (arches/x86_64.py), one CPU, ceiling 33 strides "
          f"(the host's: {ceiling if ceiling is not None else 'unreadable'})")
    if host.get("config", {}).get("CONFIG_PT_RECLAIM") == "y":
        print("CONFIG_PT_RECLAIM=y here (v6.5 has none): the MADV_DONTNEED workload keeps its "
              "PTE table, so both flush alike")
    print("flushes as tlb:tlb_flush counts them: strides each, 'full' for a full flush, "
          "'ipi:' for an IPI sent\n")
    verdicts = [judge(w) for w in rec["workloads"]]
    width = max([len(v.name) for v in verdicts] + [8])
    print(f"{'workload':<{width}}  {'host':>10}  {'model':>10}  verdict")
    for v in verdicts:
        if v.problems:
            verdict = "NOT RUN AS PLANNED"
        elif v.agrees:
            verdict = "agree"
        else:
            verdict = "DIFFER"
        print(f"{v.name:<{width}}  {pages_text(v.host):>10}  {pages_text(v.model):>10}  {verdict}")
        if v.runs != v.agreeing_runs and not v.problems:
            print(f"{'':<{width}}  only {v.agreeing_runs} of {v.runs} runs flushed this way")
        for p in v.problems:
            print(f"{'':<{width}}  ! {p}")
        for text in v.violations:
            print(f"{'':<{width}}  ! the model's checker: {text}")
    agreeing = sum(v.agrees for v in verdicts)
    print(f"\n{agreeing} of {len(verdicts)} workloads agree")
    return EXIT_OK if agreeing == len(verdicts) else EXIT_FAIL


def add_host_check_parser(sub: Any) -> None:
    hc = sub.add_parser(
        "host-check",
        help="compare the running kernel's TLB flushes with the x86-64 model's (root)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = hc.add_mutually_exclusive_group()
    source.add_argument("--record", metavar="FILE",
                        help="also save the recording here (JSON), for --from")
    source.add_argument("--from", dest="from_file", metavar="FILE",
                        help="compare a saved recording instead of tracing (no root needed)")
    hc.add_argument("--repeats", type=int, default=3, metavar="N",
                    help="runs of each workload; all must flush alike (default 3)")
    hc.add_argument("--cpu", type=int, metavar="N",
                    help="the CPU to pin the workloads to (default: the lowest allowed)")
    hc.add_argument("--only", action="append", metavar="NAME",
                    help="run only this workload (repeatable; see --list)")
    hc.add_argument("--list", action="store_true", help="list the workloads and exit")
    hc.set_defaults(func=cmd_host_check)
