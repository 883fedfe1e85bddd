"""What every command shares: exit statuses, the error line, the default arch."""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def default_arch() -> str:
    """``$MMUGATHER_ARCH``, or the built-in default (the tox matrix sets it)."""
    from mmugather.arches import DEFAULT_ARCH

    return os.environ.get("MMUGATHER_ARCH", DEFAULT_ARCH)


def error(message: str) -> int:
    """One line on stderr, ``mmugather: MESSAGE``; the usage exit status."""
    sys.stderr.write(f"mmugather: {message}\n")
    return EXIT_USAGE
