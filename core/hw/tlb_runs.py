"""Stale base-page TLB entries a table at a time: the compact form of
:attr:`TlbModel.leaf <mmugather.core.hw.tlb.TlbModel.leaf>`.

A teardown's common case clears a run of PTEs of one table in one step
(:class:`~mmugather.core.clearrun.ClearRun`): every entry it leaves is a
base-page leaf entry, none dirty, and all share the CPUs that hold them and
may use them.  :class:`LeafRuns` keeps such a run as arrays (addresses,
pages, event numbers) with one holders mask and one usable mask, instead of
a dict entry per PTE.  The usual invalidations are applied to a run whole:
an invalidation of everything drops all runs; one that names addresses
drops or narrows the entries it reaches with numpy.

Anything else turns the runs into the per-entry dict the rest of
:class:`~mmugather.core.hw.tlb.TlbModel` reads (:meth:`LeafRuns.settle`), in
the order their entries were cleared and after every entry already there,
as the per-PTE path would have left it: reading ``TlbModel.leaf``, clearing
an entry the per-entry way, an invalidation that would leave the entries of
one run held by different CPUs, a run whose addresses meet a stale entry
already kept.

numpy is imported where a run is worked on: a run is only ever made by the
teardown's fast path, which has imported it, and a command that never tears
down a table (a replay) should not pay for loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmugather.core.hw.invalidate import Invalidate

if TYPE_CHECKING:
    from mmugather.core.hw.tlb import TlbModel

#: Addresses as numpy handles them: signed 64-bit.
_I64_LIMIT = 1 << 63


class LeafRun:
    """The stale entries one step left: ascending ``addrs``, their ``pages``
    (numpy int64 arrays) and event numbers (``seq0 + 1`` on, or ``seqs``
    once some are gone), and the CPUs holding them and those that may use
    them."""

    __slots__ = ("addrs", "holders", "pages", "seq0", "seqs", "usable")

    def __init__(self, addrs: Any, pages: Any, seq0: int, holders: int, usable: int) -> None:
        self.addrs = addrs
        self.pages = pages
        self.seq0 = seq0
        self.seqs: Any = None
        self.holders = holders
        self.usable = usable

    def seq_array(self) -> Any:
        if self.seqs is None:
            import numpy as np

            self.seqs = np.arange(self.seq0 + 1, self.seq0 + 1 + len(self.addrs),
                                  dtype=np.int64)
        return self.seqs


class LeafRuns:
    """The runs of one :class:`~mmugather.core.hw.tlb.TlbModel`, oldest first."""

    __slots__ = ("runs", "tlb", "top")

    def __init__(self, tlb: TlbModel) -> None:
        self.tlb = tlb
        self.runs: list[LeafRun] = []
        #: the highest address of any run (a new run above it meets none)
        self.top = -1

    def __bool__(self) -> bool:
        return bool(self.runs)

    def add(self, addrs: Any, pages: Any, seq: int, holders: int, usable: int) -> bool:
        """Keep the entries at ``addrs`` (ascending) mapping ``pages``,
        numbered from ``seq + 1``; False (nothing kept) when one of the
        addresses already has a stale base-page entry."""
        lo = int(addrs[0])
        hi = int(addrs[-1])
        if lo <= self.top:
            import numpy as np

            for run in self.runs:
                if lo <= int(run.addrs[-1]) and int(run.addrs[0]) <= hi and len(
                        np.intersect1d(addrs, run.addrs, assume_unique=True)):
                    return False
        leaf = self.tlb._leaf
        if leaf and not leaf.keys().isdisjoint(addrs.tolist()):
            return False
        self.runs.append(LeafRun(addrs, pages, seq, holders, usable))
        if hi > self.top:
            self.top = hi
        return True

    def settle(self) -> None:
        """Turn every run into the per-entry dict, oldest first."""
        leaf = self.tlb._leaf
        size = self.tlb.geometry.page_size
        for run in self.runs:
            holders = run.holders
            usable = run.usable
            for addr, page, seq in zip(run.addrs.tolist(), run.pages.tolist(),
                                       run.seq_array().tolist(), strict=True):
                leaf[addr] = [page, size, "pte", False, holders, usable, seq]
        self.runs.clear()
        self.top = -1

    def invalidate(self, inv: Invalidate, cpus: int) -> None:
        """What ``inv`` (a leaf invalidation on ``cpus``) does to the runs,
        as TlbModel._drop_leaf() would do it to their entries."""
        tlb = self.tlb
        page_size = tlb.geometry.page_size
        everything = inv.whole and inv.level in (None, "pte") and (
            not inv.page_size or inv.page_size == page_size)
        if everything and not tlb._leaf_union & ~cpus:
            self.runs.clear()
            self.top = -1
            if not tlb._leaf:
                # _drop_leaf() resets the union when it runs; it runs only
                # over a non-empty dict.
                tlb._leaf_union = 0
            return
        if (inv.level not in (None, "pte")
                or (inv.page_size and inv.page_size != page_size)):
            return  # it reaches no base-page entry
        import numpy as np

        reached = []
        keep = ~cpus
        for run in self.runs:
            hit = self._reached(inv, run.addrs, page_size)
            if hit is None:
                self.settle()  # an address numpy cannot take: the long way
                return
            n = int(np.count_nonzero(hit))
            if n and n < len(hit) and run.holders & keep:
                # Some of its entries would be held by fewer CPUs than the
                # rest: they part ways, the per-entry way.
                self.settle()
                return
            reached.append((run, hit, n))
        kept = []
        for run, hit, n in reached:
            if not n:
                kept.append(run)
                continue
            held = run.holders & keep
            if held:
                run.holders = held
                run.usable &= keep
                kept.append(run)
            elif n < len(hit):
                stay = ~hit
                run.seqs = run.seq_array()[stay]
                run.addrs = run.addrs[stay]
                run.pages = run.pages[stay]
                kept.append(run)
        self.runs = kept
        tlb._by_pfn = None

    @staticmethod
    def _reached(inv: Invalidate, addrs: Any, page_size: int) -> Any:
        """Invalidate.reaches() over base-page entries at ``addrs``: a
        boolean array, or None when the range does not fit numpy."""
        import numpy as np

        start = inv.start
        if start is None:
            return np.ones(len(addrs), dtype=bool)
        end = inv.end
        assert end is not None
        if not (0 <= start < _I64_LIMIT and 0 <= end < _I64_LIMIT
                and int(addrs[-1]) + page_size < _I64_LIMIT):
            return None
        stride = inv.stride
        if not stride:
            return (start < addrs + page_size) & (addrs < end)
        # The first address of the walk at or after each entry's start.
        steps = -((start - addrs) // stride)
        first = np.where(addrs <= start, start, start + steps * stride)
        return (first < end) & (first < addrs + page_size)
