"""Random small address spaces torn down on every arch with the checker on.

Each example is a scenario made through ``scenario.parse`` (so it is valid
by construction; the few the validator rejects are discarded): a few VMAs of
random kinds at random places (sometimes adjacent, sharing page tables),
random populate ranges (every state, small and large folios, THPs, a file
shared between VMAs), a few munmap/MADV_DONTNEED ranges, then exit.  After
the final grace period nothing may be left: no violation, every folio the
mappings owned freed, page-cache folios back to the cache's one reference,
no swap slot, no page-table page.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mmugather.core import scenario
from mmugather.core.aspace import F_FREED, F_HUGETLB, PFN_BASE
from mmugather.core.callers import run_ops
from teardown_kit import ARCHES, MIB, PS, rig

SLOT = 4 * MIB
SLOTS = 6
BASE = 0x10000000
TOP = BASE + SLOTS * SLOT
KINDS = ("anon", "anon", "file", "file-shared", "hugetlb", "pfnmap")
ANON_STATES = ("present",) * 5 + ("swap", "swapcache", "zero", "migration", "marker",
                                   "hwpoison")
FILE_STATES = ("present",) * 5 + ("migration", "marker", "hwpoison")
#: folio sizes in bytes for the orders used; "pmd" is aligned to 2 MiB, which
#: s390's 1 MiB PMD order divides
FOLIO_BYTES = {4: 16 * PS, "pmd": 2 * MIB}


def _page_index(draw: Any, lo: int, hi: int) -> int:
    """A page index in [lo, hi], often an edge or a 2 MiB boundary."""
    edges = [lo, hi, *range(-(-lo // 512) * 512, hi + 1, 512)]
    return draw(st.one_of(st.sampled_from(edges), st.integers(lo, hi)))


def _align(start: int, off: int, n: int, size: int) -> tuple[int, int] | None:
    """[off, off + n) pages from ``start``, shrunk to ``size``-aligned
    addresses; None when nothing aligned is left."""
    a0 = -(-(start + off * PS) // size) * size
    a1 = (start + (off + n) * PS) // size * size
    if a1 <= a0:
        return None
    return (a0 - start) // PS, (a1 - a0) // PS


def _ranges(draw: Any, npages: int) -> list[tuple[int, int]]:
    """The whole VMA, or up to three disjoint page ranges [off, off + n)."""
    if draw(st.booleans()):
        return [(0, npages)]
    k = draw(st.integers(0, 3))
    points = sorted(draw(st.lists(st.integers(0, npages), min_size=2 * k, max_size=2 * k)))
    return [(points[2 * i], points[2 * i + 1] - points[2 * i]) for i in range(k)
            if points[2 * i + 1] > points[2 * i]]


@st.composite
def scenarios(draw: Any) -> scenario.Scenario:
    n = draw(st.integers(1, 4))
    slots = sorted(draw(st.lists(st.integers(0, SLOTS - 1), min_size=n, max_size=n,
                                 unique=True)))
    file_order = {"a": draw(st.sampled_from([0, 4])), "b": draw(st.sampled_from([0, "pmd"]))}
    vmas: list[dict[str, Any]] = []
    for slot in slots:
        kind = draw(st.sampled_from(KINDS))
        base = BASE + slot * SLOT
        if kind in ("hugetlb", "file", "file-shared"):
            # 2 MiB-aligned starts: hugetlb needs it; for files it keeps
            # folio-aligned addresses at folio-aligned file indexes.
            s = draw(st.sampled_from([0, 2 * MIB]))
        else:
            s = _page_index(draw, 0, SLOT // PS - 1) * PS
        if kind == "hugetlb":
            e = draw(st.sampled_from([x for x in (2 * MIB, 4 * MIB) if x > s]))
        else:
            e = _page_index(draw, s // PS + 1, SLOT // PS) * PS
        start, end = base + s, base + e
        vma: dict[str, Any] = {"start": start, "end": end, "kind": kind,
                               "exec": draw(st.booleans())}
        pops: list[dict[str, Any]] = []
        for off, cnt in _ranges(draw, (end - start) // PS):
            pop: dict[str, Any] = {"offset": off * PS, "pages": cnt,
                                   "dirty": draw(st.booleans()), "young": draw(st.booleans())}
            if kind == "hugetlb":
                aligned = _align(start, off, cnt, 2 * MIB)
                if aligned is None:
                    continue
                pop["offset"], pop["pages"] = aligned[0] * PS, aligned[1]
                pop["state"] = draw(st.sampled_from(["present", "present", "migration"]))
            elif kind == "pfnmap":
                pop["every"] = draw(st.sampled_from([1, 1, 3]))
            else:
                states = ANON_STATES if kind == "anon" else FILE_STATES
                state = draw(st.sampled_from(states))
                pop["state"] = state
                if kind != "anon":
                    vma["file"] = draw(st.sampled_from(["a", "b"]))
                order: Any = (file_order[vma["file"]] if kind != "anon" and state == "present"
                              else draw(st.sampled_from([0, 0, 4, "pmd"]))
                              if state in ("present", "swapcache") else 0)
                if order:
                    aligned = _align(start, off, cnt, FOLIO_BYTES[order])
                    if aligned is None:
                        continue
                    pop["offset"], pop["pages"] = aligned[0] * PS, aligned[1]
                    pop["folio_order"] = order
                    if order == "pmd":
                        pop["pmd_mapped"] = draw(st.booleans())
                elif state in ("present", "swap", "zero"):
                    pop["every"] = draw(st.sampled_from([1, 1, 2, 5]))
            pops.append(pop)
        vma["populate"] = pops
        vmas.append(vma)
    ops: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        lo = _page_index(draw, BASE // PS, TOP // PS - 1)
        hi = _page_index(draw, lo + 1, TOP // PS)
        ops.append({"kind": draw(st.sampled_from(["munmap", "madvise_dontneed"])),
                    "start": lo * PS, "end": hi * PS})
    ops.append({"kind": "exit"})
    try:
        return scenario.parse({"vma": vmas, "op": ops}, "random.toml")
    except scenario.ScenarioError:
        assume(False)
        raise  # pragma: no cover - assume() raised


@pytest.mark.parametrize("arch", ARCHES)
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(sc=scenarios())
def test_random_teardown_leaves_nothing_behind(arch: str, sc: scenario.Scenario) -> None:
    try:
        r = rig(arch, sc, check=True)
    except scenario.ScenarioError:
        assume(False)
        raise  # pragma: no cover
    aspace = r.aspace
    store = aspace.pages
    cache = {store.head[pfn - PFN_BASE] for pfn in aspace.page_cache.values()}
    heads = {store.head[i] for i in range(len(store))}
    cache |= {h for h in heads if store.flags[h] & F_HUGETLB}
    owned = {h for h in heads if h not in cache and store.refcount[h] > 0}

    run_ops(r.callers, sc.ops)
    assert r.checker is not None
    r.checker.finish()

    assert r.violations == [], "\n".join(v.render() for v in r.violations[:2])
    for h in owned:
        assert store.flags[h] & F_FREED and store.refcount[h] == 0, hex(h + PFN_BASE)
    for h in cache:
        assert store.refcount[h] == 1 and not store.flags[h] & F_FREED, hex(h + PFN_BASE)
    assert not any(store.mapcount)
    assert not any(store.entire_mapcount)
    # _nr_pages_mapped: kept for large folios only
    assert not any(store.nr_mapped[h] for h in heads if store.order[h])
    assert aspace.swap_map == {}
    # Every page-table page freed after the final grace period: those the
    # gather freed and the THPs' deposited ones freed directly.
    assert aspace.tables == {}
    assert aspace.pte_tables == aspace.pmd_tables == aspace.pud_tables == {}
    assert aspace.p4d_tables == aspace.huge_pmds == aspace.huge_puds == {}
    assert aspace.deposited == {}
    assert aspace.vmas == []
    assert r.machine.rcu_callbacks == []
