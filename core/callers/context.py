"""What the callers share: the mm being torn down and the machine under it.

One :class:`ZapContext` per teardown, held by each per-file caller object
(``memory``, ``mmap``, ``huge_memory`` ...).  It carries no behaviour: the
functions live in the module of the kernel file that has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from mmugather.core.aspace import AddressSpace
from mmugather.core.constants import MASK64, Geometry
from mmugather.core.events import Emit, PageRows, page_rows
from mmugather.core.mm import Machine, MmStruct

if TYPE_CHECKING:
    from mmugather.core.check.complete import Completeness

#: The lock id of mm->page_table_lock (the lock of a huge PMD without a
#: split PMD lock, and of hugetlb entries other than PMD size).
MM_PAGE_TABLE_LOCK = 0


@attrs.define(slots=True, eq=False)
class ZapContext:
    """The state every caller of the gather reads or counts into."""

    aspace: AddressSpace
    machine: Machine
    #: the mm_struct every gather of this teardown is started on, run by
    #: the machine's CPUs (``Machine.cpus``)
    mm: MmStruct = attrs.Factory(lambda self: MmStruct.on(self.machine.cpus), takes_self=True)
    #: where model-level problems (a mapcount below zero) are reported:
    #: ``report(rule, message)``
    report: Callable[[str, str], None] | None = None
    #: told (pages, vma start) of the rmaps each tlb_flush_rmaps() step
    #: removes
    rmap_observer: Callable[[Iterable[int], int], None] | None = None
    #: called after each PTE table with its number of entries, for progress
    #: reports
    progress: Callable[[int], None] | None = None
    #: take the fast paths of :mod:`~mmugather.core.callers.memory_fast` (a
    #: PTE table's common entries, a batch's rmaps and references, a step
    #: at a time) where they apply; False: the per-PTE, per-page paths alone
    fast: bool = False
    #: the completeness rules (``mmugather run`` with the checker on):
    #: told of each PTE table freed and each operation done
    complete: Completeness | None = None
    geo: Geometry = attrs.field(init=False)
    emit: Emit | None = attrs.field(init=False)
    #: the per-PTE ``pte_clear`` events go through here
    rows: PageRows | None = attrs.field(init=False)
    #: counters the events cannot give cheaply: pages unmapped (rss), and
    #: tables deposited for THPs freed with them
    rss_freed: int = attrs.field(init=False, default=0)
    deposited_freed: int = attrs.field(init=False, default=0)
    #: the fast paths' steps still in the queue, with their page indexes
    #: (``memory_fast._page_index()``), and how many pages they hold
    fast_steps: dict[int, tuple[list[int], Any]] = attrs.field(init=False, factory=dict)
    fast_step_pages: int = attrs.field(init=False, default=0)
    #: more than this many pages there means some steps were never met
    #: again (about two queues' worth)
    fast_step_limit: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.geo = self.machine.geometry
        self.emit = self.machine.emit
        self.rows = page_rows(self.machine.emit, self.machine.rows)
        self.fast_step_limit = 2 * self.geo.queue_capacity


@attrs.define(slots=True, frozen=True)
class ZapDetails:
    """struct zap_details, as far as the modelled entries care."""

    #: zap private (COWed and swapped) pages too
    even_cows: bool = True
    #: ZAP_FLAG_DROP_MARKER: drop uffd-wp markers of file VMAs as well
    drop_marker: bool = True


#: unmap_vmas(): the final unmap of munmap() and exit
UNMAP_DETAILS = ZapDetails(even_cows=True, drop_marker=True)


def addr_end(addr: int, end: int, size: int) -> int:
    """p?d_addr_end(): the next boundary of ``size`` after ``addr``, or ``end``."""
    boundary = ((addr + size) & ~(size - 1)) & MASK64
    return boundary if ((boundary - 1) & MASK64) < ((end - 1) & MASK64) else end
