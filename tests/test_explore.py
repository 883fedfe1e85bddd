"""The explorer finds the races the ordering rules exist to prevent, and
nothing on v6.5 + the seed within the bound; it is deterministic, its fast
path agrees with the plain one, and its counterexamples replay."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from mmugather.core.explore import Config, Engine, explore, spec
from mmugather.core.explore.search import exhaustive, random_walks
from mmugather.core.explore.track import Recorder, TrackedArray, tracked_mm
from mmugather.core.mm import MmStruct


def run(name: str, arch: str = "generic-smp", mutant: str | None = None, **kw: Any) -> Any:
    return explore(Config(spec.load_builtin(name), arch, mutant=mutant), **kw)


def events_of(ce: Any) -> list[tuple[str, str]]:
    return [(step.actor, ev["event"]) for step in ce.steps for ev in step.events]


# ---------------------------------------------------------------------------
# What it finds, and what not
# ---------------------------------------------------------------------------


def test_rmap_before_flush_loses_a_write() -> None:
    """5df397dec7c4: with the rmap removed before the flush, writeback finds
    the page unmapped and cleans it while CPU 1 still stores through its
    TLB entry; eviction then drops that store."""
    r = run("dirty-writeback", mutant="rmap-before-flush")
    ce = r.counterexample
    assert ce.prop == "lost-write"
    assert ce.message.startswith("page 0x100000 is evicted clean with version 3 in memory "
                                 "but version 2 on disk")
    assert ce.choices == ("zap0",) * 5 + ("user0", "writeback0", "writeback0", "writeback0",
                                          "user0") + ("zap0",) * 11 + ("writeback0",)
    seq = events_of(ce)
    io = seq.index(("writeback0", "writeback_io"))
    late_store = seq.index(("user0", "user_access"), io)
    flush = seq.index(("zap0", "tlb_invalidate"))
    assert seq.index(("writeback0", "writeback_mkclean")) < io < late_store < flush
    assert seq.index(("zap0", "rmap_remove_now")) < seq.index(("writeback0",
                                                                "writeback_mkclean"))
    assert seq[-1] == ("writeback0", "writeback_evict")
    mkclean = next(ev for s in ce.steps for ev in s.events if ev["event"] == "writeback_mkclean")
    assert mkclean == {"page": 0x100000, "mapped": False, "table": None,
                       "event": "writeback_mkclean"}


@pytest.mark.parametrize("arch", ["generic-smp", "page-size", "rcu-table-free", "s390"])
def test_the_seed_loses_no_write(arch: str) -> None:
    r = run("dirty-writeback", arch)
    assert r.counterexample is None
    assert r.counts.states > 500 and r.counts.interleavings > 0 and r.counts.cutoffs == 0


def test_free_before_flush_is_a_use_after_free() -> None:
    """The classic: the page freed before the flush is reached through the
    TLB entry CPU 2 still holds."""
    ce = run("dontneed-race", mutant="free-before-flush").counterexample
    assert ce.prop == "use-after-free"
    assert "CPU 2 reaches page 0x100000 through a stale TLB entry for 0x30000000" in ce.message
    seq = events_of(ce)
    assert seq.index(("zap0", "free_page")) < seq.index(("user0", "user_access"))


def test_a_checker_finding_is_kept_when_nothing_concrete_fails() -> None:
    """free-before-flush drops pending rmaps (the sequential checker's
    rmap-dropped) but loses no write of the dirty-writeback scenario."""
    ce = run("dirty-writeback", mutant="free-before-flush").counterexample
    assert ce.prop == "checker:rmap-dropped"
    assert ce.choices == ("zap0", "zap0", "zap0")


@pytest.mark.parametrize("arch", ["generic-smp", "rcu-table-free"])
def test_direct_table_free_pulls_the_table_from_under_gup_fast(arch: str) -> None:
    """A page table freed at once, with no IPI and no grace period after its
    unhook, while gup_fast() (interrupts off) is inside it."""
    ce = run("munmap-gup", arch, mutant="direct-table-free").counterexample
    assert ce.prop == "lockless-walk-freed-table"
    assert ce.message.startswith("gup_fast on CPU 2 (interrupts off) is inside ")
    assert ce.message.endswith(", which is freed")
    seq = events_of(ce)
    last = ce.steps[-1]
    assert last.actor == "zap0" and "table_free" in [ev["event"] for ev in last.events]
    irq_off = seq.index(("gup_fast0", "gup_irq"))
    assert irq_off < len(seq) - len(last.events)
    assert ("gup_fast0", "gup_irq") not in seq[irq_off + 1:]


@pytest.mark.parametrize("arch", ["generic-smp", "rcu-table-free", "s390", "page-size"])
def test_the_seed_frees_no_table_under_gup_fast(arch: str) -> None:
    assert run("munmap-gup", arch).counterexample is None


def test_concurrent_dontneed_needs_mm_tlb_flush_nested() -> None:
    """99baac21e458: the second MADV_DONTNEED finds the PTE clear; v6.5's
    tlb_finish_mmu() flushes all the same (another gather is in flight).
    Without that (the mutant), it returns while CPU 2 may still use the
    entry."""
    assert run("dontneed-race").counterexample is None
    ce = run("dontneed-race", mutant="no-nested-flush").counterexample
    assert ce.prop == "stale-after-return"
    assert ce.message == ("CPU 2 still reaches page 0x100000 at 0x30000000 through a TLB entry "
                          "that was stale when the unmap of [0x30000000, 0x30001000) returned "
                          "to user space")
    ends = [ev for s in ce.steps for ev in s.events if ev["event"] == "gather_end"]
    assert ends and not any(ev["nested"] for ev in ends)


def test_dontneed_racing_munmap_is_safe() -> None:
    assert run("dontneed-munmap").counterexample is None


def test_reclaim_batched_flush_is_settled_by_flush_tlb_batched_pending() -> None:
    """3ea277194daa: on x86-64 reclaim defers its flush; munmap() finds the
    swap entry, but zap_pte_range() settles reclaim's flush under the PTE
    lock before it goes on.  Without that (the mutant) munmap() returns
    while CPU 1 still stores through the entry reclaim cleared."""
    assert run("reclaim-munmap", "x86-64").counterexample is None
    ce = run("reclaim-munmap", "x86-64", mutant="no-flush-batched-pending").counterexample
    assert ce.prop == "stale-after-return"
    seq = events_of(ce)
    assert seq.index(("reclaim0", "reclaim_unmap")) < seq.index(("zap0", "syscall_return"))
    assert ("reclaim0", "reclaim_flush") not in seq
    assert ("zap0", "flush_tlb_batched_pending") not in seq


def test_reclaim_defers_only_where_the_arch_batches() -> None:
    """Elsewhere reclaim flushes at once; told to defer on an arch without
    flush_tlb_batched_pending() (a what-if), the race is back."""
    ok = run("reclaim-munmap", "generic-smp")
    assert ok.counterexample is None
    sc = spec.load_builtin("reclaim-munmap")
    actors = tuple(attrs.evolve(a, batched_flush=True) if a.kind == "reclaim" else a
                   for a in sc.actors)
    ce = explore(Config(attrs.evolve(sc, actors=actors), "generic-smp")).counterexample
    assert ce.prop == "stale-after-return"
    assert not any(ev["event"] == "flush_tlb_batched_pending" for s in ce.steps
                   for ev in s.events)


def test_hugetlb_unshare_races_gup_fast_where_the_flush_does_not_wait() -> None:
    """1013af4f585f: on arm64 huge_pmd_unshare() drops its reference while
    gup_fast (interrupts off) is inside the shared table, and the other
    process makes it its own; the fix waits for the walker first.  x86-64's
    flush IPI waits for it anyway; an arch that shares no PMD table has no
    other process."""
    ce = run("hugetlb-unshare-gup", "arm64").counterexample
    assert ce.prop == "lockless-walk-freed-table"
    assert ce.message.startswith("gup_fast on CPU 1 (interrupts off) is inside pmd table ")
    assert ce.message.endswith(", which is another process's own page table now")
    seq = events_of(ce)
    assert seq.index(("gup_fast0", "gup_walk")) < seq.index(("zap0", "pmd_unshare")) < \
        seq.index(("zap0", "i_mmap_unlock")) < seq.index(("sharer0", "sharer_reuse"))
    assert ("gup_fast0", "gup_irq") in seq and seq.count(("gup_fast0", "gup_irq")) == 1
    sc = spec.load_builtin("hugetlb-unshare-gup")
    fixed = explore(Config(sc, "arm64", fixes=("1013af4f585f",)))
    assert fixed.counterexample is None and fixed.counts.interleavings > 0
    for arch in ("x86-64", "rcu-table-free", "generic-smp"):
        assert run("hugetlb-unshare-gup", arch).counterexample is None, arch


def test_unshare_flush_leaves_the_pud_walk_cache_on_arm64_tlbirange() -> None:
    """What the model finds on v6.5 (docs/explorer.md): after an unshare,
    FEAT_TLBIRANGE's leaf-only range TLBI keeps CPU 1's walk-cache entry of
    the cleared PUD, and its next access walks into the table the other
    process made its own; without FEAT_TLBIRANGE the flush is by ASID, and
    x86's CR3 reload drops everything."""
    ce = run("hugetlb-unshare-munmap", "arm64-tlbirange").counterexample
    assert ce.prop == "walk-freed-table"
    assert ce.message.startswith("CPU 1 walks 0x40000000 through its walk-cache pud entry "
                                 "into table ")
    flush = next(ev for s in ce.steps for ev in s.events if ev["event"] == "tlb_invalidate")
    assert (flush["op"], flush["leaf"], flush["walk"]) == ("tlbi rvale1is", True, "none")
    for arch in ("arm64", "x86-64"):
        assert run("hugetlb-unshare-munmap", arch).counterexample is None


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def test_exhaustive_is_deterministic() -> None:
    cfg = Config(spec.load_builtin("dontneed-race"), "generic-smp")
    eng = Engine(cfg)
    first = exhaustive(eng, 60)
    again = exhaustive(eng, 60)
    fresh = exhaustive(Engine(cfg), 60)
    assert first.counts == again.counts == fresh.counts


