"""What one invalidation primitive removes from the CPUs' TLBs and walk caches.

Every arch's flush instructions and routines come down to a few facts: which
CPUs the invalidation reaches; which addresses it names (all of the ASID, a
range, or one address per stride); whether it drops leaf entries, walk-cache
(paging-structure cache) entries, or both; whether a level hint or a page
size restricts what matches; and whether the initiator waits until every
reached CPU took an interrupt (so that no IRQs-off lockless walker is still
inside a table).  :class:`Invalidate` states those facts; the arch plugins
build one per primitive they issue (``docs/hardware.md``), and
:class:`~mmugather.core.hw.tlb.TlbModel` applies them.

Levels are named as the kernel names the page-table levels: a *leaf* entry
of level ``pte`` maps a base page, ``pmd`` a PMD-sized block (a THP, a 2M
hugetlb page), ``pud`` a PUD-sized one.  A *walk* entry of level ``pmd`` is a
cached PMD entry pointing to a PTE table, of level ``pud`` a cached PUD entry
pointing to a PMD table, and so on up to ``pgd``.
"""

from __future__ import annotations

from typing import Any

import attrs
from mmugather.core.hw.cpus import cpus_of

LEVELS = ("pte", "pmd", "pud", "p4d", "pgd")

#: what an invalidation does to walk-cache entries
WALK_NONE = "none"  # leaves them (arm64 VALE1IS, powerpc RIC=0)
WALK_VA = "va"  # those used to translate the addresses it names (arm64 VAE1IS)
WALK_ASID = "asid"  # every one of the ASID (x86 INVLPG, powerpc RIC=1/2, flush_tlb_mm)
WALK_KINDS = (WALK_NONE, WALK_VA, WALK_ASID)


@attrs.frozen(slots=True)
class Invalidate:
    """One invalidation as the hardware carries it out.

    ``start``/``end`` None: every entry of the ASID.  Otherwise ``stride``
    0 means the range [start, end) as a whole (a range instruction); a
    stride means one operation per address ``start + k * stride`` below
    ``end``, each reaching the entries that translate that address.
    """

    #: the instruction or routine, as the arch names it ("invlpg",
    #: "tlbi vale1is", "tlbie ric=0", "idte", "flush_tlb_range"...)
    op: str
    #: the CPUs it reaches (bit mask)
    cpus: int
    start: int | None = None
    end: int | None = None
    stride: int = 0
    #: drops leaf (last-level) entries
    leaf: bool = True
    #: what it drops of the walk caches: WALK_NONE, WALK_VA or WALK_ASID
    walk: str = WALK_VA
    #: a level hint (arm64's TTL): only entries of this level match; with a
    #: wrong hint the architecture need invalidate nothing
    level: str | None = None
    #: only leaf entries of this size match (powerpc's tlbie takes the page
    #: size of the entries to invalidate); 0: any size
    page_size: int = 0
    #: the initiator waits until every CPU reached has taken an interrupt (an
    #: IPI that waits), so no IRQs-off lockless walker there is still walking
    waits: bool = False

    def __attrs_post_init__(self) -> None:
        if self.walk not in WALK_KINDS:
            raise ValueError(f"walk must be one of {WALK_KINDS}, not {self.walk!r}")
        if self.level is not None and self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS} or None, not {self.level!r}")
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end go together")

    @property
    def whole(self) -> bool:
        """It names no address: everything of the ASID."""
        return self.start is None

    def fields(self, asid: int) -> dict[str, Any]:
        """The ``tlb_invalidate`` event's fields (``docs/events.md``)."""
        return {
            "op": self.op,
            "cpus": cpus_of(self.cpus),
            "asid": asid,
            "start": self.start,
            "end": self.end,
            "stride": self.stride,
            "leaf": self.leaf,
            "walk": self.walk,
            "level": self.level,
            "page_size": self.page_size,
            "waits": self.waits,
        }

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> Invalidate:
        mask = 0
        for cpu in ev["cpus"]:
            mask |= 1 << cpu
        return cls(op=ev["op"], cpus=mask, start=ev["start"], end=ev["end"],
                   stride=ev["stride"], leaf=ev["leaf"], walk=ev["walk"], level=ev["level"],
                   page_size=ev["page_size"], waits=ev["waits"])

    def reaches(self, va: int, size: int, level: str, page_size: int = 0) -> bool:
        """Does it name an address of the entry [va, va + size) at ``level``?
        (``page_size``: the entry's page size, for a leaf entry.)"""
        if self.level is not None and level != self.level:
            return False
        if self.page_size and page_size and page_size != self.page_size:
            return False
        start = self.start
        if start is None:
            return True
        end = self.end
        assert end is not None
        if not self.stride:
            return start < va + size and va < end
        # The first address of the walk at or after va.
        if va <= start:
            first = start
        else:
            steps = -((start - va) // self.stride)  # ceil((va - start) / stride)
            first = start + steps * self.stride
        return first < end and first < va + size


@attrs.frozen(slots=True)
class HwSemantics:
    """What the arch's hardware and its ASID management promise, beyond what
    each invalidation does (``mmu_hw_semantics`` hook)."""

    #: a CPU holding the mm lazily counts as a user of its stale leaf
    #: entries (True, the default: nothing says it cannot load or store
    #: through one).  False where a lazy CPU makes no user access before it
    #: switches back to the mm and that switch catches up on the flushes it
    #: missed (x86: the tlb_gen check in switch_mm_irqs_off())
    lazy_cpus_use_leaf: bool = True
    #: the ASID of a dead mm is never given to another mm without invalidating
    #: it (arm64: ASIDs are only reused after a generation rollover, which
    #: makes every CPU flush its TLB), so a teardown may leave the dead mm's
    #: leaf entries in place; False: they must be gone by the end of exit
    asid_reuse_invalidates: bool = False
    #: the arch's TLB flush interrupts the CPUs it reaches and waits for them
    #: (an IPI), so it also waits out IRQs-off lockless walkers; False for
    #: hardware broadcast invalidation (why MMU_GATHER_RCU_TABLE_FREE exists)
    flush_waits: bool = True
