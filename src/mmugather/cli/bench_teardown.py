"""``mmugather bench --teardown``: exit of a large address space through the
callers (issue: 1,048,576 mapped PTEs, 4 GiB, on generic-smp).

Each measurement runs in a fresh subprocess, so that its peak memory (the
child's ``ru_maxrss``) is its own.  Timed: the teardown operations only (the
exit), not building the address space, which is reported apart.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

#: PTE counts measured; 16M checks that the time grows linearly.
SIZES = (1 << 20, 1 << 22, 1 << 24)


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


def worker(ptes: int, check: bool, arch: str) -> dict[str, Any]:
    """One measurement, in this process."""
    from mmugather.core.arch import registry
    from mmugather.core.run import run_arch

    scenario = _scenario(ptes)
    t0 = time.perf_counter()
    result = run_arch(scenario, registry().get(arch), check=check, stats=check)
    total = time.perf_counter() - t0
    return {
        "ptes": result.mapped_ptes,
        "seconds": result.seconds,
        "build_seconds": total - result.seconds,
        "violations": sum(result.violation_counts.values()),
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(ptes: int, check: bool, arch: str, repeat: int) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-m", "mmugather.cli.bench_teardown", str(ptes),
             "1" if check else "0", arch],
            capture_output=True, text=True, check=True,
        )
        got = json.loads(out.stdout)
        if best is None or got["seconds"] < best["seconds"]:
            best = got
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
            row = measure(ptes, check, arch, repeat)
            row["check"] = check
            rows.append(row)
    return rows


def format_teardown(rows: list[dict[str, Any]], arch: str, repeat: int) -> str:
    lines = [
        f"Exit (`exit_mmap()`, fullmm) of an address space of order-0 dirty anon pages on "
        f"`{arch}`, through the callers; best of {repeat}; each row a fresh process. "
        f"Python {platform.python_version()}, {platform.machine()}.",
        "",
        "| mapped PTEs | checker | exit (s) | PTEs/s | build (s) | peak RSS (MiB) | violations |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['ptes']:,} | {'on' if r['check'] else 'off'} | {r['seconds']:.2f} | "
            f"{r['ptes'] / r['seconds']:,.0f} | {r['build_seconds']:.2f} | "
            f"{r['maxrss_mib']:.0f} | {r['violations']} |"
        )
    base = {r["check"]: r for r in rows if r["ptes"] == rows[0]["ptes"]}
    for r in rows:
        if r["ptes"] != rows[0]["ptes"]:
            ref = base[r["check"]]
            scale = r["ptes"] / ref["ptes"]
            lines.append("")
            lines.append(
                f"- {r['ptes']:,} PTEs, checker {'on' if r['check'] else 'off'}: "
                f"{scale:.0f}x the PTEs took {r['seconds'] / ref['seconds']:.1f}x the time."
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(worker(int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3])))
