"""The host-check workload process: one fresh, single-threaded process per
run, so that its mm has run on the pinned CPU only.

Run as a script (``python -I -S child.py MARKER CPU``), standard library
only: it imports nothing of mmugather, which keeps its start-up short and
its address space small.  It reads the workload (``workloads.child_spec``)
as one JSON line on stdin, maps it with MAP_FIXED_NOREPLACE in the first
free 512 GiB slot, writes a byte to every page to populate, checks in
``/proc/self/smaps`` that the VMAs and THPs are as planned, prints
``READY <pid>`` and waits for ``GO``.  Then, with the garbage collector off
and the system call bound beforehand, it writes the begin marker, runs the
operation, writes the end marker, and prints ``RESULT <json>``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gc
import json
import os
import re
import sys
from typing import Any

PAGE = 4096
SLOT_SIZE = 1 << 39
USER_TOP = 1 << 47
#: 512 GiB slots tried in turn: below a randomised mmap_base, far from the
#: program and its heap
SLOTS = (0x7E0000000000, 0x7D0000000000, 0x700000000000, 0x600000000000)
PROT_RW = 0x1 | 0x2
MAP_PRIVATE_ANON_FIXED_NOREPLACE = 0x02 | 0x20 | 0x100000
MAP_FAILED = (1 << 64) - 1
MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE = 4, 14, 15
BEGIN, END = "mmugather-begin", "mmugather-end"


class Refused(Exception):
    """The layout could not be set up as planned."""


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    lib.mmap.restype = ctypes.c_void_p
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munmap.restype = ctypes.c_int
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.madvise.restype = ctypes.c_int
    return lib


def _err() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


def maps() -> list[tuple[int, int, str]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5].strip() if len(parts) > 5 else "[anon]"))
    return out


def smaps(lo: int, hi: int) -> list[dict[str, int]]:
    """Start, end, Rss and AnonHugePages (KiB) of the VMAs in [lo, hi)."""
    out: list[dict[str, int]] = []
    cur: dict[str, int] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                cur = {"start": start, "end": end} if start < hi and end > lo else None
                if cur is not None:
                    out.append(cur)
                continue
            m = re.match(r"(Rss|AnonHugePages):\s+(\d+)", line)
            if cur is not None and m:
                cur[m.group(1)] = int(m.group(2))
    return out


def choose_slot() -> int:
    for slot in SLOTS:
        if not smaps(slot, slot + SLOT_SIZE):
            return slot
    raise Refused("no free 512 GiB slot at " + ", ".join(hex(s) for s in SLOTS))


def context(slot: int) -> list[dict[str, Any]]:
    """The nearest VMAs below and above the slot: free_pgtables() frees no
    table they still use."""
    below = above = None
    for lo, hi, what in maps():
        if hi <= slot:
            below = {"name": "context-below", "start": lo, "end": hi, "what": what}
        elif lo >= slot + SLOT_SIZE and hi <= USER_TOP and above is None:
            above = {"name": "context-above", "start": lo, "end": hi, "what": what}
    return [v for v in (below, above) if v is not None]


def build(lib: ctypes.CDLL, spec: dict[str, Any], slot: int) -> None:
    for area in spec["areas"]:
        start, size = slot + area["offset"], area["size"]
        got = lib.mmap(start, size, PROT_RW, MAP_PRIVATE_ANON_FIXED_NOREPLACE, -1, 0)
        if got in (None, MAP_FAILED):
            raise Refused(f"mmap({start:#x}, {size:#x}, MAP_FIXED_NOREPLACE): {_err()}")
        if got != start:
            # A kernel without MAP_FIXED_NOREPLACE takes the address as a hint.
            lib.munmap(got, size)
            raise Refused(f"mmap put {size:#x} bytes at {got:#x}, not {start:#x}")
        advice = MADV_HUGEPAGE if area["thp"] else MADV_NOHUGEPAGE
        if lib.madvise(start, size, advice) != 0:
            raise Refused(f"madvise({start:#x}, {size:#x}, {advice}): {_err()}")
    for area in spec["areas"]:
        start = slot + area["offset"]
        runs = [(0, area["size"] // PAGE)] if area["thp"] else area["populate"]
        for offset, pages in runs:
            for k in range(pages):
                ctypes.memset(start + offset + k * PAGE, 0x5A, 1)


def check(spec: dict[str, Any], slot: int) -> list[str]:
    """What is not as planned: VMAs merged or split, pages missing, a THP
    not PMD-mapped (THP disabled, no huge page free)."""
    problems = []
    found = {v["start"]: v for v in smaps(slot, slot + SLOT_SIZE)}
    want = sorted((slot + a["offset"], slot + a["offset"] + a["size"]) for a in spec["areas"])
    have = sorted((v["start"], v["end"]) for v in found.values())
    if want != have:
        problems.append(f"VMAs {[(hex(a), hex(b)) for a, b in have]}, planned "
                        f"{[(hex(a), hex(b)) for a, b in want]}")
        return problems
    for area in spec["areas"]:
        vma = found[slot + area["offset"]]
        if area["thp"]:
            if vma.get("AnonHugePages", 0) * 1024 != area["size"]:
                problems.append(f"{area['name']}: not PMD-mapped (AnonHugePages "
                                f"{vma.get('AnonHugePages', 0)} kB): is THP enabled?")
        else:
            pages = sum(n for _, n in area["populate"])
            if vma.get("AnonHugePages", 0) or vma.get("Rss", 0) * 1024 != pages * PAGE:
                problems.append(f"{area['name']}: Rss {vma.get('Rss', 0)} kB, planned "
                                f"{pages * PAGE // 1024} kB of 4K pages")
    return problems


def run(spec: dict[str, Any], marker: str, cpu: int) -> dict[str, Any]:
    os.sched_setaffinity(0, {cpu})
    lib = _libc()
    slot = choose_slot()
    build(lib, spec, slot)
    problems = check(spec, slot)
    op = spec["op"]
    addr, size = ctypes.c_void_p(slot + op["offset"]), ctypes.c_size_t(op["size"])
    args: tuple[Any, ...]
    if op["kind"] == "munmap":
        fn, args = lib.munmap, (addr, size)
    else:
        fn, args = lib.madvise, (addr, size, ctypes.c_int(MADV_DONTNEED))
    name = spec["name"]
    begin, end = f"{BEGIN} {name}".encode(), f"{END} {name}".encode()
    fd = os.open(marker, os.O_WRONLY)
    sys.stdout.write(f"READY {os.getpid()}\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "GO":
        raise Refused("the recorder did not say GO")
    gc.disable()
    os.write(fd, begin)
    rc = fn(*args)
    os.write(fd, end)
    gc.enable()
    os.close(fd)
    if rc != 0:
        problems.append(f"{op['kind']} failed: {_err()}")
    return {"pid": os.getpid(), "slot": slot, "context": context(slot), "problems": problems}


def main(argv: list[str]) -> int:
    marker, cpu = argv[1], int(argv[2])
    spec = json.loads(sys.stdin.readline())
    try:
        result = run(spec, marker, cpu)
    except (Refused, OSError) as exc:
        result = {"pid": os.getpid(), "slot": None, "context": [], "problems": [str(exc)]}
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