def test_random_walks_repeat_for_a_seed() -> None:
    cfg = Config(spec.load_builtin("dirty-writeback"), "generic-smp", mutant="rmap-before-flush")
    a = random_walks(Engine(cfg), 120, 3, range(300))
    b = random_walks(Engine(cfg), 120, 3, range(300))
    assert a.counterexample is not None
    assert (a.counterexample.run, a.counterexample.choices) == (b.counterexample.run,
                                                               b.counterexample.choices)
    assert a.counts == b.counts
    assert a.counterexample.prop == "lost-write" and a.counterexample.run == 93
    other = random_walks(Engine(cfg), 120, 8, range(300))
    assert other.counterexample is None or \
        other.counterexample.choices != a.counterexample.choices


@pytest.mark.parametrize("name,mutant", [("dirty-writeback", None),
                                         ("dirty-writeback", "rmap-before-flush"),
                                         ("munmap-gup", "direct-table-free")])
def test_the_split_does_not_change_verdicts(name: str, mutant: str | None) -> None:
    """Workers 1 and 2 and a Dask LocalCluster: the same verdict, property
    and counts (the frontier does not depend on the workers); the same
    verdict as one process."""
    from distributed import LocalCluster

    cfg = Config(spec.load_builtin(name), "generic-smp", mutant=mutant)
    single = explore(cfg)
    one = explore(cfg, workers=1)
    two = explore(cfg, workers=2)
    with LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                      dashboard_address=None) as cluster:
        dask = explore(cfg, dask=cluster.scheduler_address)
    verdicts = {r.counterexample.prop if r.counterexample else None
                for r in (single, one, two, dask)}
    assert len(verdicts) == 1
    assert one.counts == two.counts == dask.counts
    assert [r.counterexample.choices if r.counterexample else None for r in (one, two, dask)] \
        .count(one.counterexample.choices if one.counterexample else None) == 3


