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


#: The levels that may be folded, bottom up (a folded PMD level, 2-level
#: paging, is not modelled).
FOLDABLE = ("pud", "p4d")
#: The page-table levels above the PTE tables, bottom up, as the shift
#: fields name them.
UPPER_LEVELS = ("pmd", "pud", "p4d", "pgdir")


@attrs.frozen(slots=True)
class Geometry:
    """The constants one arch configuration compiles in, for one PAGE_SIZE.

    The page-table levels are the kernel's five: PGD, P4D, PUD, PMD and the
    PTE tables.  Each ``*_shift`` is the kernel's ``*_SHIFT``: an entry of
    that level maps ``1 << shift`` bytes (a PMD entry maps a whole PTE
    table's worth, PMD_SIZE).  Pass the arch's own shifts, or let them be
    derived: each level resolves ``page_shift - 3`` more bits (a table is a
    page of 8-byte entries), so 4K pages give 21, 30, 39 and 48.

    A *folded* level has no table of its own: the entry of the level above
    is its entry (``asm-generic/pgtable-nop4d.h``, ``pgtable-nopud.h``), so
    its shift is the shift of the level above (P4D_SHIFT = PGDIR_SHIFT).
    Say which with ``folded`` (``("p4d",)`` for 4-level paging, ``("pud",
    "p4d")`` for 3-level), or give equal shifts: either way ``folded`` ends
    up listing them, and the callers allocate and free no table for them
    (``p4d_free_tlb()`` and ``pud_free_tlb()`` do nothing there).  A folded
    PUD level needs a folded P4D level, as in the kernel; a folded PMD
    level (2-level paging) is not modelled.

    The fields after ``gather_entry_bytes`` are derived; hot paths read them
    as plain attributes.
    """

    #: PAGE_SIZE, one of :data:`PAGE_SIZES`
    page_size: int = 4096
    #: PMD_SHIFT: bytes a PMD entry (a PTE table, a PMD-sized THP or
    #: hugetlb page) maps, as a shift; 0: derived
    pmd_shift: int = 0
    #: PUD_SHIFT: bytes a PUD entry (a PMD table, a PUD-sized hugetlb
    #: page) maps; 0: derived (P4D_SHIFT when the PUD level is folded)
    pud_shift: int = 0
    #: P4D_SHIFT: bytes a P4D entry (a PUD table) maps; 0: derived
    #: (PGDIR_SHIFT when the P4D level is folded)
    p4d_shift: int = 0
    #: PGDIR_SHIFT: bytes a PGD entry maps; 0: derived
    pgdir_shift: int = 0
    #: TASK_SIZE: the top of the user address space (exclusive); a
    #: non-fullmm gather's empty range starts here (__tlb_reset_range()),
    #: and a scenario's VMAs must lie below it
    task_size: int = 0x7FFFFFFFF000
    #: the folded levels, of "pud" and "p4d" (see above)
    folded: tuple[str, ...] = ()
    #: sizeof(struct mmu_table_batch) up to its tables[]: an rcu_head and
    #: the count under MMU_GATHER_RCU_TABLE_FREE (24), the count alone
    #: without it (``make_machine()`` sets 8 then)
    table_batch_header: int = 24
    #: sizeof() one entry of a page batch: a page pointer; the ``ranges``
    #: strategy stores a struct pfn_range (two unsigned longs) instead
    gather_entry_bytes: int = POINTER_BYTES
    # Derived in __attrs_post_init__ (hot paths read them as plain attributes).
    #: PAGE_SHIFT
    page_shift: int = attrs.field(init=False, default=0)
    #: PMD_SIZE, PUD_SIZE, P4D_SIZE, PGDIR_SIZE: 1 << the shifts
    pmd_size: int = attrs.field(init=False, default=0)
    pud_size: int = attrs.field(init=False, default=0)
    p4d_size: int = attrs.field(init=False, default=0)
    pgdir_size: int = attrs.field(init=False, default=0)
    #: PTRS_PER_PTE: entries of a PTE table (PMD_SIZE / PAGE_SIZE)
    ptrs_per_pte: int = attrs.field(init=False, default=0)
    #: the PUD and P4D levels are folded ("pud"/"p4d" in ``folded``)
    pud_folded: bool = attrs.field(init=False, default=False)
    p4d_folded: bool = attrs.field(init=False, default=False)
    #: MAX_GATHER_BATCH: entries of one batch page
    max_gather_batch: int = attrs.field(init=False, default=0)
    #: MAX_GATHER_BATCH_COUNT: batch pages a gather may allocate
    max_gather_batch_count: int = attrs.field(init=False, default=0)
    #: MAX_TABLE_BATCH: table pointers in one table-batch page
    max_table_batch: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.page_size not in PAGE_SIZES:
            raise ValueError(f"PAGE_SIZE must be one of {PAGE_SIZES}, not {self.page_size}")
        set_ = object.__setattr__
        set_(self, "page_shift", self.page_size.bit_length() - 1)
        self._shifts()
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

    def _shifts(self) -> None:
        """The shifts given or derived, and the folded levels, checked."""
        set_ = object.__setattr__
        for level in self.folded:
            if level not in FOLDABLE:
                raise ValueError(f"folded: {level!r} is not a level that folds "
                                 f"(one of {', '.join(FOLDABLE)})")
        bits = self.page_shift - 3  # entries per table level
        if not self.pmd_shift:
            set_(self, "pmd_shift", self.page_shift + bits)
        # Up the levels that have tables, each resolving more bits; then a
        # folded level takes the shift of the level above it.
        below = self.pmd_shift
        for level in ("pud", "p4d", "pgdir"):
            field = f"{level}_shift"
            if level not in self.folded:
                if not getattr(self, field):
                    set_(self, field, below + bits)
                below = getattr(self, field)
        for level in ("p4d", "pud"):
            field = f"{level}_shift"
            if level in self.folded and not getattr(self, field):
                above = "pgdir" if level == "p4d" else "p4d"
                set_(self, field, getattr(self, f"{above}_shift"))
        shifts = [getattr(self, f"{level}_shift") for level in UPPER_LEVELS]
        folded = []
        for (level, shift), (above, above_shift) in zip(
                zip(UPPER_LEVELS, shifts, strict=True),
                zip(UPPER_LEVELS[1:], shifts[1:], strict=True), strict=False):
            if shift > above_shift:
                raise ValueError(f"{level}_shift {shift} is above {above}_shift {above_shift}")
            if shift == above_shift:
                if level not in FOLDABLE:
                    raise ValueError(f"{level}_shift equals {above}_shift ({shift}): a folded "
                                     f"{level.upper()} level is not modelled")
                folded.append(level)
            elif level in self.folded:
                raise ValueError(f"folded: {level!r}, but {level}_shift {shift} is below "
                                 f"{above}_shift {above_shift} (a folded level's shift is "
                                 "the shift of the level above)")
        if "pud" in folded and "p4d" not in folded:
            raise ValueError("a folded PUD level needs a folded P4D level (pgtable-nopud.h "
                             "folds both)")
        set_(self, "folded", tuple(folded))
        set_(self, "pud_folded", "pud" in folded)
        set_(self, "p4d_folded", "p4d" in folded)

    @property
    def queue_capacity(self) -> int:
        """Pages queued before __tlb_remove_page_size() reports a full queue."""
        return MMU_GATHER_BUNDLE + self.max_gather_batch_count * self.max_gather_batch
