"""Shared fixtures: the arch under test and a machine that records its events."""

from __future__ import annotations

import os
from typing import Any

import pytest
from mmugather.core import arch as arch_module
from mmugather.core.arch import ArchRegistry, make_machine
from mmugather.core.events import Collector, make_emit
from mmugather.core.mm import Machine

#: The five arch configurations of the replay contract.
ARCHES = ("generic-smp", "up", "s390", "page-size", "rcu-table-free")
#: Every built-in arch: the contract's five and the real ones.
BUILTIN_ARCHES = (*ARCHES, "x86-64", "arm64", "arm64-tlbirange", "powerpc-radix")


def pytest_configure(config: pytest.Config) -> None:
    """The suite runs on the built-in arches alone, whatever arch plugins
    the environment has installed (the tutorial's x86-64, say): the
    process-wide ``registry()`` is one without entry points, set before
    collection.  Tests about entry points build their own registry or run a
    subprocess; subprocesses that list every arch pass ``--arch``.  (Not
    when the conformance kit is asked for an installed arch.)"""
    if not config.getoption("mmu_arch", default=None):
        arch_module._default_registry = ArchRegistry(entry_points=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that take the ``arch`` fixture run once more per arch in the
    tox matrix (``pytest -m default_arch``); the rest name their arches."""
    for item in items:
        if "arch" in getattr(item, "fixturenames", ()) and "arch" not in getattr(
                getattr(item, "callspec", None), "params", {}):
            item.add_marker(pytest.mark.default_arch)


@pytest.fixture
def arch() -> str:
    """The arch tox selects through ``MMUGATHER_ARCH`` (default ``generic-smp``)."""
    return os.environ.get("MMUGATHER_ARCH", "generic-smp")


def machine(arch: str, **kw: Any) -> tuple[Machine, Collector]:
    """A machine for ``arch`` (``make_machine`` keywords pass through) whose
    every event lands in the returned collector."""
    collector = Collector()
    return make_machine(arch, emit=make_emit(observers=[collector]), **kw), collector
