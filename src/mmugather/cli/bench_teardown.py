"""``mmugather bench --teardown``: exit of a large address space through the
callers (the issue: 1,048,576 mapped PTEs, 4 GiB, on generic-smp), each
figure next to references measured in the same process.

Each measurement runs in a fresh subprocess, pinned to one CPU where the
system allows, so that its peak memory (the child's ``ru_maxrss``, read
right after the teardown) is its own.  Timed, in process CPU time (the
wall-clock time beside it): the teardown operations only (the exit), not
building the address space, which is reported apart.  In the same process,
after the teardown:

* a bare Python loop doing the same per-PTE bookkeeping over arrays of the
  same shape (:func:`bare_python`): read each entry, clear it, look up its
  folio, queue the page; per table the rmap removals; per full queue the
  reference drops and frees.  No gather, no hooks, no events;
* the same bookkeeping as a bare numpy loop, a table at a time
  (:func:`bare_numpy`);
* at the first size, the same teardown through the per-PTE reference paths
  (``run_arch(..., fast=False)``).

Each row is the best of ``repeat`` processes (each figure its own best).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

#: PTE counts measured; 16M checks that the time grows linearly.
SIZES = (1 << 20, 1 << 22, 1 << 24)

#: The issue's targets at 1,048,576 PTEs (PTEs per CPU second), the largest
#: peak memory allowed at 16M, and how far from linear 16M may be (its time
#: per PTE over the first size's).
TARGET_OFF = 4_000_000
TARGET_ON = 2_000_000
PEAK_LIMIT_MIB = 1024
LINEAR_SLACK = 1.25


def _scenario(ptes: int) -> Any:
    from mmugather.core.scenario import parse

    size = ptes * 4096
    start = 1 << 32
    return parse(
        {
            "name": f"exit-{ptes}",
            "vma": [{"start": start, "end": start + size, "kind": "anon",
                     "populate": [{"pages": ptes, "dirty": True}]}],
            "op": [{"kind": "exit"}],
        },
        f"<exit of {ptes} PTEs>",
    )


# ----------------------------------------------------------------------
# The references: the same bookkeeping, bare
# ----------------------------------------------------------------------


def _bare_space(ptes: int) -> tuple[list[array], Any]:  # type: ignore[type-arg]
    """PTE tables and a page store shaped as the scenario builds them:
    ``ptes`` dirty anon order-0 pages, 512 to a table."""
    from mmugather.core.aspace import F_ANON, PTE_DIRTY, PTE_PRESENT, PTE_YOUNG, PageStore

    store = PageStore()
    first = store.new_small_folios(ptes, F_ANON, 1, 1)
    bits = PTE_PRESENT | PTE_DIRTY | PTE_YOUNG
    tables = []
    for base in range(0, ptes, 512):
        n = min(512, ptes - base)
        entries = array("q", [(first + base + k) << 8 | bits for k in range(n)])
        entries.extend(array("q", bytes(8 * (512 - n))))
        tables.append(entries)
    return tables, store


def bare_python(tables: list[array], store: Any, capacity: int) -> int:  # type: ignore[type-arg]
    """The per-PTE bookkeeping of an exit as a plain Python loop; returns
    the folios freed."""
    from mmugather.core.aspace import F_ANON, F_FREED, PFN_BASE, PTE_DIRTY, PTE_PRESENT

    head = store.head
    flags = store.flags
    mapcount = store.mapcount
    refcount = store.refcount
    queue: list[int] = []
    freed: list[int] = []

    def release() -> None:
        for pfn in queue:
            h = head[pfn - PFN_BASE]
            ref = refcount[h] - 1
            refcount[h] = ref
            if not ref:
                flags[h] |= F_FREED
                freed.append(pfn)
        queue.clear()

    for entries in tables:
        start = len(queue)
        for i in range(len(entries)):
            ent = entries[i]
            if ent & PTE_PRESENT:
                entries[i] = 0
                pfn = ent >> 8
                if flags[head[pfn - PFN_BASE]] & F_ANON or not ent & PTE_DIRTY:
                    queue.append(pfn)
        for pfn in queue[start:]:  # the table's rmaps, under its lock
            mapcount[pfn - PFN_BASE] -= 1
        if len(queue) >= capacity:
            release()
    release()
    return len(freed)


def bare_numpy(tables: list[array], store: Any, capacity: int) -> int:  # type: ignore[type-arg]
    """The same bookkeeping with numpy, a table at a time."""
    import numpy as np

    from mmugather.core.aspace import F_FREED, PFN_BASE

    mapcount = np.frombuffer(store.mapcount, np.int32)
    refcount = np.frombuffer(store.refcount, np.int32)
    flags = np.frombuffer(store.flags, np.int32)
    queue: list[Any] = []
    queued = 0
    freed = 0

    def release() -> int:
        idx = np.concatenate(queue)
        refcount[idx] -= 1
        gone = idx[refcount[idx] == 0]
        flags[gone] |= F_FREED
        queue.clear()
        return len(gone)

    for entries in tables:
        ents = np.frombuffer(entries, np.int64)
        idx = (ents[ents.nonzero()[0]] >> 8) - PFN_BASE
        ents[:] = 0
        mapcount[idx] -= 1
        queue.append(idx)
        queued += len(idx)
        if queued >= capacity:
            freed += release()
            queued = 0
    if queue:
        freed += release()
    return freed


def _time_bare(loop: Callable[[list[array], Any, int], int], ptes: int,  # type: ignore[type-arg]
               capacity: int) -> float:
    """CPU seconds of one bare loop over a fresh address space of ``ptes``."""
    tables, store = _bare_space(ptes)
    start = time.process_time()
    loop(tables, store, capacity)
    return time.process_time() - start


# ----------------------------------------------------------------------
# One measurement, in a fresh process
# ----------------------------------------------------------------------


def _pin_one_cpu() -> str:
    """Run on one CPU (the first this process may use), if the system lets it."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return "not pinned"
    return f"CPU {cpu}"


