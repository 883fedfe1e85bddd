"""``mmugather compare``: one scenario under several rmap-removal strategies.

Every counter of the run table (``core/stats.py``, counted from the event
stream) per strategy, and its ratio to the first strategy's; ``--json`` for
machines and ``--plot PATH`` for a PNG bar chart (matplotlib, the ``plot``
extra, imported only then).

:func:`add_compare_parser` also gives ``mmugather run`` and ``mmugather
replay`` their ``--strategy`` option, so that ``cli.py`` needs one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mmugather.core import strategies
from mmugather.core.stats import ROWS

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

#: The counters that measure what the kernel pays; the plot shows these.
COST_KEYS: tuple[str, ...] = (
    "tlb_flush_range",
    "tlb_flush_mm",
    "tlb_flush_bytes",
    "forced_flushes",
    "forced_full",
    "batch_pages",
    "rmap_calls",
    "mapcount_atomics",
    "rmap_walked",
    "free_calls",
    "folio_puts",
    "deferred_split",
    "deferred_split_spurious",
)


def _error(message: str) -> int:
    sys.stderr.write(f"mmugather: {message}\n")
    return EXIT_USAGE


def ratio(value: int, base: int) -> float | None:
    """``value / base``; ``None`` when the baseline is 0 (no ratio)."""
    if not base:
        return None
    return value / base


def compare(
    scenario: Any,
    arch_names: Sequence[str],
    strategy_names: Sequence[str],
    *,
    page_size: int | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Run ``scenario`` on each arch under each strategy; the ``--json``
    document (see docs/strategies.md)."""
    from mmugather.core.arch import registry
    from mmugather.core.run import run_arch

    reg = registry()
    baseline = strategy_names[0]
    runs: list[dict[str, Any]] = []
    for arch in arch_names:
        spec = reg.get(arch)
        by_strategy = {}
        for name in strategy_names:
            run = run_arch(scenario, spec, page_size=page_size, check=check, strategy=name)
            by_strategy[name] = run
        base = by_strategy[baseline].stats
        for name in strategy_names:
            run = by_strategy[name]
            runs.append(
                {
                    "arch": arch,
                    "strategy": name,
                    "stats": run.stats,
                    "ratios": {k: ratio(v, base.get(k, 0)) for k, v in run.stats.items()},
                    "violations": run.violation_counts,
                    "seconds": round(run.seconds, 4),
                }
            )
    return {
        "scenario": scenario.name,
        "baseline": baseline,
        "strategies": list(strategy_names),
        "arches": list(arch_names),
        "counters": [{"key": key, "label": label} for key, label in ROWS],
        "runs": runs,
    }


def format_compare(doc: dict[str, Any]) -> str:
    """The text tables: per arch, one row per counter, one column per
    strategy, then one ratio column per strategy after the first."""
    names = doc["strategies"]
    baseline = doc["baseline"]
    labels = [c["label"] for c in doc["counters"]]
    width = max(len(x) for x in labels)
    out: list[str] = []
    for arch in doc["arches"]:
        runs = {r["strategy"]: r for r in doc["runs"] if r["arch"] == arch}
        ratio_cols = [f"{n}/{baseline}" for n in names[1:]]
        colw = [max(len(n), 12) for n in names]
        ratw = [max(len(c), 8) for c in ratio_cols]
        if out:
            out.append("")
        out.append(f"scenario: {doc['scenario']}   arch: {arch}")
        out.append(
            f"{'':<{width}}  "
            + "  ".join(f"{n:>{w}}" for n, w in zip(names, colw, strict=True))
            + "".join(f"  {c:>{w}}" for c, w in zip(ratio_cols, ratw, strict=True))
        )
        for counter in doc["counters"]:
            key = counter["key"]
            cells = [
                f"{runs[n]['stats'].get(key, 0):>{w},}" for n, w in zip(names, colw, strict=True)
            ]
            rcells = []
            for n, w in zip(names[1:], ratw, strict=True):
                r = runs[n]["ratios"].get(key)
                rcells.append(f"{'-' if r is None else f'{r:.2f}':>{w}}")
            out.append(
                f"{counter['label']:<{width}}  " + "  ".join(cells)
                + "".join(f"  {c}" for c in rcells)
            )
        for n in names:
            if runs[n]["violations"]:
                counts = ", ".join(f"{k}: {v}" for k, v in sorted(runs[n]["violations"].items()))
                out.append(f"{arch} / {n}: invariant violations ({counts})")
    return "\n".join(out)


