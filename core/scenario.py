"""Scenarios: an address space and what to do to it, in TOML.

The format is documented in ``docs/scenarios.md``.  :func:`load` validates
the whole file (unknown keys, overlaps, alignment, sizes, and the number of
pages populated against a limit) before anything is built, in time that
grows with the file, not with the sizes it names; :func:`build`
(``core/scenario_build.py``) turns a validated scenario into an
:class:`~mmugather.core.aspace.AddressSpace` for one arch geometry.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from typing import TYPE_CHECKING, Any

import attrs
from mmugather.core.aspace import VMA_KINDS
from mmugather.core.constants import Geometry

if TYPE_CHECKING:
    from mmugather.core.aspace import AddressSpace


def _toml() -> Any:
    """The TOML reader, loaded when a scenario is read: every command's
    parser imports this module for its limits, a replay reads no TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


#: folio_order = "pmd" and hugepage_size = "pmd"/"pud", resolved per arch in build()
PMD_ORDER = -1
HUGE_PMD = -1
HUGE_PUD = -2

STATES = ("present", "swap", "swapcache", "zero", "migration", "marker", "hwpoison")
OPS = ("exit", "munmap", "madvise_dontneed")
#: The top of a scenario's address space: x86-64's TASK_SIZE_MAX, 2^47 - 4K.
USER_TOP = (1 << 47) - 4096

#: The most pages a scenario may populate unless told otherwise (``--max-pages``).
MAX_PAGES = 1 << 24
#: What a populated page costs the model, about: its page-state arrays and
#: its PTE (``docs/performance.md``: 650 MiB for 16M PTEs, checker on).
BYTES_PER_PAGE = 40

TOP_KEYS = {"name", "description", "vma", "op"}
VMA_KEYS = {"name", "start", "end", "kind", "exec", "file", "pgoff", "hugepage_size", "populate",
            "shared_pmd"}
