"""The recorded layouts on the ``x86-64`` model, and the verdicts.

Each layout becomes a scenario (its VMAs, the process's neighbouring VMAs
as empty ones, the one operation) run on ``x86-64`` with one CPU: the
workload is single-threaded and pinned, so ``mm_cpumask()`` is that CPU
alone.  The model's flushes on that CPU are read the way the tracepoint
reports them: an INVLPG loop as ``(end - start) >> stride_shift`` strides
(``flush_tlb_func()``'s count), a CR3 reload as -1; a lazy CPU's switch to
``init_mm`` traces nothing.  The host's are its reason-3 events, and any
reason-4 event (an IPI sent: the mm was not on one CPU alone) is a
difference the model cannot have.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from mmugather.arches import x86_64
from mmugather.core.arch import registry
from mmugather.core.events import Collector
from mmugather.core.hw.cpus import ZAPPING_CPU, CpuConfig
from mmugather.core.run import run_arch
from mmugather.core.scenario import Scenario, ScenarioError, parse
from mmugather.hostcheck.tracer import FORMAT, OWN_REASONS, REMOTE_SEND_IPI, VERSION

FULL = -1
#: one CPU, running the workload's only thread
ONE_CPU = CpuConfig(nr_cpus=1, threads=(ZAPPING_CPU,))


class RecordingError(Exception):
    """A recording ``--from`` cannot use: ``file: key: reason``."""


@attrs.frozen
class Verdict:
    name: str
    why: str
    #: the host's own flushes, (reason, pages), as every run gave them, or
    #: the most common sequence when runs differ
    host: tuple[tuple[int, int], ...]
    #: the model's, as the tracepoint would report them (reason 3)
    model: tuple[tuple[int, int], ...]
    #: runs that gave ``host`` / runs
    agreeing_runs: int
    runs: int
    #: why the comparison could not be made (the layout was not as planned)
    problems: tuple[str, ...] = ()
    #: violations the model's checker reported (there should be none)
    violations: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool:
        return (not self.problems and not self.violations and self.agreeing_runs == self.runs
                and self.host == self.model)


def scenario_of(name: str, lay: dict[str, Any]) -> Scenario:
    """The layout as a scenario: the workload's VMAs (4K pages dirty, a THP
    as one PMD-mapped folio), its neighbours as empty VMAs, the operation."""
    vmas = []
    for v in lay["vmas"]:
        populate = []
        for p in v["populate"]:
            entry: dict[str, Any] = {"offset": p["offset"], "pages": p["pages"], "dirty": True}
            if p.get("thp"):
                entry.update(folio_order="pmd", pmd_mapped=True)
            populate.append(entry)
        vmas.append({"name": v["name"], "start": v["start"], "end": v["end"],
                     "populate": populate})
    for c in lay.get("context", []):
        vmas.append({"name": c["name"], "start": c["start"], "end": c["end"]})
    op = lay["op"]
    data = {"name": name, "vma": vmas,
            "op": [{"kind": op["kind"], "start": op["start"], "end": op["end"]}]}
    return parse(data, f"{name} (host layout)")


def model_flushes(name: str, lay: dict[str, Any]) -> tuple[list[tuple[int, int]], list[str]]:
    """The model's flushes on the workload's CPU, and its checker's reports."""
    events = Collector()
    run = run_arch(scenario_of(name, lay), registry().get("x86-64"), cpus=ONE_CPU,
                   extra_observers=[events])
    out = []
    for ev in events.named("tlb_invalidate"):
        if ZAPPING_CPU not in ev["cpus"]:
            continue
        if ev["op"] == x86_64.OP_INVLPG:
            out.append((3, (ev["end"] - ev["start"]) // ev["stride"]))
        elif ev["op"] == x86_64.OP_CR3:
            out.append((3, FULL))
    return out, [f"[{v.rule}] {v.message}" for v in run.violations]


def host_flushes(run: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    return tuple((reason, pages) for reason, pages, _cpu in run["flushes"]
                 if reason in OWN_REASONS)


def judge(workload: dict[str, Any]) -> Verdict:
    name = workload["name"]
    runs = workload["runs"]
    problems = sorted({p for r in runs for p in r["problems"]})
    usable = [host_flushes(r) for r in runs if not r["problems"]]
    host, agreeing = Counter(usable).most_common(1)[0] if usable else ((), 0)
    model: list[tuple[int, int]] = []
    violations: list[str] = []
    if workload["layout"] is not None:
        model, violations = model_flushes(name, workload["layout"])
    elif not problems:
        problems = ["no run set up its layout"]
    return Verdict(name=name, why=workload.get("why", ""), host=host, model=tuple(model),
                   agreeing_runs=agreeing, runs=len(runs), problems=tuple(problems),
                   violations=tuple(violations[:3]))


def pages_text(seq: tuple[tuple[int, int], ...]) -> str:
    """``16``, ``full``, ``ipi:512 full``: one item per flush."""
    if not seq:
        return "none"
    items = []
    for reason, pages in seq:
        text = "full" if pages == FULL else str(pages)
        items.append(f"ipi:{text}" if reason == REMOTE_SEND_IPI else text)
    return " ".join(items)


# ----------------------------------------------------------------------
# Reading a recording back
# ----------------------------------------------------------------------


def _need(path: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordingError(f"{path}: {key}: expected {names}, got {type(value).__name__}")
    return value


def check_recording(path: str, data: Any) -> dict[str, Any]:
    """A recording as :func:`tracer.record` writes it, or RecordingError."""
    rec: dict[str, Any] = _need(path, "", data, dict)
    if rec.get("format") != FORMAT:
        raise RecordingError(f"{path}: format: not a host-check recording (expected "
                             f"{FORMAT!r})")
    if rec.get("version") != VERSION:
        raise RecordingError(f"{path}: version: {rec.get('version')!r} is not {VERSION}")
    host = _need(path, "host", rec.get("host"), dict)
    _need(path, "host.kernel", host.get("kernel"), str)
    for n, w in enumerate(_need(path, "workloads", rec.get("workloads"), list)):
        key = f"workloads[{n}]"
        _need(path, key, w, dict)
        _need(path, f"{key}.name", w.get("name"), str)
        if w.get("layout") is not None:
            lay = _need(path, f"{key}.layout", w["layout"], dict)
            try:
                scenario_of(w["name"], lay)
            except (KeyError, TypeError) as exc:
                raise RecordingError(f"{path}: {key}.layout: missing or malformed {exc}") from None
            except ScenarioError as exc:
                raise RecordingError(f"{path}: {key}.layout: {exc.key}: {exc.reason}") from None
        runs = _need(path, f"{key}.runs", w.get("runs"), list)
        if not runs:
            raise RecordingError(f"{path}: {key}.runs: no runs")
        for k, r in enumerate(runs):
            rkey = f"{key}.runs[{k}]"
            _need(path, rkey, r, dict)
            for p in _need(path, f"{rkey}.problems", r.get("problems"), list):
                _need(path, f"{rkey}.problems", p, str)
            for f in _need(path, f"{rkey}.flushes", r.get("flushes"), list):
                if not (isinstance(f, list) and len(f) == 3
                        and all(isinstance(x, int) and not isinstance(x, bool) for x in f)):
                    raise RecordingError(f"{path}: {rkey}.flushes: each is [reason, pages, cpu]")
    return rec
