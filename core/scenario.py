"""Scenarios: an address space and what to do to it, in TOML.

The format is documented in ``docs/scenarios.md``.  :func:`load` validates
the whole file (unknown keys, overlaps, alignment, sizes) before anything
is built, and :func:`build` turns a validated scenario into an
:class:`~mmugather.core.aspace.AddressSpace` for one arch geometry.
"""

from __future__ import annotations

import itertools
import sys
from array import array
from importlib import resources
from typing import Any

import attrs
from mmugather.core.aspace import (
    F_ANON,
    F_HUGETLB,
    F_SHARED,
    F_SWAPCACHE,
    PFN_BASE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_YOUNG,
    SWP_HWPOISON,
    SWP_MARKER,
    SWP_MIGRATION,
    SWP_SWAP,
    VMA_KINDS,
    ZERO_PFN,
    AddressSpace,
    MmVma,
)
from mmugather.core.constants import Geometry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: folio_order = "pmd" and hugepage_size = "pmd"/"pud", resolved per arch in build()
PMD_ORDER = -1
HUGE_PMD = -1
HUGE_PUD = -2

STATES = ("present", "swap", "swapcache", "zero", "migration", "marker", "hwpoison")
OPS = ("exit", "munmap", "madvise_dontneed")
#: The top of a scenario's address space: x86-64's TASK_SIZE_MAX, 2^47 - 4K.
USER_TOP = (1 << 47) - 4096

TOP_KEYS = {"name", "description", "vma", "op"}
VMA_KEYS = {"name", "start", "end", "kind", "exec", "file", "pgoff", "hugepage_size", "populate"}
POP_KEYS = {"offset", "pages", "folio_order", "pmd_mapped", "dirty", "young", "state", "every"}
OP_KEYS = {"kind", "start", "end"}


