"""The listing commands: ``arches``, ``mutants``, ``scenarios``."""

from __future__ import annotations

import argparse
from typing import Any

from mmugather.cli.common import EXIT_OK
from mmugather.cli.common import error as _error


def cmd_arches(args: argparse.Namespace) -> int:
    from mmugather.core.arch import ArchError, registry

    try:
        reg = registry()
    except ArchError as exc:
        return _error(str(exc))
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
        print(json.dumps([dict(zip(keys, r, strict=False)) for r in rows], indent=2))
        return EXIT_OK
    width = max(len(r[0]) for r in rows)
    for name, feats, sizes, origin, desc in rows:
        print(f"{name:<{width}}  {desc}")
        print(f"{'':<{width}}  features:   {feats}")
        print(f"{'':<{width}}  PAGE_SIZE:  {sizes}")
        print(f"{'':<{width}}  from:       {origin}")
    return EXIT_OK


def cmd_mutants(args: argparse.Namespace) -> int:
    from mmugather.core.check import RULES
    from mmugather.mutants import MUTANTS

    for m in MUTANTS.values():
        print(f"{m.name}\n    {m.description}\n    caught by: {m.rule} ({RULES[m.rule]})")
    return EXIT_OK


def cmd_scenarios(args: argparse.Namespace) -> int:
    from mmugather.core.scenario import builtin_names, load_builtin

    for name in builtin_names():
        sc = load_builtin(name)
        print(f"{name}  ({sc.mapped_pages():,} mapped pages, {len(sc.vmas)} VMAs)")
        print(f"    {sc.description}")
    return EXIT_OK




def add_listing_parsers(sub: Any) -> None:
    mt = sub.add_parser("mutants", help="list the mutants the checker must catch")
    mt.set_defaults(func=cmd_mutants)

    sc = sub.add_parser("scenarios", help="list the built-in scenarios")
    sc.set_defaults(func=cmd_scenarios)

    ap = sub.add_parser(
        "arches",
        help="list the arch configurations, their features and where they came from",
        description="List every arch configuration known: built-in ones and those "
        "installed through the 'mmugather.arches' entry-point group.",
    )
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.set_defaults(func=cmd_arches)
