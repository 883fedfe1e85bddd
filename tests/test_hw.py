"""The hardware model (``core/hw``): what each invalidation removes, who may
use what stays, and the hooks and events that feed it."""

from __future__ import annotations

import pytest
from mmugather.core.arch import make_machine, registry
from mmugather.core.constants import Geometry
from mmugather.core.hw import (
    WALK_ASID,
    WALK_NONE,
    WALK_VA,
    CpuConfig,
    HwSemantics,
    Invalidate,
    TlbModel,
)

GEO = Geometry()
PS = GEO.page_size
BASE = 0x400000


def model(**kw: object) -> TlbModel:
    return TlbModel(GEO, CpuConfig(**kw), HwSemantics())  # type: ignore[arg-type]


def cleared(tlb: TlbModel, n: int, dirty: bool = False, start: int = BASE) -> None:
    tlb.pte_rows([(start + k * PS, 0x1000 + k, "batched", dirty) for k in range(n)], 0)


# ----------------------------------------------------------------------
# Invalidate.reaches: which entries an invalidation names
# ----------------------------------------------------------------------


def test_whole_asid_reaches_everything() -> None:
    inv = Invalidate("flush_tlb_mm", cpus=0b11)
    assert inv.whole and inv.reaches(BASE, PS, "pte") and inv.reaches(0, 1 << 30, "pud")


@pytest.mark.parametrize(("va", "size", "hit"), [
    (BASE - PS, PS, False),          # ends where the range starts
    (BASE, PS, True),
    (BASE + 3 * PS, PS, True),
    (BASE + 4 * PS, PS, False),      # starts where the range ends
    (BASE, 0x200000, True),          # a PMD entry overlapping the range
    (0x200000, 0x200000, False),     # the PMD entry below it
])
def test_range_reaches_overlapping_entries(va: int, size: int, hit: bool) -> None:
    inv = Invalidate("flush_tlb_range", cpus=1, start=BASE, end=BASE + 4 * PS)
    assert inv.reaches(va, size, "pte") is hit


def test_stride_names_one_address_per_stride() -> None:
    # A PMD stride over 2 MiB names 0x400000 only: the 4K entries after it
    # are not invalidated (x86 with the wrong stride shift).
    inv = Invalidate("invlpg", cpus=1, start=BASE, end=BASE + 0x200000, stride=0x200000)
    assert inv.reaches(BASE, PS, "pte")
    assert not inv.reaches(BASE + PS, PS, "pte")
    assert inv.reaches(BASE, 0x200000, "pmd")
    # A page stride reaches a 2M entry through any of its addresses.
    inv = Invalidate("invlpg", cpus=1, start=BASE + 5 * PS, end=BASE + 6 * PS, stride=PS)
    assert inv.reaches(BASE, 0x200000, "pmd")


def test_level_hint_and_page_size_restrict_matches() -> None:
    inv = Invalidate("tlbi vale1is", cpus=1, start=BASE, end=BASE + PS, stride=PS, level="pmd")
    assert not inv.reaches(BASE, PS, "pte")
    inv = Invalidate("tlbie ric=0", cpus=1, start=BASE, end=BASE + 0x200000, page_size=PS)
    assert inv.reaches(BASE, PS, "pte", PS)
    assert not inv.reaches(BASE, 0x200000, "pmd", 0x200000)


def test_invalidate_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="walk must be one of"):
        Invalidate("x", cpus=1, walk="some")
    with pytest.raises(ValueError, match="level must be one of"):
        Invalidate("x", cpus=1, level="l3")
    with pytest.raises(ValueError, match="start and end go together"):
        Invalidate("x", cpus=1, start=0)


def test_event_fields_round_trip() -> None:
    inv = Invalidate("tlbi vae1is", cpus=0b101, start=BASE, end=BASE + PS, stride=PS,
                     walk=WALK_VA, level="pte", waits=False)
    fields = inv.fields(asid=7)
    assert fields["cpus"] == [0, 2] and fields["asid"] == 7
    assert Invalidate.from_event(fields) == inv


# ----------------------------------------------------------------------
# TlbModel: stale entries, who holds and who may use them
# ----------------------------------------------------------------------


