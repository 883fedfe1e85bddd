"""ARCH_WANT_HUGE_PMD_SHARE: hugetlb mappings may share PMD tables.

Two processes mapping the same hugetlb file range, each over a whole
PUD-aligned range with PMD-sized pages, may point their PUD entries at one
PMD table (``huge_pmd_share()``, ``want_pmd_share()`` of mm/hugetlb.c);
``huge_pmd_unshare()`` undoes it for one of them when it unmaps.  Selected
in v6.5 by x86, arm64 (4K pages, or 16K without VA_BITS_36) and riscv64.

No mmu_gather hook differs: the callers build and unshare shared tables
themselves (``core/callers/hugetlb.py``), on an arch whose spec selects
this feature (a scenario's ``shared_pmd`` mark is ignored elsewhere, as the
kernel would never have shared the table).  The plugin is registered so
that ``mmugather arches`` lists the option with the others.
"""

from __future__ import annotations
