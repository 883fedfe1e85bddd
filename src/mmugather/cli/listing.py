"""The listing commands: ``arches``, ``mutants``, ``scenarios``."""

from __future__ import annotations

import argparse
from typing import Any

from mmugather.cli.common import EXIT_OK, CliError, echo


def cmd_arches(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, registry

    try:
        reg = registry()
    except ArchError as exc:
        raise CliError(str(exc)) from None
    rows = []
    for spec in reg:
        rows.append(
            (
                spec.name,
                ", ".join(spec.resolved_features()) or "-",
                ", ".join(str(s) for s in spec.page_sizes),
                spec.origin,
                spec.description,
            )
        )
    if args.json:
        import json

        keys = ("name", "features", "page_sizes", "origin", "description")
        echo(json.dumps([dict(zip(keys, r, strict=False)) for r in rows], indent=2))
        return EXIT_OK
    width = max(len(r[0]) for r in rows)
    for name, feats, sizes, origin, desc in rows:
        echo(f"{name:<{width}}  {desc}")
        echo(f"{'':<{width}}  features:   {feats}")
        echo(f"{'':<{width}}  PAGE_SIZE:  {sizes}")
        echo(f"{'':<{width}}  from:       {origin}")
    return EXIT_OK


def cmd_mutants(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, registry
    from mmugather.core.check import RULES
    from mmugather.mutants import MUTANTS

    try:
        specs = list(registry())
    except ArchError as exc:
        raise CliError(str(exc)) from None
    rows = [m.as_json(specs) for m in MUTANTS.values()]
    if args.json:
        import json

        echo(json.dumps(rows, indent=2))
        return EXIT_OK
    if args.markdown:
        echo(markdown_table(rows))
        return EXIT_OK
    for r in rows:
        caught = []
        if r["rule"]:
            caught.append(f"    caught by: {r['rule']} ({RULES[r['rule']]}), "
                          f"mmugather run {r['scenario']}")
        if r["explore"]:
            caught.append(f"    explorer: {r['property']}, mmugather explore {r['explore']}")
        echo(f"{r['name']}\n    {r['description']}\n" + "\n".join(caught) + "\n"
              f"    breaks: {r['breaks']}\n"
              f"    applies: {r['where']}: {', '.join(r['arches']) or 'no arch'}\n"
              f"    fixed by: {r['fixed_by'] or 'no single commit'}\n"
              f"    overrides: {r['overrides']}")
    return EXIT_OK


#: The columns of ``mmugather mutants --markdown``: heading, ``--json`` key.
MARKDOWN_COLUMNS = (
    ("mutant", "name"), ("what it breaks", "breaks"), ("overrides", "overrides"),
    ("caught by", "rule"), ("applies to", "arches"), ("scenario", "scenario"),
    ("fixed by", "fixed_by"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The mutants as the Markdown table of docs/checker.md, from the rows
    ``mmugather mutants --json`` prints."""

    def cell(key: str, value: Any) -> str:
        if key == "arches":
            text = ", ".join(value) or "no arch"
        elif key == "fixed_by":
            text = value or "no single commit"
        else:
            text = str(value)
        if key in ("name", "rule", "scenario"):
            text = f"`{text}`"
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(head for head, _ in MARKDOWN_COLUMNS) + " |",
             "| " + " | ".join("---" for _ in MARKDOWN_COLUMNS) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(cell(key, r[key]) for _, key in MARKDOWN_COLUMNS) + " |")
    return "\n".join(lines)


def cmd_scenarios(args: argparse.Namespace) -> int:
    from mmugather.core.scenario import builtin_names, load_builtin

    for name in builtin_names():
        sc = load_builtin(name)
        echo(f"{name}  ({sc.mapped_pages():,} mapped pages, {len(sc.vmas)} VMAs)")
        echo(f"    {sc.description}")
    return EXIT_OK


def add_listing_parsers(sub: Any) -> None:
    mt = sub.add_parser(
        "mutants",
        help="list the mutants the checker must catch",
        description="List the mutants: deliberately broken orderings of the teardown "
        "(a page freed before the TLB flush, an rmap removed after the lock is dropped...), "
        "each with the invariant rule that must catch it (docs/checker.md). Run one with "
        "'mmugather run --mutant NAME'.",
    )
    fmt = mt.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--markdown", action="store_true",
                     help="the table of docs/checker.md (regenerate it with this, with no "
                     "third-party arch installed)")
    mt.set_defaults(func=cmd_mutants)

    sc = sub.add_parser(
        "scenarios",
        help="list the built-in scenarios",
        description="List the built-in scenarios: each name, its mapped pages and VMAs, and "
        "what it shows. Give a name (or a TOML file of your own, docs/scenarios.md) to "
        "'mmugather run' or 'mmugather compare'.",
    )
    sc.set_defaults(func=cmd_scenarios)

    ap = sub.add_parser(
        "arches",
        help="list the arch configurations, their features and where they came from",
        description="List every arch configuration known: built-in ones and those "
        "installed through the 'mmugather.arches' entry-point group.",
    )
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.set_defaults(func=cmd_arches)