def test_random_split_reports_the_lowest_failing_run() -> None:
    from distributed import LocalCluster

    cfg = Config(spec.load_builtin("dirty-writeback"), "generic-smp", mutant="rmap-before-flush")
    serial = explore(cfg, runs=300, seed=3)
    two = explore(cfg, runs=300, seed=3, workers=2)
    with LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                      dashboard_address=None) as cluster:
        dask = explore(cfg, runs=300, seed=3, dask=cluster.scheduler_address)
    first = random_walks(Engine(cfg), cfg.scenario.depth, 3, range(300)).counterexample
    assert first is not None
    for r in (serial, two, dask):
        assert r.counterexample.run == first.run
        assert r.counterexample.choices == first.choices
    assert serial.counts == two.counts == dask.counts


# ---------------------------------------------------------------------------
# The fast path and the plain one
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", spec.builtin_names())
@pytest.mark.parametrize("arch,mutant", [("generic-smp", None), ("s390", None),
                                         ("rcu-table-free", "direct-table-free"),
                                         ("generic-smp", "rmap-before-flush")])
def test_memoised_steps_give_what_running_the_callers_gives(name: str, arch: str,
                                                            mutant: str | None) -> None:
    """Steps reused from the memo (by history and memory, or by the cells
    they read) change nothing: the counts, the counterexample and its
    events are those of a search that runs the callers at every step."""
    cfg = Config(spec.load_builtin(name), arch, mutant=mutant)
    fast = Engine(cfg)
    plain = Engine(cfg, memo=False)
    a = exhaustive(fast, cfg.scenario.depth)
    b = exhaustive(plain, cfg.scenario.depth)
    assert a.counts == b.counts
    assert (a.counterexample is None) == (b.counterexample is None)
    if a.counterexample is not None:
        assert a.counterexample.choices == b.counterexample.choices
        assert a.counterexample.steps == b.counterexample.steps
    assert plain.memo_hits == 0 and fast.real_steps < plain.real_steps


