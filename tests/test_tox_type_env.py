"""tox's ``type`` env checks an installed copy without its dependencies
(``tools/typecheck``): it must list every runtime dependency itself, or
mypy fails on an import the dev venv happens to have (the CI failure of a
``rich`` missing there)."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_the_type_env_installs_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # A dependency only older Pythons take is not one mypy sees on ours.
    runtime = {_name(r) for r in project["dependencies"] if "python_version" not in r}
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    deps = {_name(line) for line in tox["testenv:type"]["deps"].splitlines() if line.strip()}
    assert runtime, "no runtime dependencies read from pyproject.toml"
    assert sorted(runtime - deps) == []