POP_KEYS = {"offset", "pages", "folio_order", "pmd_mapped", "dirty", "young", "state", "every"}
OP_KEYS = {"kind", "start", "end", "nested"}


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

    def populated(self) -> int:
        """Base pages this entry populates (one in ``every``)."""
        return -(-self.pages // self.every)


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
    #: hugetlb: its PMD tables are shared with another process
    shared_pmd: bool = False


@attrs.frozen
class Scenario:
    name: str
    description: str
    vmas: tuple[VmaSpec, ...]
    ops: tuple[dict[str, Any], ...]
    path: str = ""

    def mapped_pages(self) -> int:
        """Base pages mapped by present entries."""
        total = 0
        for vma in self.vmas:
            for pop in vma.populate:
                if pop.state in ("present", "swapcache", "zero"):
                    total += pop.populated()
        return total



def page_cost(pop: Populate, start: int, kind: str, geo: Geometry) -> int:
    """The pages a populate entry costs: the base pages it populates, in any
    state (hugetlb and THPs included: each base page has its state), but at
    least a PTE table's entries for each PTE table it needs, since each is
    built and walked whole.  So a sparse entry (``every``) spread over a
    huge VMA costs what its page tables cost, not the few pages it maps."""
    pages = pop.populated()
    if kind == "hugetlb" or pop.pmd_mapped:
        return pages
    first = start + pop.offset
    last = first + (pages - 1) * pop.every * geo.page_size  # the last page populated
    stride = pop.every * geo.page_size
    if stride >= geo.pmd_size:
        tables = pages  # one PTE table each
    else:
        tables = (last >> geo.pmd_shift) - (first >> geo.pmd_shift) + 1
    return max(pages, tables * geo.ptrs_per_pte)


def _cut(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters: an error line
    never echoes a megabyte of input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _int(path: str, key: str, value: Any, lo: int = 0, hi: int = 1 << 64) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, key, f"must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        # Addresses read best in hex, counts in decimal.
        fmt = "#x" if key.rsplit(".", 1)[-1] in ("start", "end", "offset") else ","
        shown = (f"{value:{fmt}}" if abs(value) < 1 << 128
                 else f"a {len(str(abs(value))):,}-digit number")
        raise ScenarioError(path, key, f"{shown} is outside {lo:{fmt}}..{hi:{fmt}}")
    return value


def _bool(path: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, key, f"must be true or false, not {type(value).__name__}")
    return value


def _str(path: str, key: str, value: Any, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str):
        raise ScenarioError(path, key, f"must be a string, not {type(value).__name__}")
    if choices and value not in choices:
        raise ScenarioError(path, key, f"{_cut(value)} is not one of {', '.join(choices)}")
    return value


def _keys(path: str, key: str, table: Any, allowed: set[str], required: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise ScenarioError(path, key, "must be a table")
    for k in table:
        if k not in allowed:
            k = k if len(k) <= 40 else f"{k[:40]}..."
            raise ScenarioError(
                path, f"{key}.{k}" if key else k,
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
            )
    for k in required:
        if k not in table:
            raise ScenarioError(path, f"{key}.{k}" if key else k, "missing")


def parse(
    data: dict[str, Any], path: str, page_size: int = 4096, max_pages: int = MAX_PAGES
) -> Scenario:
    """Validate a decoded TOML document.  Checks that need the arch's
    geometry (PMD alignment) use the x86-64 one here and again in build().
    At most ``max_pages`` pages may be populated (:data:`MAX_PAGES`,
    counted by :func:`page_cost`)."""
    geo = Geometry(page_size)
    populated = 0
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
                    path, f"{key}.hugepage_size", f"{_cut(raw_h)} is neither \"pmd\" nor \"pud\""
                )
            hsize = geo.pmd_size if raw_h == "pmd" else geo.pud_size
            hmark = HUGE_PMD if raw_h == "pmd" else HUGE_PUD
            if start % hsize or end % hsize:
                raise ScenarioError(path, key, f"a hugetlb VMA must be aligned to {hsize:#x}")
        elif "hugepage_size" in raw:
            raise ScenarioError(path, f"{key}.hugepage_size", "only a hugetlb VMA has one")
        shared = _bool(path, f"{key}.shared_pmd", raw.get("shared_pmd", False))
        if shared:
            if kind != "hugetlb" or hsize != geo.pmd_size:
                raise ScenarioError(path, f"{key}.shared_pmd",
                                    "only a hugetlb VMA of PMD-sized pages shares PMD tables")
            if -(-start // geo.pud_size) * geo.pud_size + geo.pud_size > end:
                raise ScenarioError(path, f"{key}.shared_pmd", "the VMA covers no whole "
                                    f"PUD-aligned range ({geo.pud_size:#x}): v6.5 shares a "
                                    "PMD table only then (want_pmd_share())")
        pops = tuple(
            _populate(path, f"{key}.populate[{k}]", p, start, end, kind, hsize, geo)
            for k, p in enumerate(_list(path, f"{key}.populate", raw.get("populate", [])))
        )
        for j, pop in enumerate(pops):
            populated += page_cost(pop, start, kind, geo)
            if populated > max_pages:
                raise ScenarioError(
                    path, f"{key}.populate[{j}]",
                    f"{populated:,} pages populated so far (a sparse PTE table counts "
                    f"whole), more than the limit of {max_pages:,} (about {_memory(max_pages)} "
                    f"of memory at {BYTES_PER_PAGE} bytes a page); --max-pages N raises it",
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
                shared_pmd=shared,
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
            if "nested" in raw:
                # exit_mmap() runs when no user is left: nothing can be
                # batching PTE changes on the mm beside it.
                raise ScenarioError(path, f"{key}.nested", "exit has no other gather beside "
                                    "it (only munmap and madvise_dontneed are nested)")
        else:
            if _bool(path, f"{key}.nested", raw.get("nested", False)):
                op["nested"] = True
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


def _memory(pages: int) -> str:
    size = pages * BYTES_PER_PAGE
    return f"{size / (1 << 20):,.0f} MiB" if size >= 1 << 20 else f"{size / 1024:,.0f} KiB"


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


def load(path: str, page_size: int = 4096, max_pages: int = MAX_PAGES) -> Scenario:
    """Read and validate a scenario file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read: {exc.strerror or exc}") from None
    return parse(_decode(raw, path), path, page_size, max_pages)


NL = b"\n"
#: An integer literal too long for int() (sys.get_int_max_str_digits()).
_LONG_DIGITS = re.compile(rb"[0-9_]{4300,}")


def _decode(raw: bytes, path: str) -> dict[str, Any]:
    """The TOML document; every way it can fail is one line naming the file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(NL, 0, exc.start) + 1
        raise ScenarioError(f"{path}:{line}", "", f"not UTF-8: byte {raw[exc.start]:#04x} "
                            f"at offset {exc.start:,}") from None
    tomllib = _toml()
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "", f"not TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(path, "", "not TOML as this reader takes it: arrays or "
                            "tables nested too deeply") from None
    except ValueError:
        # tomllib hands int() a literal longer than Python converts.
        m = _LONG_DIGITS.search(raw)
        where = f"{path}:{raw.count(NL, 0, m.start()) + 1}" if m else path
        raise ScenarioError(where, "", "an integer of more than 4,300 digits") from None


BUILTIN_PACKAGE = "mmugather.core.scenarios"


def builtin_names() -> list[str]:
    from importlib import resources

    files = resources.files(BUILTIN_PACKAGE)
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def load_builtin(name: str, page_size: int = 4096, max_pages: int = MAX_PAGES) -> Scenario:
    from importlib import resources

    files = resources.files(BUILTIN_PACKAGE)
    item = files / f"{name}.toml"
    if not item.is_file():
        raise ScenarioError(name, "", f"no such built-in scenario (built-in: "
                            f"{', '.join(builtin_names())})")
    data = _toml().loads(item.read_text())
    return parse(data, f"<builtin {name}>", page_size, max_pages)


def resolve(name_or_path: str, page_size: int = 4096, max_pages: int = MAX_PAGES) -> Scenario:
    """A built-in scenario by name, else a file path."""
    names = builtin_names()
    if name_or_path in names:
        return load_builtin(name_or_path, page_size, max_pages)
    if ("/" not in name_or_path and not name_or_path.endswith(".toml")
            and not os.path.exists(name_or_path)):
        raise ScenarioError(name_or_path, "", "no such built-in scenario or file (built-in: "
                            f"{', '.join(names)}; 'mmugather scenarios' describes them)")
    return load(name_or_path, page_size, max_pages)


def check_geometry(scenario: Scenario, geo: Geometry, arch: str = "") -> None:
    """The checks that depend on the arch's geometry (TASK_SIZE, folio
    orders, huge page alignment, the page cache); ``arch`` names the arch
    in the messages; ``core/scenario_build.py``."""
    from mmugather.core.scenario_build import check_geometry as check

    check(scenario, geo, arch)


def build(scenario: Scenario, geo: Geometry, arch: str = "", *,
          pmd_share: bool = False) -> AddressSpace:
    """Materialise the scenario's address space for one arch geometry (after
    :func:`check_geometry`); ``core/scenario_build.py``.  ``pmd_share``: the
    arch shares hugetlb PMD tables (ARCH_WANT_HUGE_PMD_SHARE), so the
    ``shared_pmd`` VMAs get shared tables."""
    from mmugather.core.scenario_build import build as build_aspace

    return build_aspace(scenario, geo, arch, pmd_share=pmd_share)
