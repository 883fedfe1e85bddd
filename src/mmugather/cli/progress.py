"""Progress on stderr for work that can take more than a couple of seconds.

Shown only when stderr is a terminal, and only once the work has gone on for
:data:`DELAY` seconds (``$MMUGATHER_PROGRESS_DELAY``, default 2), so short
commands and anything piped or logged stay quiet; it is erased when the work
ends.  Drawn by rich (a dependency), imported only when a bar is shown.
"""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType
from typing import IO, Any


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get("MMUGATHER_PROGRESS_DELAY", "2")))
    except ValueError:
        return 2.0


def is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """``with Progress("run default") as p: p.advance(n)``.

    ``total`` None draws a spinner (elapsed time only); else a bar.
    Everything is a no-op when stderr is not a terminal.
    """

    def __init__(self, description: str, total: int | None = None, *,
                 stream: IO[str] | None = None, delay: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream)
        self.description = description
        self.total = total
        self.delay = _delay() if delay is None else delay
        self._rich: Any = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._started = False
        self._closed = False

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        console = Console(file=self.stream, force_terminal=True)
        self._rich = RichProgress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self._task = self._rich.add_task(self.description, total=self.total)
        if self.delay <= 0:
            self._start()
        else:
            self._timer = threading.Timer(self.delay, self._start)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _start(self) -> None:
        with self._lock:
            if not self._closed and not self._started:
                self._started = True
                self._rich.start()

    def advance(self, n: int = 1) -> None:
        if self._rich is not None:
            self._rich.advance(self._task, n)

    def set_total(self, total: int | None) -> None:
        if self._rich is not None:
            self._rich.update(self._task, total=total)

    def reset(self, description: str, total: int | None = None) -> None:
        """Start over on a new piece of work."""
        if self._rich is not None:
            self._rich.reset(self._task, description=description, total=total)

    def describe(self, description: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, description=description)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._started:
                self._rich.stop()