def test_cleared_entries_stay_usable_until_an_invalidation_reaches_every_cpu() -> None:
    tlb = model()
    cleared(tlb, 4)
    assert tlb.page_reach(0x1000, tlb.leaf_users()) is not None
    # Reaching CPU 0 only leaves CPU 1's copy.
    tlb.invalidate(Invalidate("local", cpus=0b01, start=BASE, end=BASE + 4 * PS))
    reach = tlb.page_reach(0x1000, tlb.leaf_users())
    assert reach is not None and reach.cpus == 0b10
    tlb.invalidate(Invalidate("remote", cpus=0b10, start=BASE, end=BASE + 4 * PS))
    assert tlb.page_reach(0x1000, tlb.leaf_users()) is None
    assert not tlb.leaf


def test_leaf_only_invalidation_leaves_walk_caches() -> None:
    tlb = model()
    tlb.table_unhooked(0x77, "pte", BASE, seq=1)
    tlb.invalidate(Invalidate("tlbi vale1is", cpus=0b11, start=BASE, end=BASE + PS,
                              walk=WALK_NONE))
    reach = tlb.table_reach(0x77)
    assert reach is not None and reach.level == "pmd" and reach.va == 0x400000
    tlb.invalidate(Invalidate("tlbi vae1is", cpus=0b11, start=BASE, end=BASE + PS))
    assert tlb.table_reach(0x77) is None


def test_x86_invlpg_drops_every_walk_entry_of_the_asid() -> None:
    tlb = model()
    tlb.table_unhooked(0x77, "pte", 0x40000000, seq=1)
    tlb.invalidate(Invalidate("invlpg", cpus=0b11, start=BASE, end=BASE + PS, stride=PS,
                              walk=WALK_ASID))
    assert tlb.table_reach(0x77) is None


def test_after_exit_nobody_uses_leaf_entries_but_walkers_may_walk() -> None:
    tlb = model()
    cleared(tlb, 2)
    tlb.table_unhooked(0x77, "pte", BASE, seq=1)
    tlb.mm_exit()
    assert tlb.leaf_users() == 0 and tlb.page_reach(0x1000, tlb.leaf_users()) is None
    assert tlb.table_reach(0x77) is not None  # speculative walks go on
    assert tlb.gup_cpus() == 0


def test_lazy_cpus_use_leaf_only_where_the_arch_says() -> None:
    tlb = TlbModel(GEO, CpuConfig(nr_cpus=3, threads=(0,), lazy=(2,)),
                   HwSemantics(lazy_cpus_use_leaf=False))
    cleared(tlb, 1)
    assert tlb.leaf_users() == 0b001
    tlb = TlbModel(GEO, CpuConfig(nr_cpus=3, threads=(0,), lazy=(2,)), HwSemantics())
    assert tlb.leaf_users() == 0b101


def test_clear_modes() -> None:
    tlb = model()
    tlb.set_clear_mode("direct")
    cleared(tlb, 2)
    assert not tlb.leaf
    tlb.set_clear_mode("deferred")
    cleared(tlb, 2)
    assert tlb.leaf and tlb.page_reach(0x1000, tlb.leaf_users()) is None
    with pytest.raises(ValueError, match="unknown pte_clear_flush mode"):
        tlb.set_clear_mode("soon")


def test_dirty_pages_are_counted_until_their_entries_go() -> None:
    tlb = model()
    cleared(tlb, 2, dirty=True)
    assert set(tlb.dirty_pages) == {0x1000, 0x1001}
    assert tlb.dirty_reach(0x1000, 0b10) is not None
    tlb.invalidate(Invalidate("flush_tlb_range", cpus=0b11, start=BASE, end=BASE + PS))
    assert set(tlb.dirty_pages) == {0x1001}
    tlb.invalidate(Invalidate("flush_tlb_mm", cpus=0b11))
    assert tlb.dirty_pages == {}


def test_lockless_walkers_need_a_waiting_invalidation_of_every_thread_cpu() -> None:
    tlb = model(nr_cpus=3, threads=(0, 1, 2))
    tlb.table_unhooked(0x77, "pte", BASE, seq=1)
    assert 0x77 in tlb.lockless
    tlb.invalidate(Invalidate("broadcast", cpus=0b111, waits=False))
    assert 0x77 in tlb.lockless
    tlb.invalidate(Invalidate("ipi", cpus=0b011, waits=True))  # misses CPU 2
    assert 0x77 in tlb.lockless
    tlb.invalidate(Invalidate("ipi", cpus=0b110, waits=True))
    assert 0x77 not in tlb.lockless


