"""struct mmu_gather_batch: one page of queued page pointers.

The gather starts with the on-stack bundle (``tlb.local``, MMU_GATHER_BUNDLE
entries) and chains batch pages behind it as the queue grows, each holding
MAX_GATHER_BATCH entries.  ``pages`` is sized ``max`` up front and only
``pages[:nr]`` is live, as in the kernel's flexible array.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True, eq=False, repr=False)
class MmuGatherBatch:
    max: int
    nr: int = 0
    next: MmuGatherBatch | None = None
    #: encoded_pages[]: the page ids
    pages: list[int] = attrs.field(init=False)
    #: the flag bits encode_page() keeps beside each pointer
    flags: list[int] = attrs.field(init=False)
    #: position in the chain, 0 for the bundle (for events and reports)
    index: int = 0
    #: the ``ranges`` strategy: ``pages[i]`` starts a struct pfn_range and
    #: ``ends[i]`` ends it (exclusive); allocated by that strategy alone
    ends: list[int] | None = None

    def __attrs_post_init__(self) -> None:
        self.pages = [0] * self.max
        self.flags = [0] * self.max

    def __repr__(self) -> str:
        return f"<batch #{self.index} {self.nr}/{self.max}>"
