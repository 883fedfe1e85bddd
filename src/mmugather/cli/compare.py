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
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from mmugather.cli import table
from mmugather.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    STATUS_HELP,
    CliError,
    echo,
    no_duplicates,
    outputs,
)
from mmugather.cli.progress import Progress
from mmugather.core import strategies

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
    progress: Progress | None = None,
    plans: Mapping[str, tuple[int, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` on each arch under each strategy; the ``--json``
    document (see docs/strategies.md).  ``plans``: the PAGE_SIZE and the
    scenario read at it, per arch (``run.plan_runs()``)."""
    from mmugather.core.arch import registry
    from mmugather.core.run import run_arch

    reg = registry()
    baseline = strategy_names[0]
    runs: list[dict[str, Any]] = []
    for arch in arch_names:
        spec = reg.get(arch)
        by_strategy: dict[str, Any] = {}
        for name in strategy_names:
            hooks: dict[str, Any] = {}
            if progress is not None:
                done = len(runs) + len(by_strategy)
                progress.reset(f"compare {scenario.name}: {arch} / {name} "
                               f"({done + 1}/{len(arch_names) * len(strategy_names)})")
                hooks = {"progress": progress.advance, "progress_total": progress.set_total}
            size, fitted = plans[arch] if plans is not None else (page_size, scenario)
            run = run_arch(fitted, spec, page_size=size, check=check, strategy=name, **hooks)
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
    from mmugather.core.stats import ROWS

    return {
        "scenario": scenario.name,
        "baseline": baseline,
        "strategies": list(strategy_names),
        "arches": list(arch_names),
        "counters": [{"key": key, "label": label} for key, label in ROWS],
        "runs": runs,
    }


#: Under each arch's tables.
LEGEND = ("rows: docs/scenarios.md; ratio: count / the first strategy's (- where that "
          "is 0), docs/strategies.md")


def format_compare(doc: dict[str, Any]) -> str:
    """The text tables: per arch, one row per counter and one column per
    strategy, then the ratio of each strategy after the first to it (each
    table within 100 columns)."""
    names = doc["strategies"]
    baseline = doc["baseline"]
    labels = [c["label"] for c in doc["counters"]]
    keys = [c["key"] for c in doc["counters"]]
    out: list[str] = []
    for arch in doc["arches"]:
        runs = {r["strategy"]: r for r in doc["runs"] if r["arch"] == arch}
        if out:
            out.append("")
        out.append(f"scenario: {doc['scenario']}   arch: {arch}")
        out.extend(table.render(labels, [
            (n, [table.format_cell(k, runs[n]["stats"].get(k, 0)) for k in keys])
            for n in names
        ]))
        if len(names) > 1:
            out.append("")
            out.extend(table.render(labels, [
                (n, [table.format_ratio(runs[n]["ratios"].get(k)) for k in keys])
                for n in names[1:]
            ], title=f"ratio to {baseline}"))
        for n in names:
            if runs[n]["violations"]:
                counts = ", ".join(f"{k}: {v}" for k, v in sorted(runs[n]["violations"].items()))
                out.append(f"{arch} / {n}: invariant violations ({counts})")
        out.append(LEGEND)
    return "\n".join(out)


def write_plot(docs: dict[str, Any] | Sequence[dict[str, Any]], path: str | IO[bytes],
               fmt: str | None = None) -> None:
    """A bar chart (PNG, or ``fmt``): per scenario (one :func:`compare`
    document each) and arch, the cost counters of each strategy as a ratio to
    the first strategy's, labelled with the absolute counts (raises
    ImportError without matplotlib)."""
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
    fig.savefig(path, dpi=110, format=fmt)
    plt.close(fig)


def plot_format(path: str) -> str:
    """The image format ``--plot PATH`` asks for by its suffix (PNG when it
    has none); raises :class:`CliError` for one matplotlib cannot write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suffix = os.path.splitext(path)[1][1:].lower() or "png"
    supported = FigureCanvasAgg.get_supported_filetypes()
    if suffix not in supported:
        raise CliError(f"{path}: --plot writes {', '.join(sorted(supported))}, not {suffix!r}")
    return suffix


def cmd_compare(args: argparse.Namespace) -> int:
    from mmugather.cli.run import plan_runs
    from mmugather.core.arch import ArchError, registry
    from mmugather.core.scenario import ScenarioError, resolve

    names = args.strategy or strategies.names()
    try:
        for name in names:
            strategies.get(name)
        no_duplicates(names, "strategy")
        reg = registry()
        arches = args.arch or [os.environ.get("MMUGATHER_ARCH", "generic-smp")]
        no_duplicates(arches, "arch")
        for arch in arches:
            spec = reg.get(arch)
            if args.page_size and args.page_size not in spec.page_sizes:
                raise ArchError(f"arch {arch!r} does not support --page-size {args.page_size}")
        scenario = resolve(args.scenario, args.page_size or 4096, max_pages=args.max_pages)
        planned, skipped = plan_runs([reg.get(a) for a in arches], args, scenario)
        if skipped:
            # The arches to compare on are named: one the scenario does not
            # fit is the command's error.
            raise CliError(skipped[0][1])
    except (ArchError, ScenarioError, ValueError) as exc:
        raise CliError(str(exc)) from None
    plans = {spec.name: (size, fitted) for spec, size, fitted in planned}
    plot = None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'mmugather[plot]'") from None
        fmt = plot_format(args.plot)
        # Opened now: a path that cannot be written is refused before the runs.
        plot = outputs().open(args.plot)
    with Progress(f"compare {scenario.name}") as progress:
        doc = compare(scenario, arches, names, page_size=args.page_size,
                      check=not args.no_check, progress=progress, plans=plans)
    if plot is not None:
        write_plot(doc, plot, fmt)
        outputs().close_files()
    if args.json:
        echo(json.dumps(doc, indent=2))
    else:
        echo(format_compare(doc))
        if args.plot:
            echo(f"\nplot: {args.plot}")
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
            raise CliError(str(exc)) from None
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
            raise CliError(str(exc)) from None
        if strategy.no_replay:
            raise CliError(f"strategy {strategy.name!r} cannot run a replay: "
                           f"{strategy.no_replay}")
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
        "strategy (docs/strategies.md). Exit status: 0; 1 when an invariant was violated; "
        + STATUS_HELP,
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
        help="an arch to run on (repeatable, each arch once; default: $MMUGATHER_ARCH or "
        "generic-smp)",
    )
    cp.add_argument("--page-size", type=int, metavar="N", help="PAGE_SIZE (default 4096)")
    cp.add_argument("--no-check", action="store_true", help="turn the invariant checker off")
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.add_argument(
        "--plot", metavar="PATH",
        help="also write a bar chart of the cost counters, as ratios to the first "
        "strategy: PNG, or the format the suffix names (.svg, .pdf); a file, not a "
        "directory (needs matplotlib: the 'plot' extra)",
    )
    from mmugather.cli.run import add_max_pages

    add_max_pages(cp)
    cp.set_defaults(func=cmd_compare)