def write_plot(docs: dict[str, Any] | Sequence[dict[str, Any]], path: str) -> None:
    """A PNG bar chart: per scenario (one :func:`compare` document each) and
    arch, the cost counters of each strategy as a ratio to the first
    strategy's, labelled with the absolute counts (raises ImportError
    without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [docs] if isinstance(docs, dict) else list(docs)
    panels = [(doc, arch) for doc in docs for arch in doc["arches"]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.2 * len(panels)), squeeze=False)
    for ax, (doc, arch) in zip(axes[:, 0], panels, strict=True):
        names = doc["strategies"]
        labels = {c["key"]: c["label"] for c in doc["counters"]}
        runs = {r["strategy"]: r for r in doc["runs"] if r["arch"] == arch}
        base = runs[doc["baseline"]]["stats"]
        keys = [
            k for k in COST_KEYS
            if base.get(k, 0) or any(runs[n]["stats"].get(k, 0) for n in names)
        ]
        width = 0.8 / max(len(names), 1)
        top = 1.0
        for j, name in enumerate(names):
            values = []
            for k in keys:
                b = base.get(k, 0)
                v = runs[name]["stats"].get(k, 0)
                # No baseline: 0 stays 0, anything else is drawn at 1, hatched.
                values.append(v / b if b else (1.0 if v else 0.0))
            top = max(top, *values)
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(keys))]
            bars = ax.bar(xs, values, width, label=name)
            for bar, k in zip(bars, keys, strict=True):
                v = runs[name]["stats"].get(k, 0)
                if v and not base.get(k, 0):
                    bar.set_hatch("//")
                ax.annotate(
                    f"{v:,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=6, rotation=90,
                )
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([labels[k] for k in keys], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"ratio to {doc['baseline']}")
        ax.set_title(
            f"{doc['scenario']} on {arch}: bar labels are the counts; hatched where "
            f"{doc['baseline']} counts 0",
            fontsize=10,
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_compare(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, registry
    from mmugather.core.scenario import ScenarioError, resolve

    names = args.strategy or strategies.names()
    try:
        for name in names:
            strategies.get(name)
        if len(set(names)) != len(names):
            raise ValueError("a strategy is named twice")
        reg = registry()
        arches = args.arch or [os.environ.get("MMUGATHER_ARCH", "generic-smp")]
        for arch in arches:
            spec = reg.get(arch)
            if args.page_size and args.page_size not in spec.page_sizes:
                raise ArchError(f"arch {arch!r} does not support --page-size {args.page_size}")
        scenario = resolve(args.scenario, args.page_size or 4096)
    except (ArchError, ScenarioError, ValueError) as exc:
        return _error(str(exc))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _error("--plot needs matplotlib: pip install 'mmugather[plot]'")
    doc = compare(scenario, arches, names, page_size=args.page_size, check=not args.no_check)
    if args.plot:
        try:
            write_plot(doc, args.plot)
        except OSError as exc:
            return _error(f"{args.plot}: cannot write: {exc.strerror or exc}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_compare(doc))
        if args.plot:
            print(f"\nplot: {args.plot}")
    failed = any(r["violations"] for r in doc["runs"])
    return EXIT_FAIL if failed else EXIT_OK


# ---------------------------------------------------------------------------
# --strategy for run and replay
# ---------------------------------------------------------------------------


def _strategy_help() -> str:
    return (
        "rmap-removal strategy: " + ", ".join(strategies.names())
        + f" (default {strategies.DEFAULT_STRATEGY}); see docs/strategies.md"
    )


def _run_with_strategy(
    func: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            strategy = strategies.get(args.strategy)
            if args.mutant:
                from mmugather import mutants

                mutants.check_strategy(mutants.get(args.mutant), strategy)
        except ValueError as exc:
            return _error(str(exc))
        if strategy.name != strategies.DEFAULT_STRATEGY and not args.json:
            print(f"strategy: {strategy.name}")
        with strategies.selected(strategy.name):
            return func(args)

    return run


def _replay_with_strategy(
    func: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def replay(args: argparse.Namespace) -> int:
        try:
            strategy = strategies.get(args.strategy)
        except ValueError as exc:
            return _error(str(exc))
        if strategy.no_replay:
            return _error(f"strategy {strategy.name!r} cannot run a replay: {strategy.no_replay}")
        with strategies.selected(strategy.name):
            return func(args)

    return replay


def _add_strategy_option(
    parser: argparse.ArgumentParser,
    wrap: Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]],
) -> None:
    parser.add_argument(
        "--strategy", metavar="NAME", default=strategies.DEFAULT_STRATEGY, help=_strategy_help()
    )
    func = parser.get_default("func")
    if func is not None:
        parser.set_defaults(func=wrap(func))


def add_compare_parser(subparsers: Any) -> None:
    """Add ``compare``, and ``--strategy`` to ``run`` and ``replay`` (when
    they are already there)."""
    choices = getattr(subparsers, "choices", {})
    if "run" in choices:
        _add_strategy_option(choices["run"], _run_with_strategy)
    if "replay" in choices:
        _add_strategy_option(choices["replay"], _replay_with_strategy)
    cp = subparsers.add_parser(
        "compare",
        help="run a scenario under several rmap-removal strategies and compare their costs",
        description="Run a scenario (a built-in name or a TOML file) under each "
        "--strategy (default: all of them) on each --arch, with the invariant checker "
        "watching, and print every counter per strategy with its ratio to the first "
        "strategy. Exit status: 0; 1 when an invariant was violated; 2 when the scenario "
        "or the options were rejected.",
    )
    cp.add_argument(
        "scenario", nargs="?", default="default", metavar="SCENARIO",
        help="a built-in scenario name or a TOML file (default: the built-in 'default')",
    )
    cp.add_argument(
        "--strategy", action="append", metavar="NAME",
        help="a strategy to compare (repeatable, the first is the baseline of the ratios; "
        "default: " + ", ".join(strategies.names()) + ")",
    )
    cp.add_argument(
        "--arch", action="append", metavar="NAME",
        help="an arch to run on (repeatable; default: $MMUGATHER_ARCH or generic-smp)",
    )
    cp.add_argument("--page-size", type=int, metavar="N", help="PAGE_SIZE (default 4096)")
    cp.add_argument("--no-check", action="store_true", help="turn the invariant checker off")
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.add_argument(
        "--plot", metavar="PATH",
        help="also write a PNG bar chart of the cost counters, as ratios to the first "
        "strategy (needs matplotlib: the 'plot' extra)",
    )
    cp.set_defaults(func=cmd_compare)