def worker(ptes: int, check: bool, arch: str, reference: bool = False) -> dict[str, Any]:
    """One measurement, in this process: the teardown, then the bare loops
    and (``reference``) the per-PTE paths."""
    import gc

    from mmugather.core.arch import registry
    from mmugather.core.run import run_arch

    spec = registry().get(arch)
    t0 = time.perf_counter()
    result = run_arch(_scenario(ptes), spec, check=check, stats=check)
    total = time.perf_counter() - t0
    out: dict[str, Any] = {
        "ptes": result.mapped_ptes,
        "seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "build_seconds": total - result.seconds,
        "violations": sum(result.violation_counts.values()),
        # the high-water mark so far: the teardown's (the references come after)
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    del result
    gc.collect()
    capacity = spec.geometry(4096).queue_capacity
    out["bare_python"] = _time_bare(bare_python, ptes, capacity)
    out["bare_numpy"] = _time_bare(bare_numpy, ptes, capacity)
    if reference:
        gc.collect()
        ref = run_arch(_scenario(ptes), spec, check=check, stats=check, fast=False)
        out["reference"] = ref.cpu_seconds
    return out


# ----------------------------------------------------------------------
# The command's side
# ----------------------------------------------------------------------

#: figures of a row kept as the best (least) of its processes
_BEST = ("cpu_seconds", "seconds", "build_seconds", "bare_python", "bare_numpy", "reference")


def measure(ptes: int, check: bool, arch: str, repeat: int, reference: bool) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-m", "mmugather.cli.bench_teardown", str(ptes),
             "1" if check else "0", arch, "1" if reference else "0"],
            capture_output=True, text=True, check=True,
        )
        got = json.loads(out.stdout)
        if best is None:
            best = got
            continue
        for key in _BEST:
            if key in got:
                best[key] = min(best[key], got[key])
        best["maxrss_mib"] = max(best["maxrss_mib"], got["maxrss_mib"])
    assert best is not None
    return best


