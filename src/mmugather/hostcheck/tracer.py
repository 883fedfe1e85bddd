"""Recording the running kernel's ``tlb:tlb_flush`` events for the workloads.

The tracepoint fires once per flush a CPU carries out (``reason`` 3, "local
MM shootdown", for a flush of the current mm on the CPU that asked for it)
and once per ``flush_tlb_multi()`` call that sends IPIs (reason 4); its
``pages`` is the count of strides flushed, -1 for a full flush.

Each recording goes to a private tracefs instance (the global trace buffer
and its settings are left alone) that is removed afterwards; tracefs is
mounted for the recording if it was not, and unmounted again.  Each run of a
workload is a fresh process (:mod:`.child`) started while this process is
pinned to the CPU, so that the workload's mm is born there and
``mm_cpumask()`` holds that CPU alone; the events kept are those of its
pid between its begin and end markers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import gzip
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmugather.hostcheck import child
from mmugather.hostcheck.workloads import Workload, child_spec, layout

TRACEFS = "/sys/kernel/tracing"
EVENT = "events/tlb/tlb_flush"
CEILING_FILE = "/sys/kernel/debug/x86/tlb_single_page_flush_ceiling"
#: the recording's format, for ``--from``
FORMAT = "mmugather-host-check"
VERSION = 1
#: reasons of the tracepoint (include/trace/events/tlb.h)
LOCAL_MM_SHOOTDOWN = 3
REMOTE_SEND_IPI = 4
#: the workload's own flushes; the others in its context are interrupts or
#: task switches caused by something else
OWN_REASONS = (LOCAL_MM_SHOOTDOWN, REMOTE_SEND_IPI)


class TracingUnavailable(Exception):
    """Nothing can be recorded here; the message says why, in one line."""


class RecordError(Exception):
    """The recording started but could not be completed."""


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                          ctypes.c_void_p]
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return lib


def _mounted(path: str) -> bool:
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    return any(line.split()[1:3] == [path, "tracefs"] for line in text.splitlines())


def _mount_tracefs() -> None:
    if _libc().mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        code = ctypes.get_errno()
        raise TracingUnavailable(
            f"no tracefs: not mounted at {TRACEFS} and mounting it failed "
            f"({errno.errorcode.get(code, code)})")


def _umount_tracefs() -> None:
    _libc().umount2(TRACEFS.encode(), 0)


def unavailable() -> str | None:
    """Why tlb:tlb_flush cannot be recorded here, or None.  Leaves nothing
    changed (a tracefs mounted for the look is unmounted)."""
    if platform.machine() != "x86_64":
        return f"x86-64 only (this machine is {platform.machine()})"
    if os.geteuid() != 0:
        return "not root (tracing needs tracefs and a trace instance)"
    mounted_here = False
    if not _mounted(TRACEFS):
        try:
            _mount_tracefs()
        except TracingUnavailable as exc:
            return str(exc)
        mounted_here = True
    try:
        if not os.path.isfile(os.path.join(TRACEFS, EVENT, "format")):
            return "no tlb_flush event: this kernel has no tlb:tlb_flush tracepoint"
        if not os.access(os.path.join(TRACEFS, "instances"), os.W_OK):
            return f"no tracefs instances: cannot create one under {TRACEFS}/instances"
    finally:
        if mounted_here:
            _umount_tracefs()
    return None


class Instance:
    """A private trace instance with tlb:tlb_flush on, for a ``with`` block."""

    def __init__(self) -> None:
        self.mounted_here = False
        self.path = os.path.join(TRACEFS, "instances", f"mmugather-host-check-{os.getpid()}")

    def __enter__(self) -> Instance:
        if not _mounted(TRACEFS):
            _mount_tracefs()
            self.mounted_here = True
        try:
            if os.path.isdir(self.path):
                os.rmdir(self.path)  # left by a run of the same pid that was killed
            os.mkdir(self.path)
            self.write("buffer_size_kb", "1024")
            self.write(EVENT + "/enable", "1")
        except OSError as exc:
            self.__exit__()
            raise TracingUnavailable(f"cannot set up the trace instance {self.path}: "
                                     f"{exc.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if os.path.isdir(self.path):
                for rel, value in ((EVENT + "/enable", "0"), (EVENT + "/filter", "0")):
                    # Removing the instance is what matters.
                    with contextlib.suppress(OSError):
                        self.write(rel, value)
                os.rmdir(self.path)
        finally:
            if self.mounted_here:
                _umount_tracefs()

    def write(self, rel: str, value: str) -> None:
        with open(os.path.join(self.path, rel), "w") as f:
            f.write(value)

    def read_trace(self) -> str:
        return Path(self.path, "trace").read_text()

    def clear(self) -> None:
        self.write("trace", "")

    @property
    def marker(self) -> str:
        return os.path.join(self.path, "trace_marker")


_LINE = re.compile(r"^\s*.*?-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                   r"(?:\S+\s+)?\d+\.\d+:\s+(?P<event>\w+):\s?(?P<msg>.*)$")
_FLUSH = re.compile(r"pages:(?P<pages>-?\d+)\s+reason:.*\((?P<reason>\d+)\)\s*$")


def flushes_between_markers(trace: str, pid: int, name: str) -> list[list[int]] | None:
    """``[reason, pages, cpu]`` of each tlb_flush event of ``pid`` between
    its begin and end markers; None if the markers are not both there."""
    begin, end = f"{child.BEGIN} {name}", f"{child.END} {name}"
    out: list[list[int]] | None = None
    for line in trace.splitlines():
        m = _LINE.match(line)
        if m is None or int(m["pid"]) != pid:
            continue
        if m["event"] == "tracing_mark_write":
            text = m["msg"].strip()
            if text == begin:
                out = []
            elif text == end and out is not None:
                return out
        elif m["event"] == "tlb_flush" and out is not None:
            f = _FLUSH.search(m["msg"])
            if f is not None:
                out.append([int(f["reason"]), int(f["pages"]), int(m["cpu"])])
    return None


def run_once(w: Workload, inst: Instance, cpu: int) -> dict[str, Any]:
    """One fresh process running ``w``; its flushes between the markers."""
    inst.clear()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", child.__file__, inst.marker, str(cpu)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(child_spec(w)) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if line.startswith("READY "):
        inst.write(EVENT + "/filter", f"common_pid == {int(line.split()[1])}")
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        line, err = "", "timed out after 120 s"
    inst.write(EVENT + "/filter", "0")
    if not line.startswith("RESULT "):
        last = (err.strip().splitlines() or ["no output"])[-1]
        return {"pid": None, "slot": None, "context": [], "flushes": [],
                "problems": [f"the workload process failed (exit {proc.returncode}): {last}"]}
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    flushes = flushes_between_markers(inst.read_trace(), result["pid"], w.name)
    if flushes is None:
        result["problems"].append("its markers are not in the trace")
    result["flushes"] = flushes or []
    return result


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _config(options: Sequence[str]) -> dict[str, str]:
    """CONFIG_* values from /proc/config.gz ("n": unset); {} if unreadable."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for opt in options:
        m = re.search(rf"^{opt}=(\S+)$", text, re.MULTILINE)
        out[opt] = m.group(1) if m else "n"
    return out


