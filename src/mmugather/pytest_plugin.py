"""The ``mmugather`` pytest plugin: the arch conformance kit for plugin authors.

Installed with the package (entry point ``pytest11``), it does nothing until
asked: ``pytest --mmu-arch NAME`` runs the conformance suite
(:mod:`mmugather.conformance`) against the arch ``NAME`` from the registry
(built-in or installed through the ``mmugather.arches`` entry-point group).
Each rule is one test, named ``test_conformance[RULE]``; a failure's message
starts with ``[RULE]``.

Run it from any directory (the CI uses a fresh one: ``cd "$(mktemp -d)" &&
pytest -p no:cacheprovider --mmu-arch NAME``).  Only the kit's rules run:
a project's own test suite (``testpaths``, or the tests under the current
directory) is left out, so running it from a project's root does not run
that project's tests; test paths named on the command line run beside it.

In your own tests, the ``mmu_arch`` fixture gives the selected
:class:`~mmugather.core.arch.ArchSpec`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmugather.core.arch import ArchError, ArchSpec, registry


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mmugather", "mmugather arch conformance kit")
    group.addoption(
        "--mmu-arch",
        action="append",
        default=[],
        metavar="NAME",
        help="run the mmugather conformance suite against this arch (repeatable); only "
        "the kit's rules run, plus test paths named on the command line; run it from any "
        "directory, e.g. cd \"$(mktemp -d)\" && pytest --mmu-arch NAME",
    )


def pytest_configure(config: pytest.Config) -> None:
    names = config.getoption("mmu_arch")
    if not names:
        return
    for name in names:
        try:
            registry().get(name)
        except ArchError as exc:
            raise pytest.UsageError(f"--mmu-arch: {exc}") from None
    from mmugather import conformance

    path = str(Path(conformance.__file__))
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # No paths were given: the kit alone, not the suite of the project
        # whose directory this is (its testpaths, or everything under it).
        config.args[:] = [path]
    elif path not in config.args:
        config.args.append(path)


def pytest_report_header(config: pytest.Config) -> list[str]:
    names = config.getoption("mmu_arch")
    if not names:
        return []
    from mmugather import conformance

    return [f"mmugather conformance kit: arch {', '.join(names)}; rules from "
            f"{conformance.__file__} (only these, and test paths named on the command line)"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mmu_arch" in metafunc.fixturenames:
        names = metafunc.config.getoption("mmu_arch")
        if names:
            metafunc.parametrize("mmu_arch", names, indirect=True)


@pytest.fixture
def mmu_arch(request: pytest.FixtureRequest) -> ArchSpec:
    """The arch under test: ``--mmu-arch``, else ``$MMUGATHER_ARCH`` or generic-smp."""
    name = getattr(request, "param", None)
    if name is None:
        import os

        name = os.environ.get("MMUGATHER_ARCH", "generic-smp")
    return registry().get(name)