class ScenarioError(Exception):
    """A rejected scenario: ``file: key: reason``."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path, self.key, self.reason = path, key, reason
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


@attrs.frozen
class Populate:
    offset: int
    pages: int
    folio_order: int
    pmd_mapped: bool
    dirty: bool
    young: bool
    state: str
    every: int


@attrs.frozen
class VmaSpec:
    name: str
    start: int
    end: int
    kind: str
    exec: bool
    file: str
    pgoff: int
    hugepage_size: int
    populate: tuple[Populate, ...]


@attrs.frozen
class Scenario:
    name: str
    description: str
    vmas: tuple[VmaSpec, ...]
    ops: tuple[dict[str, Any], ...]
    path: str = ""

    def mapped_pages(self) -> int:
        total = 0
        for vma in self.vmas:
            for pop in vma.populate:
                if pop.state in ("present", "swapcache", "zero"):
                    total += -(-pop.pages // pop.every)
        return total


def _int(path: str, key: str, value: Any, lo: int = 0, hi: int = 1 << 64) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, key, f"must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        # Addresses read best in hex, counts in decimal.
        fmt = "#x" if key.rsplit(".", 1)[-1] in ("start", "end", "offset") else ","
        raise ScenarioError(path, key, f"{value:{fmt}} is outside {lo:{fmt}}..{hi:{fmt}}")
    return value


def _bool(path: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, key, f"must be true or false, not {type(value).__name__}")
    return value


def _str(path: str, key: str, value: Any, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str):
        raise ScenarioError(path, key, f"must be a string, not {type(value).__name__}")
    if choices and value not in choices:
        raise ScenarioError(path, key, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _keys(path: str, key: str, table: Any, allowed: set[str], required: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise ScenarioError(path, key, "must be a table")
    for k in table:
        if k not in allowed:
            raise ScenarioError(
                path, f"{key}.{k}" if key else k,
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
            )
    for k in required:
        if k not in table:
            raise ScenarioError(path, f"{key}.{k}" if key else k, "missing")


def parse(data: dict[str, Any], path: str, page_size: int = 4096) -> Scenario:
    """Validate a decoded TOML document.  Checks that need the arch's
    geometry (PMD alignment) use the x86-64 one here and again in build()."""
    geo = Geometry(page_size)
    _keys(path, "", data, TOP_KEYS, ("vma", "op"))
    name = _str(path, "name", data.get("name", path))
    description = _str(path, "description", data.get("description", ""))
    raw_vmas = data["vma"]
    if not isinstance(raw_vmas, list) or not raw_vmas:
        raise ScenarioError(path, "vma", "must be a non-empty array of tables ([[vma]])")
    vmas: list[VmaSpec] = []
    for n, raw in enumerate(raw_vmas):
        key = f"vma[{n}]"
        _keys(path, key, raw, VMA_KEYS, ("start", "end"))
        start = _int(path, f"{key}.start", raw["start"], 0, USER_TOP)
        end = _int(path, f"{key}.end", raw["end"], 0, USER_TOP)
        for k, v in (("start", start), ("end", end)):
            if v % page_size:
                raise ScenarioError(
                    path, f"{key}.{k}", f"{v:#x} is not aligned to PAGE_SIZE ({page_size})"
                )
        if end <= start:
            raise ScenarioError(path, key, f"end {end:#x} is not above start {start:#x}")
        kind = _str(path, f"{key}.kind", raw.get("kind", "anon"), VMA_KINDS)
        file = _str(path, f"{key}.file", raw.get("file", ""))
        if kind in ("file", "file-shared", "hugetlb") and not file:
            file = f"{kind}@{start:#x}"
        if kind in ("anon", "pfnmap") and "file" in raw:
            raise ScenarioError(path, f"{key}.file", f"a {kind} VMA has no file")
        hsize = 0
        hmark = 0
        if kind == "hugetlb":
            raw_h = raw.get("hugepage_size", "pmd")
            if raw_h not in ("pmd", "pud"):
                raise ScenarioError(
                    path, f"{key}.hugepage_size", f"{raw_h!r} is neither \"pmd\" nor \"pud\""
                )
            hsize = geo.pmd_size if raw_h == "pmd" else geo.pud_size
            hmark = HUGE_PMD if raw_h == "pmd" else HUGE_PUD
            if start % hsize or end % hsize:
                raise ScenarioError(path, key, f"a hugetlb VMA must be aligned to {hsize:#x}")
        elif "hugepage_size" in raw:
            raise ScenarioError(path, f"{key}.hugepage_size", "only a hugetlb VMA has one")
        pops = tuple(
            _populate(path, f"{key}.populate[{k}]", p, start, end, kind, hsize, geo)
            for k, p in enumerate(_list(path, f"{key}.populate", raw.get("populate", [])))
        )
        _no_double_mapping(path, key, pops, page_size)
        vmas.append(
            VmaSpec(
                name=_str(path, f"{key}.name", raw.get("name", "")),
                start=start,
                end=end,
                kind=kind,
                exec=_bool(path, f"{key}.exec", raw.get("exec", False)),
                file=file,
                pgoff=_int(path, f"{key}.pgoff", raw.get("pgoff", 0), 0, 1 << 40),
                hugepage_size=hmark,
                populate=pops,
            )
        )
    order = sorted(range(len(vmas)), key=lambda i: vmas[i].start)
    for a, b in itertools.pairwise(order):
        if vmas[b].start < vmas[a].end:
            raise ScenarioError(
                path, f"vma[{b}]",
                f"[{vmas[b].start:#x}, {vmas[b].end:#x}) overlaps vma[{a}] "
                f"[{vmas[a].start:#x}, {vmas[a].end:#x})",
            )
    ops = []
    for n, raw in enumerate(_list(path, "op", data["op"])):
        key = f"op[{n}]"
        _keys(path, key, raw, OP_KEYS, ("kind",))
        kind = _str(path, f"{key}.kind", raw["kind"], OPS)
        op: dict[str, Any] = {"kind": kind}
        if kind == "exit":
            if "start" in raw or "end" in raw:
                raise ScenarioError(path, key, "exit takes no range")
        else:
            for k in ("start", "end"):
                if k not in raw:
                    raise ScenarioError(path, f"{key}.{k}", "missing")
                op[k] = _int(path, f"{key}.{k}", raw[k], 0, USER_TOP)
                if op[k] % page_size:
                    raise ScenarioError(path, f"{key}.{k}", f"{op[k]:#x} is not page-aligned")
            if op["end"] <= op["start"]:
                raise ScenarioError(path, key, "end is not above start")
        ops.append(op)
    if not ops:
        raise ScenarioError(path, "op", "no operations")
    return Scenario(name=name, description=description, vmas=tuple(vmas), ops=tuple(ops),
                    path=path)


def _list(path: str, key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ScenarioError(path, key, "must be an array of tables")
    return value


def _populate(
    path: str, key: str, raw: Any, start: int, end: int, kind: str, hsize: int, geo: Geometry
) -> Populate:
    _keys(path, key, raw, POP_KEYS, ())
    page_size = geo.page_size
    size = end - start
    offset = _int(path, f"{key}.offset", raw.get("offset", 0), 0, size - 1)
    if offset % page_size:
        raise ScenarioError(path, f"{key}.offset", f"{offset:#x} is not page-aligned")
    avail = (size - offset) // page_size
    pages = _int(path, f"{key}.pages", raw.get("pages", avail), 1, 1 << 40)
    if pages > avail:
        raise ScenarioError(
            path, f"{key}.pages", f"{pages} pages from offset {offset:#x} run past the VMA end"
        )
    pmd_order = geo.pmd_shift - geo.page_shift
    raw_order = raw.get("folio_order", 0)
    # "pmd": the arch's PMD order, whatever it is (9 on x86-64, 8 on s390).
    order = pmd_order if raw_order == "pmd" else _int(
        path, f"{key}.folio_order", raw_order, 0, pmd_order
    )
    pmd_mapped = _bool(path, f"{key}.pmd_mapped", raw.get("pmd_mapped", False))
    state = _str(path, f"{key}.state", raw.get("state", "present"), STATES)
    every = _int(path, f"{key}.every", raw.get("every", 1), 1, 1 << 20)
    folio_bytes = page_size << order
    if kind == "hugetlb":
        if order or pmd_mapped or every != 1 or state not in ("present", "migration"):
            raise ScenarioError(
                path, key, "a hugetlb VMA is populated with present (or migration) huge pages "
                "only: no folio_order, pmd_mapped or every"
            )
        if offset % hsize or (pages * page_size) % hsize:
            raise ScenarioError(path, key, f"hugetlb pages are {hsize:#x} bytes: misaligned")
    if order:
        if folio_bytes > end - start:
            raise ScenarioError(
                path, f"{key}.folio_order",
                f"a folio of order {order} ({folio_bytes} bytes) is larger than the VMA",
            )
        if (start + offset) % folio_bytes or (pages * page_size) % folio_bytes:
            raise ScenarioError(
                path, key,
                f"folios of order {order} must start and end {folio_bytes:#x}-aligned",
            )
        if every != 1:
            raise ScenarioError(path, f"{key}.every", "large folios are mapped whole (every = 1)")
        if state not in ("present", "swapcache"):
            raise ScenarioError(path, f"{key}.state", f"a large folio cannot be {state!r}")
    if pmd_mapped and order != pmd_order:  # order is still the number here
        raise ScenarioError(
            path, f"{key}.pmd_mapped", f"only a PMD-order folio (order {pmd_order}) maps with a PMD"
        )
    if pmd_mapped and kind not in ("anon", "file", "file-shared"):
        raise ScenarioError(path, f"{key}.pmd_mapped", f"a {kind} VMA has no THPs")
    if state in ("zero", "swap", "swapcache") and kind != "anon":
        raise ScenarioError(path, f"{key}.state", f"{state!r} pages are anonymous only")
    if kind == "pfnmap" and state != "present":
        raise ScenarioError(path, f"{key}.state", "a PFN map holds present entries only")
    if raw_order == "pmd":
        order = PMD_ORDER
    return Populate(offset, pages, order, pmd_mapped,
                    _bool(path, f"{key}.dirty", raw.get("dirty", False)),
                    _bool(path, f"{key}.young", raw.get("young", True)), state, every)


def _no_double_mapping(path: str, key: str, pops: tuple[Populate, ...], page_size: int) -> None:
    spans = sorted(
        (p.offset, p.offset + p.pages * page_size, k) for k, p in enumerate(pops)
    )
    for (_s1, e1, k1), (s2, _e2, k2) in itertools.pairwise(spans):
        if s2 < e1:
            raise ScenarioError(
                path, f"{key}.populate[{k2}]",
                f"offset {s2:#x} is already populated by populate[{k1}]: a PTE maps one page",
            )


def load(path: str, page_size: int = 4096) -> Scenario:
    """Read and validate a scenario file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "", f"not TOML: {exc}") from None
    return parse(data, path, page_size)


