"""What every command shares: exit statuses, the error line, the default arch,
and the output layer.

Every file a command writes (``--events``, ``--trace``, ``--plot``, ``bench
--output``) is written under a temporary name in its own directory and
renamed into place only when the command has finished well; on a rejection,
a failed write or Ctrl-C the temporary is removed, so a reader never finds a
half-written file.  A failed write (a full disk, ``/dev/full``) names the
file, or "standard output", in one line on stderr and exits 2; Ctrl-C prints
``mmugather: interrupted`` and exits 130 (128 + SIGINT, as a shell would).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: 128 + SIGINT
EXIT_INTERRUPTED = 130

#: The exit statuses every command shares, for its ``--help``.
STATUS_HELP = (
    "2 when the input or the options were rejected or an output could not be "
    "written (one line on stderr, nothing on stdout, no output file); 130 on Ctrl-C "
    "(no output file either)."
)


class CliError(Exception):
    """A rejection: ``mmugather: MESSAGE`` on stderr, exit status 2."""


def default_arch() -> str:
    """``$MMUGATHER_ARCH``, or the built-in default (the tox matrix sets it)."""
    from mmugather.arches import DEFAULT_ARCH

    return os.environ.get("MMUGATHER_ARCH", DEFAULT_ARCH)


def error(message: str) -> int:
    """One line on stderr, ``mmugather: MESSAGE``; the usage exit status."""
    sys.stderr.write(f"mmugather: {message}\n")
    return EXIT_USAGE


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def non_negative(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class StoreOnce(argparse.Action):
    """``store``, but an option given twice is an error rather than the last
    one silently winning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        seen: set[str] = getattr(namespace, "_given", set())
        if self.dest in seen:
            raise argparse.ArgumentError(self, "given twice (it takes one value)")
        seen.add(self.dest)
        namespace._given = seen
        setattr(namespace, self.dest, values)


