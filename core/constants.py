"""Sizes the kernel derives from PAGE_SIZE and the page-table geometry.

Everything here is arithmetic on the configuration, exactly as the C macros
compute it, so that batch capacities and flush ranges match the kernel's.
"""

from __future__ import annotations

import attrs

#: Addresses are unsigned long: 64-bit, wrapping.
MASK64 = (1 << 64) - 1
#: __tlb_adjust_range() takes an unsigned int size.
MASK32 = (1 << 32) - 1

#: struct page pointers in the batch pages are 8 bytes.
POINTER_BYTES = 8
#: sizeof(struct mmu_gather_batch): next pointer, nr, max.
GATHER_BATCH_HEADER = 16
#: Entries in the on-stack bundle (tlb->__pages).
MMU_GATHER_BUNDLE = 8
#: tlb_batch_pages_flush() frees at most this many pages per call.
FREE_CHUNK = 512

PAGE_SIZES = (4096, 16384, 65536)


@attrs.frozen(slots=True)
class Geometry:
    """The constants one configuration compiles in.

    ``pmd_shift``/``pud_shift``/``p4d_shift`` default to the usual
    "each level maps PAGE_SIZE / 8 entries" derivation; an arch with another
    table layout (s390's 1 MiB segments) passes its own.
    """

    page_size: int = 4096
    pmd_shift: int = 0
    pud_shift: int = 0
    p4d_shift: int = 0
    pgdir_shift: int = 0
    task_size: int = 0x7FFFFFFFF000
    table_batch_header: int = 24
    #: sizeof() one entry of a page batch: a page pointer; the ``ranges``
    #: strategy stores a struct pfn_range (two unsigned longs) instead
    gather_entry_bytes: int = POINTER_BYTES
    # Derived in __attrs_post_init__ (hot paths read them as plain attributes).
    page_shift: int = attrs.field(init=False, default=0)
    pmd_size: int = attrs.field(init=False, default=0)
    pud_size: int = attrs.field(init=False, default=0)
    p4d_size: int = attrs.field(init=False, default=0)
    pgdir_size: int = attrs.field(init=False, default=0)
    ptrs_per_pte: int = attrs.field(init=False, default=0)
    max_gather_batch: int = attrs.field(init=False, default=0)
    max_gather_batch_count: int = attrs.field(init=False, default=0)
    max_table_batch: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.page_size not in PAGE_SIZES:
            raise ValueError(f"PAGE_SIZE must be one of {PAGE_SIZES}, not {self.page_size}")
        set_ = object.__setattr__
        set_(self, "page_shift", self.page_size.bit_length() - 1)
        bits = self.page_shift - 3  # entries per table level
        if not self.pmd_shift:
            object.__setattr__(self, "pmd_shift", self.page_shift + bits)
        if not self.pud_shift:
            object.__setattr__(self, "pud_shift", self.pmd_shift + bits)
        if not self.p4d_shift:
            object.__setattr__(self, "p4d_shift", self.pud_shift + bits)
        if not self.pgdir_shift:
            object.__setattr__(self, "pgdir_shift", self.p4d_shift + bits)
        set_(self, "pmd_size", 1 << self.pmd_shift)
        set_(self, "pud_size", 1 << self.pud_shift)
        set_(self, "p4d_size", 1 << self.p4d_shift)
        set_(self, "pgdir_size", 1 << self.pgdir_shift)
        set_(self, "ptrs_per_pte", self.pmd_size // self.page_size)
        # MAX_GATHER_BATCH: page pointers (or entries) that fit in one batch page.
        set_(
            self,
            "max_gather_batch",
            (self.page_size - GATHER_BATCH_HEADER) // self.gather_entry_bytes,
        )
        # MAX_GATHER_BATCH_COUNT: 10K pages bound the work between preemption
        # points on non-preemptible kernels.
        set_(self, "max_gather_batch_count", 10000 // self.max_gather_batch)
        # MAX_TABLE_BATCH: table pointers in one table-batch page.
        set_(self, "max_table_batch", (self.page_size - self.table_batch_header) // POINTER_BYTES)

    @property
    def queue_capacity(self) -> int:
        """Pages queued before __tlb_remove_page_size() reports a full queue."""
        return MMU_GATHER_BUNDLE + self.max_gather_batch_count * self.max_gather_batch