BUILTIN_PACKAGE = "mmugather.core.scenarios"


def builtin_names() -> list[str]:
    files = resources.files(BUILTIN_PACKAGE)
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def load_builtin(name: str, page_size: int = 4096) -> Scenario:
    files = resources.files(BUILTIN_PACKAGE)
    item = files / f"{name}.toml"
    if not item.is_file():
        raise ScenarioError(name, "", f"no such built-in scenario (built-in: "
                            f"{', '.join(builtin_names())})")
    data = tomllib.loads(item.read_text())
    return parse(data, f"<builtin {name}>", page_size)


def resolve(name_or_path: str, page_size: int = 4096) -> Scenario:
    """A built-in scenario by name, else a file path."""
    if name_or_path in builtin_names():
        return load_builtin(name_or_path, page_size)
    return load(name_or_path, page_size)


def check_geometry(scenario: Scenario, geo: Geometry) -> None:
    """The checks that depend on the arch's geometry: folio orders against
    its PMD order, alignment to its huge page sizes, and the page cache (one
    folio order per file page, folios at aligned file offsets)."""
    path = scenario.path
    pmd_order = geo.pmd_shift - geo.page_shift
    cache: dict[tuple[str, int], int] = {}
    for n, spec in enumerate(scenario.vmas):
        key = f"vma[{n}]"
        if spec.kind == "hugetlb":
            size = geo.pmd_size if spec.hugepage_size == HUGE_PMD else geo.pud_size
            if spec.start % size or spec.end % size:
                raise ScenarioError(path, key, f"a hugetlb VMA must be aligned to {size:#x} "
                                    "on this arch")
            continue
        for k, pop in enumerate(spec.populate):
            pkey = f"{key}.populate[{k}]"
            order = pmd_order if pop.folio_order == PMD_ORDER else pop.folio_order
            if order > pmd_order:
                raise ScenarioError(path, f"{pkey}.folio_order",
                                    f"order {order} is above this arch's PMD order {pmd_order}")
            if pop.pmd_mapped and order != pmd_order:
                raise ScenarioError(path, f"{pkey}.pmd_mapped",
                                    f"only a folio of this arch's PMD order ({pmd_order}) "
                                    "maps with a PMD")
            nr = 1 << order
            folio_bytes = geo.page_size << order
            if order and ((spec.start + pop.offset) % folio_bytes
                          or (pop.pages * geo.page_size) % folio_bytes):
                raise ScenarioError(path, pkey, f"folios of order {order} must start and end "
                                    f"{folio_bytes:#x}-aligned on this arch")
            if spec.kind not in ("file", "file-shared") or pop.state != "present":
                continue
            first = spec.pgoff + pop.offset // geo.page_size
            if first % nr:
                raise ScenarioError(path, pkey, f"file folios of order {order} sit at file "
                                    f"offsets aligned to {nr} pages; this one starts at {first}")
            step = nr if order else pop.every
            for index in range(first, first + pop.pages, step):
                have = cache.setdefault((spec.file, index), order)
                if have != order:
                    raise ScenarioError(path, pkey, f"page {index} of file {spec.file!r} is "
                                        f"cached already as a folio of order {have}, not {order}")


