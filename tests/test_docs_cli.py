"""The documentation of the commands and its build: every file a page names
exists, the README lists each page once, the API reference has what the
API page promises, Sphinx hides no warning, and the exit statuses the help
gives are the ones docs/commands.md gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmugather.cli import build_parser
from mmugather.cli.common import STATUS_HELP

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md"))

#: A backticked repository path: a folder and a file with an extension.
_PATH = re.compile(r"`((?:\.?[\w-]+/)+[\w*.-]+\.(?:py|md|jsonl|toml|rst|json))`")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_file_a_page_names_exists(page: Path) -> None:
    """docs/replay.md once cited spec/replay-v1.md, which is not here."""
    missing = []
    for name in _PATH.findall(page.read_text()):
        if not list(ROOT.glob(name.replace("ARCH", "*"))):
            missing.append(name)
    assert missing == []


def test_readme_lists_each_page_once() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Documentation"):]
    listed = re.findall(r"^- `docs/([\w-]+\.md)`", section, re.MULTILINE)
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == [p.name for p in PAGES if p.name != "index.md"]


def test_every_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"\n{page.stem}\n" in index, page.name


def test_sphinx_hides_no_warning() -> None:
    conf = (DOCS / "conf.py").read_text()
    assert "suppress_warnings" not in conf


def test_api_reference_has_mmstruct_vma_and_the_kernel_names() -> None:
    text = (DOCS / "reference" / "api.rst").read_text()
    assert re.search(r"automodule:: mmugather\.core\.mm\n   :members: .*MmStruct", text)
    assert re.search(r"automodule:: mmugather\.core\.vma\n   :members: Vma", text)
    assert "automodule:: mmugather.core.api\n" in text
    assert "autofunction:: mmugather.core.api.__tlb_remove_page_size" in text


def test_commands_page_gives_the_statuses_of_the_help() -> None:
    text = " ".join((DOCS / "commands.md").read_text().split())
    assert "| 130 | interrupted (Ctrl-C): `mmugather: interrupted` on standard error" in text
    assert "130 on Ctrl-C" in STATUS_HELP
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("replay", "run", "analyze", "compare", "bench"):
        parser = sub.choices[name]  # type: ignore[attr-defined]
        assert "130 on Ctrl-C" in (parser.description or ""), name