def test_no_lockless_walker_without_another_thread() -> None:
    tlb = model(nr_cpus=1, threads=(0,))
    tlb.table_unhooked(0x77, "pte", BASE, seq=1)
    assert tlb.lockless == {}


def test_cpu_config_is_checked() -> None:
    with pytest.raises(ValueError, match="CPU 0 runs the teardown"):
        CpuConfig(threads=(1,))
    with pytest.raises(ValueError, match=r"is not one of 0\.\.1"):
        CpuConfig(threads=(0, 2))
    with pytest.raises(ValueError, match="cannot both run a thread and hold the mm lazily"):
        CpuConfig(nr_cpus=3, threads=(0, 1), lazy=(1,))
    assert CpuConfig(nr_cpus=4, threads=(0, 3), lazy=(2,)).for_arch(1) == CpuConfig(
        nr_cpus=1, threads=(0,), lazy=())


# ----------------------------------------------------------------------
# The hook and the machine
# ----------------------------------------------------------------------


def test_mmu_hw_semantics_hook_per_feature() -> None:
    assert make_machine("generic-smp").hw == HwSemantics()
    assert make_machine("rcu-table-free").hw.flush_waits is False
    assert make_machine("up").cpus.nr_cpus == 1
    spec = registry().get("generic-smp")
    pm_answer = make_machine(spec).hook.mmu_hw_semantics(arch=spec)
    assert pm_answer == HwSemantics()


def test_a_dead_mm_leaves_nothing_to_track_where_its_asid_is_invalidated_before_reuse() -> None:
    tlb = TlbModel(GEO, CpuConfig(), HwSemantics(asid_reuse_invalidates=True))
    cleared(tlb, 2)
    tlb.mm_exit()
    # Cleared at exit: nobody runs in the mm and the ASID is not reused
    # unflushed, so nothing is recorded (arm64's exit issues no TLBI).
    cleared(tlb, 3, start=BASE + 0x100000)
    assert sorted(tlb.leaf) == [BASE, BASE + PS]
    tlb = model()
    tlb.mm_exit()
    cleared(tlb, 3)
    assert len(tlb.leaf) == 3  # elsewhere they must still be invalidated


def _hw_config(**kw: object) -> dict[str, object]:
    ev = {"event": "hw_config", "nr_cpus": 2, "running": [0, 1], "lazy": [], "asid": 1,
          "page_size": PS, "pmd_size": GEO.pmd_size, "pud_size": GEO.pud_size,
          "p4d_size": GEO.p4d_size, "pgdir_size": GEO.pgdir_size,
          "lazy_cpus_use_leaf": True, "asid_reuse_invalidates": False}
    ev.update(kw)
    return ev


def test_a_table_handed_to_rcu_must_be_unreachable_through_walk_caches() -> None:
    """The grace period may end at once: an invalidation after call_rcu()
    is too late, so the walk caches are judged at the hand-over."""
    from mmugather.core.check import Checker

    checker = Checker(registry().get("rcu-table-free"))
    for ev in (
        _hw_config(),
        {"event": "table_unhook", "table": 0x77, "level": "pte", "addr": BASE},
        {"event": "rcu_queue", "tables": [0x77]},
        Invalidate("flush_tlb_mm", cpus=0b11).fields(asid=1) | {"event": "tlb_invalidate"},
        {"event": "rcu_grace_period", "callbacks": 1},
        {"event": "table_free", "tables": [0x77]},
    ):
        checker(None, "info", ev)
    assert [v.rule for v in checker.violations] == ["table-reachable"]
    assert checker.violations[0].message == (
        "pte table 0x77 is handed to RCU while CPUs 0,1 may still walk a stale pmd walk-cache "
        "entry for 0x400000 (ASID 1) -> table 0x77: the grace period can end before any later "
        "invalidation, and the walker then reads whatever the page holds next")
    assert checker.violations[0].seq == 3