def test_sleep_sets_prune_transitions_not_states() -> None:
    eng = Engine(Config(spec.load_builtin("dontneed-munmap"), "generic-smp"))
    with_sleep = exhaustive(eng, 80)
    without = exhaustive(eng, 80, sleep_sets=False)
    assert with_sleep.counts.states == without.counts.states
    assert with_sleep.counts.transitions < without.counts.transitions


def test_tracked_arrays_note_reads_and_writes() -> None:
    rec = Recorder()
    arr = TrackedArray("i", [5, 6, 7], ("p", 3), rec)
    assert arr[1] == 6  # not recording
    rec.start()
    assert arr[0] == 5 and arr[-1] == 7
    arr[1] = 9
    assert list(arr[0:2]) == [5, 9]
    rec.stop()
    assert rec.cells == {(("p", 3), 0), (("p", 3), 2)}
    assert rec.written == {(("p", 3), 1)}
    assert rec.whole == {("p", 3)}
    mm = tracked_mm(MmStruct(), rec)
    rec.start()
    mm.tlb_flush_pending += 1
    _ = mm.running_cpus
    rec.stop()
    assert rec.cells == {("m", "tlb_flush_pending"), ("m", "cpumask"), ("m", "lazy_cpus"),
                         ("m", "live")}
    assert rec.written == {("m", "tlb_flush_pending")}


# ---------------------------------------------------------------------------
# Counterexamples
# ---------------------------------------------------------------------------


def test_a_trace_replays_to_the_same_timeline(tmp_path: Any) -> None:
    from mmugather.core.explore import trace

    cfg = Config(spec.load_builtin("munmap-gup"), "generic-smp", mutant="direct-table-free")
    eng = Engine(cfg)
    ce = exhaustive(eng, 120).counterexample
    path = tmp_path / "t.jsonl"
    with path.open("w") as out:
        trace.write_trace(out, cfg, eng, ce, "munmap-gup")
    tr = trace.read_trace(str(path))
    assert tr.choices == ce.choices and tr.prop == ce.prop
    eng2 = Engine(tr.config)
    again = trace.replay(eng2, tr.choices)
    assert again is not None and again.steps == ce.steps
    assert trace.timeline(eng2, again) == trace.timeline(eng, ce)
    lines = [ev for ev in tr.events]
    assert lines[0]["step"] == 0 and lines[0]["event"] == "hw_config"
    assert lines[-1] == {"step": len(ce.steps), "actor": ce.steps[-1].actor,
                         "cpu": ce.steps[-1].cpu, "property": ce.prop, "message": ce.message,
                         "event": "property_violation"}
    assert [(ev["step"], ev["actor"], ev["event"]) for ev in lines[1:-1]] == [
        (s.number, s.actor, ev["event"]) for s in ce.steps for ev in s.events]


def test_the_timeline_has_a_column_per_actor() -> None:
    from mmugather.core.explore import trace

    cfg = Config(spec.load_builtin("dirty-writeback"), "generic-smp", mutant="rmap-before-flush")
    eng = Engine(cfg)
    ce = exhaustive(eng, 120).counterexample
    text = trace.timeline(eng, ce).splitlines()
    assert text[0].split(" | ")[:4] == ["step", f"{'CPU0 zap0':<34}", f"{'CPU1 user0':<34}",
                                        "writeback0"]
    io = next(line for line in text if "writeback_io" in line)
    assert io.startswith("   9 | ") and io.index("writeback_io") > 80
    assert text[-3] == "after step 22: lost-write"