def run_teardown_bench(
    sizes: tuple[int, ...] = SIZES, arch: str = "generic-smp", repeat: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    n = 0
    for ptes in sizes:
        for check in (False, True):
            n += 1
            if progress is not None:
                progress(f"exit of {ptes:,} PTEs, checker {'on' if check else 'off'} "
                         f"({n}/{2 * len(sizes)}, best of {repeat}, each in a fresh process)")
            row = measure(ptes, check, arch, repeat, reference=ptes == sizes[0])
            row["check"] = check
            rows.append(row)
    return rows


def _rate(ptes: int, seconds: float) -> str:
    return f"{ptes / seconds / 1e6:.2f} M" if seconds > 0 else "-"


def _machine() -> str:
    from importlib.metadata import version

    from mmugather.cli.bench_replay import cpu_model

    return (f"{platform.python_implementation()} {platform.python_version()}, numpy "
            f"{version('numpy')}, on {platform.platform()}; CPU: {cpu_model()} "
            f"({os.cpu_count()} logical CPUs; each measurement pinned to one)")


def format_teardown(rows: list[dict[str, Any]], arch: str, repeat: int) -> str:
    lines = [
        f"Exit (`exit_mmap()`, fullmm) of an address space of order-0 dirty anon pages on "
        f"`{arch}`, through the callers; each row the best of {repeat} fresh processes, "
        "each figure its own best. Times are process CPU seconds (the exit's wall-clock "
        "time beside it); rates are PTEs per CPU second. The references ran in the same "
        "processes, after the exit: a bare Python loop and a bare numpy loop doing the "
        "same per-PTE bookkeeping, and (at the first size) the same exit through the "
        "per-PTE reference paths (`run_arch(..., fast=False)`).",
        "",
        "| mapped PTEs | checker | exit CPU (s) | PTEs/s | wall (s) | bare Python loop | "
        "bare numpy loop | per-PTE paths | build (s) | peak RSS (MiB) | violations |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ptes = r["ptes"]
        ref = r.get("reference")
        ref_text = (f"{ref:.2f} s ({_rate(ptes, ref)}/s)" if ref is not None else "-")
        lines.append(
            f"| {ptes:,} | {'on' if r['check'] else 'off'} | {r['cpu_seconds']:.3f} | "
            f"{_rate(ptes, r['cpu_seconds'])} | {r['seconds']:.3f} | "
            f"{r['bare_python']:.3f} s ({_rate(ptes, r['bare_python'])}/s) | "
            f"{r['bare_numpy']:.3f} s ({_rate(ptes, r['bare_numpy'])}/s) | {ref_text} | "
            f"{r['build_seconds']:.2f} | {r['maxrss_mib']:.0f} | {r['violations']} |"
        )
    lines += ["", "| target | figure | met |", "| --- | --- | --- |"]
    first = rows[0]["ptes"]
    base = {r["check"]: r for r in rows if r["ptes"] == first}
    for check, target in ((False, TARGET_OFF), (True, TARGET_ON)):
        if check not in base:
            continue
        b = base[check]
        rate = b["ptes"] / b["cpu_seconds"]
        lines.append(
            f"| exit of {b['ptes']:,} PTEs, checker {'on' if check else 'off'}: at least "
            f"{target / 1e6:.0f} M PTEs/s | {rate / 1e6:.2f} M PTEs/s "
            f"({b['bare_python'] / b['cpu_seconds']:.1f}x the bare Python loop's speed) | "
            f"{'yes' if rate >= target else 'no'} |")
    for r in rows:
        if r["ptes"] == first:
            continue
        ref = base[r["check"]]
        growth = (r["cpu_seconds"] / r["ptes"]) / (ref["cpu_seconds"] / ref["ptes"])
        lines.append(
            f"| linear: {r['ptes']:,} PTEs, checker {'on' if r['check'] else 'off'} | "
            f"{r['ptes'] / ref['ptes']:.0f}x the PTEs took "
            f"{r['cpu_seconds'] / ref['cpu_seconds']:.1f}x the time ({growth:.2f}x per PTE) | "
            f"{'yes' if growth <= LINEAR_SLACK else 'no'} |")
    last = max(r["ptes"] for r in rows)
    for r in rows:
        if r["ptes"] == last:
            lines.append(
                f"| peak memory at {last:,} PTEs, checker {'on' if r['check'] else 'off'}: "
                f"under {PEAK_LIMIT_MIB} MiB | {r['maxrss_mib']:.0f} MiB | "
                f"{'yes' if r['maxrss_mib'] < PEAK_LIMIT_MIB else 'no'} |")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", f"Measured {date}: {_machine()}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    where = _pin_one_cpu()
    got = worker(int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3],
                 len(sys.argv) > 4 and sys.argv[4] == "1")
    got["pinned"] = where
    print(json.dumps(got))