def build(scenario: Scenario, geo: Geometry) -> AddressSpace:
    """Materialise the scenario's address space for one arch geometry
    (after :func:`check_geometry`)."""
    check_geometry(scenario, geo)
    aspace = AddressSpace(geometry=geo)
    store = aspace.pages
    page_size = geo.page_size
    pmd_order = geo.pmd_shift - geo.page_shift
    for spec in scenario.vmas:
        hpage = {HUGE_PMD: geo.pmd_size, HUGE_PUD: geo.pud_size}.get(spec.hugepage_size, 0)
        vma = MmVma(
            start=spec.start, end=spec.end, kind=spec.kind, exec=spec.exec, name=spec.name,
            hpage_size=hpage, file=spec.file, pgoff=spec.pgoff,
        )
        aspace.vmas.append(vma)
        for pop in spec.populate:
            if pop.folio_order == PMD_ORDER:
                pop = attrs.evolve(pop, folio_order=pmd_order)
            if spec.kind == "hugetlb":
                _populate_hugetlb(aspace, vma, pop)
                continue
            bits = PTE_PRESENT | (PTE_DIRTY if pop.dirty else 0) | (PTE_YOUNG if pop.young else 0)
            if (spec.kind == "anon" and pop.state in ("present", "swapcache")
                    and pop.folio_order == 0 and pop.every == 1):
                _populate_small_anon(aspace, spec.start + pop.offset, pop, bits)
                continue
            nr = 1 << pop.folio_order
            addr = spec.start + pop.offset
            last = addr + pop.pages * page_size
            step = page_size * pop.every
            while addr < last:
                if pop.state == "swap":
                    slot = aspace.next_swap
                    aspace.next_swap += 1
                    aspace.swap_map[slot] = 1
                    aspace.set_pte(addr, slot << 8 | SWP_SWAP)
                elif pop.state == "zero":
                    aspace.set_pte(addr, ZERO_PFN << 8 | PTE_PRESENT | PTE_SPECIAL)
                elif pop.state == "marker":
                    aspace.set_pte(addr, 1 << 8 | SWP_MARKER)
                elif pop.state == "hwpoison":
                    aspace.set_pte(addr, 1 << 8 | SWP_HWPOISON)
                elif pop.state == "migration":
                    head = store.new_folio(0, F_ANON if spec.kind == "anon" else 0)
                    aspace.set_pte(addr, head << 8 | SWP_MIGRATION)
                elif spec.kind == "pfnmap":
                    aspace.set_pte(addr, ((addr >> geo.page_shift) | 1 << 36) << 8 | bits
                                   | PTE_SPECIAL)
                else:
                    head = _folio_for(aspace, vma, addr, pop, nr)
                    if pop.pmd_mapped:
                        _map_pmd(aspace, vma, addr, head, bits)
                        addr += nr * page_size
                        continue
                    for j in range(nr):
                        _map_pte(aspace, addr + j * page_size, head + j, bits)
                    addr += nr * page_size
                    continue
                addr += step
    return aspace


