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

    def __attrs_post_init__(self) -> None:
        if self.page_size not in PAGE_SIZES:
            raise ValueError(f"PAGE_SIZE must be one of {PAGE_SIZES}, not {self.page_size}")
        bits = self.page_shift - 3  # entries per table level
        if not self.pmd_shift:
            object.__setattr__(self, "pmd_shift", self.page_shift + bits)
        if not self.pud_shift:
            object.__setattr__(self, "pud_shift", self.pmd_shift + bits)
        if not self.p4d_shift:
            object.__setattr__(self, "p4d_shift", self.pud_shift + bits)
        if not self.pgdir_shift:
            object.__setattr__(self, "pgdir_shift", self.p4d_shift + bits)

    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @property
    def pmd_size(self) -> int:
        return 1 << self.pmd_shift

    @property
    def pud_size(self) -> int:
        return 1 << self.pud_shift

    @property
    def p4d_size(self) -> int:
        return 1 << self.p4d_shift

    @property
    def pgdir_size(self) -> int:
        return 1 << self.pgdir_shift

    @property
    def ptrs_per_pte(self) -> int:
        return self.pmd_size // self.page_size

    @property
    def max_gather_batch(self) -> int:
        """MAX_GATHER_BATCH: page pointers that fit in one batch page."""
        return (self.page_size - GATHER_BATCH_HEADER) // POINTER_BYTES

    @property
    def max_gather_batch_count(self) -> int:
        """MAX_GATHER_BATCH_COUNT: 10K pages bound the work between preemption points."""
        return 10000 // self.max_gather_batch

    @property
    def max_table_batch(self) -> int:
        """MAX_TABLE_BATCH: table pointers in one table-batch page."""
        return (self.page_size - self.table_batch_header) // POINTER_BYTES

    @property
    def queue_capacity(self) -> int:
        """Pages queued before __tlb_remove_page_size() reports a full queue."""
        return MMU_GATHER_BUNDLE + self.max_gather_batch_count * self.max_gather_batch
