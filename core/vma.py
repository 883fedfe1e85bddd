"""The part of struct vm_area_struct the gather looks at."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

VM_EXEC = 0x1
VM_HUGETLB = 0x2
#: VM_PFNMAP or VM_MIXEDMAP: no struct page behind the PTEs.
VM_PFNMAP = 0x4

FLAG_NAMES = {"exec": VM_EXEC, "hugetlb": VM_HUGETLB, "pfnmap": VM_PFNMAP}


def flags_from_names(names: Iterable[str]) -> int:
    """Turn contract flag names into VM_* bits; raises KeyError on an unknown one."""
    bits = 0
    for name in names:
        bits |= FLAG_NAMES[name]
    return bits


def flag_names(bits: int) -> list[str]:
    return [name for name, bit in FLAG_NAMES.items() if bits & bit]


@attrs.frozen(slots=True)
class Vma:
    """A VMA as tlb_start_vma()/tlb_end_vma()/tlb_flush_rmaps() see it."""

    start: int
    end: int
    flags: int = 0

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & VM_EXEC)

    @property
    def is_hugetlb(self) -> bool:
        return bool(self.flags & VM_HUGETLB)

    @property
    def is_pfnmap(self) -> bool:
        return bool(self.flags & VM_PFNMAP)

    def __str__(self) -> str:
        names = ",".join(flag_names(self.flags))
        return f"[{self.start:#x}-{self.end:#x}{' ' + names if names else ''}]"