def host_facts() -> dict[str, Any]:
    """The kernel and machine a recording comes from."""
    flags: set[str] = set()
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    ceiling = _read(CEILING_FILE)
    thp = re.search(r"\[(\w+)\]", _read("/sys/kernel/mm/transparent_hugepage/enabled"))
    return {
        "kernel": os.uname().release,
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_flags": sorted(flags & {"pcid", "invpcid", "invlpgb", "la57", "pti", "hypervisor"}),
        # Unreadable under kernel lockdown, or without debugfs mounted.
        "tlb_single_page_flush_ceiling": int(ceiling) if ceiling.isdigit() else None,
        "thp_enabled": thp.group(1) if thp else "unavailable",
        "config": _config(("CONFIG_PT_RECLAIM", "CONFIG_PARAVIRT", "CONFIG_PGTABLE_LEVELS",
                           "CONFIG_MMU_GATHER_RCU_TABLE_FREE")),
    }


def record(workloads: Sequence[Workload], *, repeats: int = 3, cpu: int | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run each workload ``repeats`` times on ``cpu`` (default: the lowest
    this process may use) and return the recording."""
    reason = unavailable()
    if reason is not None:
        raise TracingUnavailable(reason)
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed) if cpu is None else cpu
    if cpu not in allowed:
        raise RecordError(f"CPU {cpu} is not one this process may run on "
                          f"({', '.join(str(c) for c in sorted(allowed))})")
    results = []
    with Instance() as inst:
        # The children inherit the affinity at fork, before their mm exists.
        os.sched_setaffinity(0, {cpu})
        try:
            for w in workloads:
                runs = [run_once(w, inst, cpu) for _ in range(repeats)]
                first = next((r for r in runs if r["slot"] is not None), None)
                results.append({
                    "name": w.name,
                    "why": w.why,
                    "layout": layout(w, first["slot"], first["context"]) if first else None,
                    "runs": [{k: r[k] for k in ("pid", "flushes", "problems")} for r in runs],
                })
                if progress is not None:
                    progress(w.name)
        finally:
            os.sched_setaffinity(0, allowed)
    return {"format": FORMAT, "version": VERSION, "host": host_facts(), "cpu": cpu,
            "repeats": repeats, "workloads": results}
