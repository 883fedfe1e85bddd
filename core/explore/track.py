"""What a step of the callers read: the cells of the shared memory it looked at.

The page and folio arrays, each PTE table's entries and the mm's fields are
replaced, in an explored world, by objects that behave exactly as the
originals and note each element read while a :class:`Recorder` is on.  A
step's outcome then holds for any memory that agrees with the one it ran
over on the cells it read (and on the tables and maps it may have read,
which are compared whole): that is what lets the engine reuse it.

A read the recorder cannot place on one element (iteration, a slice, a
search) marks the whole array read.
"""

from __future__ import annotations

from array import array
from typing import Any

from mmugather.core.mm import MmStruct

#: MmStruct fields, as the shared memory keeps them (mem.MM order)
MM_FIELDS = ("tlb_flush_pending", "context", "cpumask", "lazy_cpus", "live", "asid",
             "tlb_flush_batched")
_MM_SET = frozenset(MM_FIELDS)


class Recorder:
    """Cells read and written while ``on``: (tag, index) pairs, and the tags
    of arrays read or written as a whole."""

    __slots__ = ("cells", "on", "whole", "whole_written", "written")

    def __init__(self) -> None:
        self.on = False
        self.cells: set[tuple[Any, Any]] = set()
        self.whole: set[Any] = set()
        self.written: set[tuple[Any, Any]] = set()
        self.whole_written: set[Any] = set()

    def start(self) -> None:
        self.cells = set()
        self.whole = set()
        self.written = set()
        self.whole_written = set()
        self.on = True

    def stop(self) -> None:
        self.on = False


class TrackedArray(array):  # type: ignore[type-arg]
    """An ``array.array`` noting the elements read while its recorder is on."""

    tag: Any
    rec: Recorder

    def __new__(cls, typecode: str, data: Any, tag: Any, rec: Recorder) -> TrackedArray:
        obj = super().__new__(cls, typecode, data)
        obj.tag = tag
        obj.rec = rec
        return obj

    def __reduce__(self) -> Any:  # pragma: no cover - never pickled
        return array, (self.typecode, self.tobytes())

    def _whole(self) -> None:
        if self.rec.on:
            self.rec.whole.add(self.tag)

    def __getitem__(self, i: Any) -> Any:
        rec = self.rec
        if rec.on:
            if type(i) is int:
                rec.cells.add((self.tag, i if i >= 0 else i + len(self)))
            else:
                rec.whole.add(self.tag)
        return array.__getitem__(self, i)

    def __setitem__(self, i: Any, value: Any) -> None:
        rec = self.rec
        if rec.on:
            if type(i) is int:
                rec.written.add((self.tag, i if i >= 0 else i + len(self)))
            else:
                rec.whole_written.add(self.tag)
        array.__setitem__(self, i, value)

    def _rewritten(self) -> None:
        if self.rec.on:
            self.rec.whole_written.add(self.tag)

    def __delitem__(self, i: Any) -> None:
        self._rewritten()
        array.__delitem__(self, i)

    def append(self, x: Any) -> None:
        self._rewritten()
        array.append(self, x)

    def extend(self, x: Any) -> None:
        self._rewritten()
        array.extend(self, x)

    def insert(self, i: int, x: Any) -> None:
        self._rewritten()
        array.insert(self, i, x)

    def pop(self, i: int = -1) -> Any:
        self._rewritten()
        self._whole()
        return array.pop(self, i)

    def remove(self, x: Any) -> None:
        self._rewritten()
        self._whole()
        array.remove(self, x)

    def reverse(self) -> None:
        self._rewritten()
        array.reverse(self)

    def byteswap(self) -> None:
        self._rewritten()
        array.byteswap(self)

    def frombytes(self, b: Any) -> None:
        self._rewritten()
        array.frombytes(self, b)

    def fromlist(self, x: Any) -> None:
        self._rewritten()
        array.fromlist(self, x)

    def __iadd__(self, x: Any) -> Any:  # type: ignore[misc]
        self._rewritten()
        return array.__iadd__(self, x)

    def __imul__(self, n: Any) -> Any:  # type: ignore[misc]
        self._rewritten()
        return array.__imul__(self, n)

    def __iter__(self) -> Any:
        self._whole()
        return array.__iter__(self)

    def __reversed__(self) -> Any:
        self._whole()
        return reversed(array.tolist(self))

    def __contains__(self, x: object) -> bool:
        self._whole()
        return array.__contains__(self, x)

    def __eq__(self, other: object) -> bool:
        self._whole()
        return array.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def tolist(self) -> list[Any]:
        self._whole()
        return array.tolist(self)

    def tobytes(self) -> bytes:
        self._whole()
        return array.tobytes(self)

    def count(self, x: Any) -> int:
        self._whole()
        return array.count(self, x)

    def index(self, x: Any, *args: Any) -> int:
        self._whole()
        return array.index(self, x, *args)


class TrackedMm(MmStruct):
    """An :class:`MmStruct` noting which of its fields are read."""

    __slots__ = ("_rec",)

    def __getattribute__(self, name: str) -> Any:
        if name in _MM_SET:
            rec = object.__getattribute__(self, "_rec")
            if rec.on:
                rec.cells.add(("m", name))
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MM_SET:
            try:
                rec = object.__getattribute__(self, "_rec")
            except AttributeError:  # being built
                rec = None
            if rec is not None and rec.on:
                rec.written.add(("m", name))
        object.__setattr__(self, name, value)


def tracked_mm(mm: MmStruct, rec: Recorder) -> TrackedMm:
    t = TrackedMm(**{f: getattr(mm, f) for f in MM_FIELDS if f != "context"},
                  context=dict(mm.context))
    object.__setattr__(t, "_rec", rec)
    return t


def track_array(arr: array, tag: Any, rec: Recorder) -> TrackedArray:  # type: ignore[type-arg]
    return TrackedArray(arr.typecode, arr, tag, rec)