def no_duplicates(names: Sequence[str], what: str) -> None:
    """Reject a repeatable option that names the same thing twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CliError(f"{what} {name!r} is named twice")
        seen.add(name)


# --------------------------------------------------------------------------
# Files written
# --------------------------------------------------------------------------


class _Raw(io.FileIO):
    """A file whose write errors name it (the buffered layer above calls
    ``write`` once per buffer, so this costs nothing per line).  ``discard``
    turns it into a sink, so that closing an abandoned file flushes nowhere."""

    label: str = ""
    discard: bool = False

    def write(self, b: Any) -> int:
        if self.discard:
            return len(memoryview(b))
        try:
            return super().write(b)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise CliError(f"{self.label}: cannot write: {exc.strerror or exc}") from None


def _wrap(raw: _Raw, text: bool, line_buffering: bool = False) -> IO[Any]:
    buffered = io.BufferedWriter(raw, 1 << 16)
    if not text:
        return buffered
    return io.TextIOWrapper(buffered, encoding="utf-8", newline="\n",
                            line_buffering=line_buffering)


def _new_mode(path: str) -> int:
    """The permissions a plain ``open()`` would give: the old file's, else
    0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def check_output(path: str) -> None:
    """Can ``path`` be written?  Raises :class:`CliError` naming it.  Used
    before long work (``bench``), and by :class:`Pending` itself."""
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory (give a file name)")
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise CliError(f"{path}: cannot write: no directory {directory}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CliError(f"{path}: cannot write: {os.strerror(errno.EACCES)}")
    if not os.access(directory, os.W_OK | os.X_OK) and not _is_special(path):
        raise CliError(f"{path}: cannot write: {os.strerror(errno.EACCES)} (directory "
                       f"{directory})")


def _is_special(path: str) -> bool:
    """A device or a pipe (``/dev/null``, ``/dev/full``, ``/dev/stdout``):
    written in place, never renamed over."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Ctrl-C held off (delivered on leaving) where it would leave a file
    created but not yet known to :class:`Outputs`, which removes it.  A
    handler that notes it, not a blocked signal: a process-wide SIGINT goes
    to whichever thread does not block it, and Python raises it in the main
    thread all the same."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            signal.raise_signal(signal.SIGINT)


class Pending:
    """One output file being written: to a temporary name in its directory
    until :meth:`commit` renames it into place; :meth:`discard` removes it.
    A device is written in place."""

    def __init__(self, path: str, *, text: bool = False) -> None:
        check_output(path)
        self.path = path
        self.tmp: str | None = None
        try:
            if _is_special(path):
                raw = _Raw(path, "wb")
            else:
                directory = os.path.dirname(path) or "."
                fd, self.tmp = tempfile.mkstemp(
                    prefix=f".{os.path.basename(path)}.", suffix=".part", dir=directory
                )
                os.fchmod(fd, _new_mode(path))
                raw = _Raw(fd, "wb")
        except OSError as exc:
            raise CliError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raw.label = path
        self.raw = raw
        self.file: IO[Any] = _wrap(raw, text)

    def close(self) -> None:
        """Flush and close (a write error raises :class:`CliError`)."""
        if not self.file.closed:
            self.file.close()

    def commit(self) -> None:
        self.close()
        if self.tmp is not None:
            try:
                os.replace(self.tmp, self.path)
            except OSError as exc:
                raise CliError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
            self.tmp = None

    def discard(self) -> None:
        self.raw.discard = True
        with contextlib.suppress(Exception):
            self.file.close()
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None


@contextlib.contextmanager
def atomic_output(path: str, *, text: bool = False) -> Iterator[IO[Any]]:
    """``with atomic_output(path) as f``: ``path`` appears, complete, when the
    block ends well, and not at all otherwise."""
    pending = Pending(path, text=text)
    try:
        yield pending.file
        pending.commit()
    except BaseException:
        pending.discard()
        raise


class Outputs:
    """The files one command writes, committed together when it succeeds."""

    def __init__(self) -> None:
        self.pending: list[Pending] = []
        self.stdout: IO[Any] | None = None

    def open(self, path: str, *, text: bool = False) -> IO[Any]:
        with _sigint_held():
            pending = Pending(path, text=text)
            self.pending.append(pending)
        return pending.file

    def open_stdout(self, *, text: bool = False) -> IO[Any]:
        """Standard output for a stream of lines (replay's events), its write
        errors naming it."""
        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            # Captured (tests): write through the capture.
            return sys.stdout if text else sys.stdout.buffer
        raw = _Raw(fd, "wb", closefd=False)
        raw.label = "standard output"
        self.stdout = _wrap(raw, text, line_buffering=text and raw.isatty())
        self._stdout_raw = raw
        return self.stdout

    def close_files(self) -> None:
        """Flush and close every file: a command calls it before it prints its
        results, so that a full disk is reported with stdout still empty."""
        for p in self.pending:
            p.close()

    def commit(self) -> None:
        self.close_files()
        if self.stdout is not None:
            self.stdout.flush()
        flush_stdout()
        for p in self.pending:
            p.commit()
        self.pending.clear()

    def discard(self) -> None:
        for p in self.pending:
            p.discard()
        self.pending.clear()
        if self.stdout is not None:
            self._stdout_raw.discard = True


_current: list[Outputs] = []


def outputs() -> Outputs:
    """The output files of the command that is running."""
    if not _current:
        raise RuntimeError("no command is running (use run_command)")
    return _current[-1]


def echo(text: str = "") -> None:
    """``print()`` to standard output, its failure named."""
    try:
        sys.stdout.write(text + "\n")
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CliError(f"standard output: cannot write: {exc.strerror or exc}") from None


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CliError(f"standard output: cannot write: {exc.strerror or exc}") from None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of a
    failed or closed stdout neither fails again nor prints."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                *, process: bool = False) -> int:
    """Run one command: its exit status, its outputs committed or removed,
    every failure one line on stderr.  ``process``: this is the whole
    process (the console script), whose stdout may be silenced on the way out
    (:func:`_silence_stdout`); never when called from Python."""
    out = Outputs()
    _current.append(out)
    try:
        status = int(func(args))
        if status not in (EXIT_OK, EXIT_FAIL):
            out.discard()
            flush_stdout()
            return status
        out.commit()
        return status
    except KeyboardInterrupt:
        out.discard()
        sys.stderr.write("mmugather: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # A closed pipe (| head) is not an error of ours: what was written
        # to files is complete.
        with contextlib.suppress(CliError):
            out.commit()
        if process:
            _silence_stdout()
        return EXIT_OK
    except CliError as exc:
        out.discard()
        # Exit 2 leaves stdout empty: what is still buffered goes nowhere.
        if process:
            _silence_stdout()
        return error(str(exc))
    except MemoryError:
        out.discard()
        return error("out of memory: try a smaller scenario or a lower --max-pages")
    except OSError as exc:
        # Every file a command opens goes through this module, which names
        # it; what is left is standard output.
        out.discard()
        if process:
            _silence_stdout()
        return error(f"{exc.filename or 'standard output'}: cannot write: "
                     f"{exc.strerror or exc}")
    finally:
        _current.pop()