def _folio_for(aspace: AddressSpace, vma: MmVma, addr: int, pop: Populate, nr: int) -> int:
    """The folio mapped at ``addr``: new for anon, from the page cache for files."""
    store = aspace.pages
    if vma.kind == "anon":
        flags = F_ANON | (F_SWAPCACHE if pop.state == "swapcache" else 0)
        head = store.new_folio(pop.folio_order, flags)
        if flags & F_SWAPCACHE:
            store.refcount[head - PFN_BASE] += nr
        return head
    index = vma.pgoff + ((addr - vma.start) >> aspace.geometry.page_shift)
    key = (vma.file, index)
    head = aspace.page_cache.get(key, 0)
    if not head:
        flags = F_SHARED if vma.kind == "file-shared" else 0
        head = store.new_folio(pop.folio_order, flags)
        store.refcount[head - PFN_BASE] += 1  # the page cache's reference
        for j in range(nr):
            aspace.page_cache[(vma.file, index + j)] = head + j
    elif store.order[store.head[head - PFN_BASE]] != pop.folio_order:
        raise ScenarioError(vma.file, "populate",
                            "a file page is cached already with another folio order")
    return head


def _map_pte(aspace: AddressSpace, addr: int, pfn: int, bits: int) -> None:
    store = aspace.pages
    idx = pfn - PFN_BASE
    head = store.head[idx]
    aspace.set_pte(addr, pfn << 8 | bits)
    if store.mapcount[idx] == 0:
        store.nr_mapped[head] += 1
    store.mapcount[idx] += 1
    store.refcount[head] += 1


