"""``mmugather explore --corpus [BUG]``: the historical-bug corpus
(``mmugather.corpus``) run and printed as a table; with BUG, that entry's
runs and the timeline of each counterexample."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from mmugather.cli.common import EXIT_FAIL, EXIT_OK
from mmugather.cli.common import error as _error

#: (header, width, align) of a run's columns, under its bug's line (the bug,
#: its commit and title)
COLUMNS = (("  arch", 17, "<"), ("run", 32, "<"), ("found?", 31, "<"), ("states", 6, ">"),
           ("depth", 7, ">"), ("CPUs", 4, ">"), ("seconds", 7, ">"))
WIDTH = sum(w for _h, w, _a in COLUMNS) + 2 * (len(COLUMNS) - 1)


def _row(cells: Sequence[str]) -> str:
    """One run's line."""
    return "  ".join(f"{c:{align}{w}}" for c, (_h, w, align) in zip(cells, COLUMNS,
                                                                     strict=True)).rstrip()


def _bug(entry: Any) -> list[str]:
    """The bug's line: name, commit and title (wrapped under the title)."""
    head = f"{entry.name}  {entry.commit or '(no commit)'}  "
    return textwrap.wrap(entry.title, WIDTH, initial_indent=head,
                         subsequent_indent=" " * len(head))


def _found(r: Any) -> str:
    ce = r.result.counterexample
    text = f"yes: {ce.prop}" if ce is not None else "no"
    expected = f"yes: {r.entry.prop}" if r.expect else "no"
    return text if r.ok else f"{text} (NOT AS EXPECTED: {expected})"


def run_corpus(which: str | None, show: bool) -> int:
    from mmugather import corpus
    from mmugather.core.explore import trace

    try:
        entries = tuple(corpus.lookup(which)) if which else corpus.CORPUS
    except ValueError as exc:
        return _error(str(exc))
    intro = (f"historical-bug corpus: {len(entries)} "
             f"{'entry' if len(entries) == 1 else 'entries'}, each run with the bug and as "
             "v6.5 + the seed patch has it (a race v6.5 has: as v6.5 has it, then with its "
             "fix); exhaustive search to the scenario's bound (depth: deepest/bound), one "
             "process")
    print("\n".join(textwrap.wrap(intro, WIDTH)) + "\n")
    print(_row([h for h, _w, _a in COLUMNS]))
    print("=" * WIDTH)
    bad = 0
    runs = 0
    last = None
    timelines: list[str] = []
    for r in corpus.run(entries):
        runs += 1
        bad += not r.ok
        if r.entry is not last:
            if last is not None:
                print()
            print("\n".join(_bug(r.entry)))
        last = r.entry
        c = r.result.counts
        print(_row([f"  {r.arch}", r.label, _found(r), f"{c.states:,}",
                    f"{c.depth}/{r.engine.cfg.scenario.depth}", str(r.cpus),
                    f"{r.seconds:.2f}"]))
        ce = r.result.counterexample
        if show and ce is not None:
            timelines.append(f"{r.entry.name} ({r.entry.commit or 'no commit'}) on {r.arch}, "
                             f"{r.label}: mmugather explore {r.entry.scenario} --arch {r.arch}"
                             + (f" --mutant {r.entry.mutant}" if "mutant" in r.label else "")
                             + f"\n{ce.prop}: a counterexample in {len(ce.steps)} steps\n\n"
                             + trace.timeline(r.engine, ce))
        r.engine.close()
    for text in timelines:
        print("\n" + text)
    print()
    if bad:
        print(f"{bad} of {runs} runs not as expected")
        return EXIT_FAIL
    print(f"all {runs} runs as expected: each bug found where it applies, v6.5 + the seed "
          "finds nothing but the race it really has, and its fix removes that")
    return EXIT_OK
