"""A run of cleared PTEs, the bulk form of a table's ``pte_clear`` events.

``zap_pte_range()``'s fast path (:mod:`mmugather.core.callers.memory_fast`)
clears the common entries of a PTE table a step at a time and reports each
step as one :class:`ClearRun` (``PageRows.pte_clear_run``).  Readers that
take it whole (the checker, the run statistics) keep it as it is; the others
get one ``pte_clear`` event or row per entry, exactly as the per-PTE loop
gives them.
"""

from __future__ import annotations

from typing import Any

from mmugather.core.events import ClearRow


class ClearRun:
    """The PTEs one step of a table's fast path cleared (``zap_pte_range()``
    a table at a time, ``core/callers/memory_fast.py``): one ``pte_clear``
    row each, at level ``pte``, every one with a page, none a dirty file
    page, all with the same ``rmap``.

    ``addrs`` and ``pages`` are numpy int64 arrays (ascending addresses);
    ``page_list`` holds the same pages as the ints the gather queued, so
    that a reader can match them against later events without a copy.
    """

    __slots__ = ("addrs", "page_list", "pages", "rmap")

    def __init__(self, addrs: Any, pages: Any, page_list: list[int], rmap: str) -> None:
        self.addrs = addrs
        self.pages = pages
        self.page_list = page_list
        self.rmap = rmap

    def __len__(self) -> int:
        return len(self.page_list)

    def row(self, k: int) -> ClearRow:
        return (int(self.addrs[k]), self.page_list[k], self.rmap, False)

    def rows(self, start: int = 0) -> list[ClearRow]:
        """The rows from the ``start``-th on, as the per-PTE path gives them."""
        rmap = self.rmap
        return [(a, p, rmap, False)
                for a, p in zip(self.addrs[start:].tolist(), self.page_list[start:], strict=True)]