def _map_pmd(aspace: AddressSpace, vma: MmVma, addr: int, head: int, bits: int) -> None:
    geo = aspace.geometry
    aspace.ensure_tables(addr, upto="pmd")
    pmd_i = addr >> geo.pmd_shift
    aspace.huge_pmds[pmd_i] = head << 8 | bits
    store = aspace.pages
    store.entire_mapcount[head - PFN_BASE] += 1
    store.refcount[head - PFN_BASE] += 1
    if vma.kind == "anon":
        # An anon THP keeps a PTE table in reserve for a later split.
        aspace.deposited[pmd_i] = aspace.new_table("pte", addr)


def _populate_hugetlb(aspace: AddressSpace, vma: MmVma, pop: Populate) -> None:
    geo = aspace.geometry
    sz = vma.hpage_size
    order = (sz // geo.page_size).bit_length() - 1
    store = aspace.pages
    addr = vma.start + pop.offset
    last = addr + pop.pages * geo.page_size
    while addr < last:
        if sz >= geo.pud_size:
            aspace.ensure_tables(addr, upto="pud")
            table, key = aspace.huge_puds, addr >> geo.pud_shift
        else:
            aspace.ensure_tables(addr, upto="pmd")
            table, key = aspace.huge_pmds, addr >> geo.pmd_shift
        if pop.state == "migration":
            table[key] = 1 << 8 | SWP_MIGRATION
        else:
            head = store.new_folio(order, F_HUGETLB)
            store.entire_mapcount[head - PFN_BASE] = 1
            store.refcount[head - PFN_BASE] = 2  # the mapping and hugetlbfs' page cache
            table[key] = head << 8 | PTE_PRESENT | (PTE_DIRTY if pop.dirty else 0)
        addr += sz


def _populate_small_anon(aspace: AddressSpace, addr: int, pop: Populate, bits: int) -> None:
    """The common case in bulk: a run of order-0 anon pages, a PTE table at a time."""
    geo = aspace.geometry
    swapcache = pop.state == "swapcache"
    flags = F_ANON | (F_SWAPCACHE if swapcache else 0)
    first = aspace.pages.new_small_folios(pop.pages, flags, 1, 2 if swapcache else 1)
    per_table = geo.ptrs_per_pte
    left = pop.pages
    pfn = first
    while left:
        table = aspace.ensure_tables(addr)
        assert table is not None
        i = (addr >> geo.page_shift) & (per_table - 1)
        n = min(left, per_table - i)
        table.entries[i : i + n] = array("q", [(p << 8) | bits for p in range(pfn, pfn + n)])
        pfn += n
        left -= n
        addr += n * geo.page_size
