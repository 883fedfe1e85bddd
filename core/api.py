"""The mmu_gather API under the kernel's own names, for scripts written the
way mm/memory.c is written::

    from mmugather.core.api import *  # noqa: F403
    from mmugather.core.api import __tlb_remove_page

    tlb = tlb_gather_mmu(machine, mm)
    tlb_start_vma(tlb, vma)
    tlb_remove_tlb_entry(tlb, addr)
    if __tlb_remove_page(tlb, page, 0):
        tlb_flush_mmu(tlb)
    tlb_end_vma(tlb, vma)
    tlb_finish_mmu(tlb)

Each function is a thin call into :class:`~mmugather.core.gather.MmuGather`;
per-page loops that care about speed call the methods directly.
"""

from __future__ import annotations

from mmugather.core.gather import MmuGather, tlb_gather_mmu, tlb_gather_mmu_fullmm
from mmugather.core.vma import Vma

__all__ = [
    "p4d_free_tlb",
    "pmd_free_tlb",
    "pte_free_tlb",
    "pud_free_tlb",
    "tlb_batch_rmap",
    "tlb_change_page_size",
    "tlb_discard_rmaps",
    "tlb_end_vma",
    "tlb_finish_mmu",
    "tlb_flush_mmu",
    "tlb_flush_mmu_tlbonly",
    "tlb_flush_rmaps",
    "tlb_gather_mmu",
    "tlb_gather_mmu_fullmm",
    "tlb_remove_huge_tlb_entry",
    "tlb_remove_page",
    "tlb_remove_page_size",
    "tlb_remove_pmd_tlb_entry",
    "tlb_remove_pud_tlb_entry",
    "tlb_remove_table",
    "tlb_remove_tlb_entry",
    "tlb_start_vma",
]


def tlb_finish_mmu(tlb: MmuGather, nested: bool = False) -> None:
    tlb.tlb_finish_mmu(nested)


def tlb_start_vma(tlb: MmuGather, vma: Vma) -> None:
    tlb.tlb_start_vma(vma)


def tlb_end_vma(tlb: MmuGather, vma: Vma) -> None:
    tlb.tlb_end_vma(vma)


def tlb_remove_tlb_entry(tlb: MmuGather, address: int) -> None:
    tlb.tlb_remove_tlb_entry(address)


def tlb_remove_pmd_tlb_entry(tlb: MmuGather, address: int) -> None:
    tlb.tlb_remove_pmd_tlb_entry(address)


def tlb_remove_pud_tlb_entry(tlb: MmuGather, address: int) -> None:
    tlb.tlb_remove_pud_tlb_entry(address)


def tlb_remove_huge_tlb_entry(tlb: MmuGather, address: int, size: int) -> None:
    tlb.tlb_remove_huge_tlb_entry(address, size)


def __tlb_remove_page_size(tlb: MmuGather, page: int, page_size: int, flags: int = 0) -> bool:
    """Queue (or, on s390, free) ``page``; True when the queue is full."""
    return tlb.remove_page(page, page_size, flags)


def __tlb_remove_page(tlb: MmuGather, page: int, flags: int = 0) -> bool:
    return tlb.remove_page(page, tlb.geometry.page_size, flags)


def tlb_remove_page_size(tlb: MmuGather, page: int, page_size: int) -> None:
    tlb.tlb_remove_page_size(page, page_size)


def tlb_remove_page(tlb: MmuGather, page: int) -> None:
    tlb.tlb_remove_page(page)


def tlb_change_page_size(tlb: MmuGather, page_size: int) -> None:
    tlb.tlb_change_page_size(page_size)


def tlb_flush_mmu_tlbonly(tlb: MmuGather) -> None:
    tlb.tlb_flush_mmu_tlbonly()


def tlb_flush_mmu(tlb: MmuGather) -> None:
    tlb.tlb_flush_mmu()


def tlb_batch_rmap(tlb: MmuGather) -> bool:
    return tlb.batch_rmap


def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> None:
    tlb.tlb_flush_rmaps(vma)


def tlb_discard_rmaps(tlb: MmuGather) -> None:
    tlb.tlb_discard_rmaps()


def pte_free_tlb(tlb: MmuGather, table: int, address: int) -> None:
    tlb.pte_free_tlb(table, address)


def pmd_free_tlb(tlb: MmuGather, table: int, address: int) -> None:
    tlb.pmd_free_tlb(table, address)


def pud_free_tlb(tlb: MmuGather, table: int, address: int) -> None:
    tlb.pud_free_tlb(table, address)


def p4d_free_tlb(tlb: MmuGather, table: int, address: int) -> None:
    tlb.p4d_free_tlb(table, address)


def tlb_remove_table(tlb: MmuGather, table: int) -> None:
    tlb.tlb_remove_table(table)
