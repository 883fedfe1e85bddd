"""Shared fixtures: the arch under test and a machine that records its events."""

from __future__ import annotations

import os
from typing import Any

import pytest
from mmugather.core.arch import make_machine
from mmugather.core.events import Collector, make_emit
from mmugather.core.mm import Machine

#: The five arch configurations of the replay contract.
ARCHES = ("generic-smp", "up", "s390", "page-size", "rcu-table-free")


@pytest.fixture
def arch() -> str:
    """The arch tox selects through ``MMUGATHER_ARCH`` (default ``generic-smp``)."""
    return os.environ.get("MMUGATHER_ARCH", "generic-smp")


def machine(arch: str, **kw: Any) -> tuple[Machine, Collector]:
    """A machine for ``arch`` (``make_machine`` keywords pass through) whose
    every event lands in the returned collector."""
    collector = Collector()
    return make_machine(arch, emit=make_emit(observers=[collector]), **kw), collector
