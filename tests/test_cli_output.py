"""What the commands write (``cli/common.py``): every output file complete or
absent, a failed write one line and exit 2, Ctrl-C one line and exit 130;
options that name an arch twice, a negative count or a directory refused;
progress on stderr only when it is a terminal.

The full-disk and Ctrl-C cases run the real command in a subprocess
(``/dev/full``, SIGINT), as a user meets them.
"""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BUILTIN_ARCHES

from mmugather import cli
from mmugather.cli.common import CliError, atomic_output
from mmugather.cli.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ROOT / "tests" / "data" / "replay" / "generic-smp" / "flow_munmap_small.ops.jsonl"
INTERRUPTED = "mmugather: interrupted\n"
FULL = "No space left on device"


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def scenario_file(tmp_path: Path, pages: int) -> Path:
    path = tmp_path / "big.toml"
    start = 1 << 32
    path.write_text(f'name = "big"\n[[vma]]\nstart = {start:#x}\nend = {start + pages * 4096:#x}\n'
                    f'populate = [{{ pages = {pages}, dirty = true }}]\n[[op]]\nkind = "exit"\n')
    return path


# ---------------------------------------------------------------------------
# The output layer itself
# ---------------------------------------------------------------------------


def test_atomic_output_appears_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_output(str(path), text=True) as f:
        f.write("half")
        assert not path.exists()
        (tmp,) = [p for p in tmp_path.iterdir()]
        assert tmp.name.startswith(".out.txt.") and tmp.name.endswith(".part")
    assert path.read_text() == "half"
    assert files_in(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_output_leaves_nothing_on_error(tmp_path: Path, exc: BaseException) -> None:
    path = tmp_path / "out.txt"
    path.write_text("the old file")
    with pytest.raises(type(exc)), atomic_output(str(path)) as f:
        f.write(b"x" * 200_000)
        raise exc
    assert path.read_text() == "the old file"
    assert files_in(tmp_path) == ["out.txt"]


def test_atomic_output_gives_the_permissions_open_would(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_output(str(tmp_path / "new")) as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640
    kept = tmp_path / "kept"
    kept.write_text("")
    kept.chmod(0o604)
    with atomic_output(str(kept)) as f:
        f.write(b"y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604


def test_devices_are_written_in_place() -> None:
    with atomic_output(os.devnull) as f:
        f.write(b"gone")
    assert os.path.exists(os.devnull)
    with pytest.raises(CliError, match=f"^/dev/full: cannot write: {FULL}$"), \
            atomic_output("/dev/full") as f:
        f.write(b"x" * 100_000)


@pytest.mark.parametrize(("where", "reason"), [
    ("dir", "is a directory (give a file name)"),
    ("no/such/dir/file", "cannot write: no directory"),
])
def test_unwritable_paths(tmp_path: Path, where: str, reason: str) -> None:
    (tmp_path / "dir").mkdir()
    path = str(tmp_path / where)
    with pytest.raises(CliError) as info:
        atomic_output(path).__enter__()
    assert str(info.value).startswith(f"{path}: {reason}")


# ---------------------------------------------------------------------------
# Each command's outputs, in-process
# ---------------------------------------------------------------------------


def _commands(tmp_path: Path, out: str) -> dict[str, list[str]]:
    log = tmp_path / "log.jsonl"
    if not log.exists():
        assert cli.main(["replay", str(REPLAY), "--events", str(log)]) == 0
    return {
        "run": ["run", "thp-pte", "--arch", "up", "--events", out],
        "replay": ["replay", str(REPLAY), "--events", out],
        "analyze": ["analyze", str(log), "--trace", out],
        "compare": ["compare", "thp-pte", "--strategy", "pointer", "--plot", out],
    }


@pytest.mark.parametrize("command", ["run", "replay", "analyze", "compare"])
def test_an_output_that_is_a_directory_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any work: one line, exit 2, nothing written in it
    (``--plot DIR`` used to write ``DIR.png``)."""
    target = tmp_path / "out"
    target.mkdir()
    argv = _commands(tmp_path, str(target))[command]
    capsys.readouterr()
    status, out, err = run_main(capsys, *argv)
    assert (status, out) == (2, "")
    assert err == f"mmugather: {target}: is a directory (give a file name)\n"
    assert files_in(target) == []
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("command", ["run", "replay", "analyze", "compare"])
def test_each_output_is_written_whole(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.png"
    argv = _commands(tmp_path, str(target))[command]
    before = files_in(tmp_path)
    status, _out, err = run_main(capsys, *argv)
    assert status == 0, err
    assert files_in(tmp_path) == sorted([*before, "out.png"])
    data = target.read_bytes()
    if command == "compare":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    elif command == "analyze":
        assert json.loads(data)["traceEvents"]
    else:
        assert all(json.loads(line)["event"] for line in data.splitlines())


def test_plot_format_follows_the_suffix(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "cost.svg"
    assert run_main(capsys, "compare", "thp-pte", "--strategy", "pointer", "--plot",
                    str(svg))[0] == 0
    assert b"<svg" in svg.read_bytes()[:500]
    status, out, err = run_main(capsys, "compare", "thp-pte", "--plot", str(tmp_path / "c.foo"))
    assert (status, out) == (2, "")
    assert err.startswith(f"mmugather: {tmp_path / 'c.foo'}: --plot writes ")
    assert err.endswith(", not 'foo'\n")
    assert files_in(tmp_path) == ["cost.svg"]


def test_a_rejected_replay_removes_its_events_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op":"tlb_gather_mmu"}\n{"op":"nope"}\n')
    events = tmp_path / "e.jsonl"
    status, out, err = run_main(capsys, "replay", str(bad), "--events", str(events))
    assert (status, out) == (2, "")
    assert err.startswith(f"mmugather: {bad}:2: ")
    assert files_in(tmp_path) == ["bad.jsonl"]


def test_bench_output_is_checked_before_measuring(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a traceback after the whole benchmark."""
    target = tmp_path / "no" / "perf.md"
    for extra in ([], ["--teardown"]):
        status, out, err = run_main(capsys, "bench", *extra, "--output", str(target))
        assert (status, out) == (2, "")
        assert err == f"mmugather: {target}: cannot write: no directory {target.parent}\n"


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["replay", str(REPLAY), "--arch", "s390", "--arch", "up"],
     "mmugather: replay: argument --arch: given twice (it takes one value) "
     "(see 'mmugather replay --help')\n"),
    (["run", "--arch", "up", "--arch", "s390", "--arch", "up"],
     "mmugather: arch 'up' is named twice\n"),
    (["compare", "thp-pte", "--arch", "up", "--arch", "up"],
     "mmugather: arch 'up' is named twice\n"),
    (["compare", "thp-pte", "--strategy", "legacy", "--strategy", "legacy"],
     "mmugather: strategy 'legacy' is named twice\n"),
    (["run", "--show", "-1"],
     "mmugather: run: argument --show: -1 is negative (see 'mmugather run --help')\n"),
    (["run", "--show", "x"],
     "mmugather: run: argument --show: 'x' is not an integer (see 'mmugather run --help')\n"),
    (["run", "--max-pages", "0"],
     "mmugather: run: argument --max-pages: must be at least 1 (see 'mmugather run --help')\n"),
])
def test_rejected_options_are_one_line(argv: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, *argv)
    assert (status, out, err) == (2, "", message)


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, "nosuchcommand")
    assert (status, out) == (2, "")
    # argparse words the choices its own way, depending on the Python version
    assert err.startswith("mmugather: argument COMMAND: invalid choice: 'nosuchcommand' ")
    assert err.endswith(" (see 'mmugather --help')\n") and err.count("\n") == 1


def test_replay_and_compare_read_mmugather_arch(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """replay and compare default to $MMUGATHER_ARCH; run compares every arch
    and says so in its help."""
    monkeypatch.setenv("MMUGATHER_ARCH", "s390")
    status, out, _ = run_main(capsys, "replay", str(REPLAY))
    assert status == 0
    s390 = out
    status, out, _ = run_main(capsys, "replay", str(REPLAY), "--arch", "s390")
    assert out == s390
    status, out, _ = run_main(capsys, "compare", "thp-pte", "--strategy", "pointer", "--json")
    assert json.loads(out)["arches"] == ["s390"]
    status, out, _ = run_main(capsys, "run", "thp-pte", "--json")
    assert [r["arch"] for r in json.loads(out)["runs"]] == list(BUILTIN_ARCHES)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    assert "run does not read $MMUGATHER_ARCH" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("command", "words"), [
    ("mutants", "deliberately broken orderings"),
    ("scenarios", "List the built-in scenarios"),
])
def test_listing_commands_describe_themselves(command: str, words: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    assert words in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["replay", "run", "analyze", "compare", "bench"])
def test_every_command_documents_its_exit_statuses(command: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0;" in text
    assert "130 on Ctrl-C" in text
    assert "could not be written" in text or "output could not be written" in text


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_is_erased() -> None:
    stream = FakeTerminal()
    with Progress("run big: up (1/1)", stream=stream, delay=0) as p:
        p.set_total(100)
        p.advance(50)
    # rich draws when the bar starts and once more when it stops
    text = stream.getvalue()
    assert "run big: up (1/1)" in text
    assert "50/100" in text


def test_no_progress_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("run", total=10, stream=stream, delay=0) as p:
        p.advance(10)
    assert stream.getvalue() == ""


def test_run_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """The command in a pseudo-terminal draws its bar on stderr (and erases
    it); with stderr a pipe, stderr stays empty."""
    path = scenario_file(tmp_path, 1 << 16)
    argv = [sys.executable, "-m", "mmugather", "run", str(path), "--arch", "up", "--json"]
    env = dict(os.environ, MMUGATHER_PROGRESS_DELAY="0")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        seen = bytearray()
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=300)
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert json.loads(out)["runs"][0]["stats"]["ptes_zapped"] == 1 << 16
    assert b"run big: up (1/1)" in seen
    piped = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    assert piped.returncode == 0 and piped.stderr == b""


# ---------------------------------------------------------------------------
# Full disk: /dev/full
# ---------------------------------------------------------------------------


def mmugather(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmugather", *argv], capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "run.jsonl"
    assert mmugather("run", "thp-pte", "--arch", "up", "--events", str(path)).returncode == 0
    return path


@pytest.mark.parametrize("command", ["replay", "run", "analyze", "compare"])
def test_stdout_to_a_full_disk(command: str, event_log: Path) -> None:
    argv = {
        "replay": ["replay", str(REPLAY)],
        "run": ["run", "thp-pte", "--arch", "up"],
        "analyze": ["analyze", str(event_log)],
        "compare": ["compare", "thp-pte", "--strategy", "pointer"],
    }[command]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "mmugather", *argv], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == f"mmugather: standard output: cannot write: {FULL}\n"


@pytest.mark.parametrize("argv", [
    ["replay", str(REPLAY), "--events", "/dev/full"],
    ["replay", str(REPLAY), "--format", "console", "--events", "/dev/full"],
    ["run", "thp-pte", "--arch", "up", "--events", "/dev/full"],
    ["analyze", "LOG", "--trace", "/dev/full"],
    ["compare", "thp-pte", "--strategy", "pointer", "--plot", "/dev/full"],
])
def test_an_output_file_on_a_full_disk(argv: list[str], event_log: Path) -> None:
    proc = mmugather(*[str(event_log) if a == "LOG" else a for a in argv])
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"mmugather: /dev/full: cannot write: {FULL}\n"


# ---------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------


def _wait_for(cond: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''!r}")
        time.sleep(0.01)


def _parts(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".part")]


def _interrupt(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode()


def _start(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mmugather", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_ctrl_c_during_run_leaves_no_events_file(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, 1 << 21)
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["run", str(path), "--arch", "up", "--events", str(out / "run.jsonl")])
    _wait_for(lambda: any(p.stat().st_size for p in _parts(out)), proc, "writing events")
    assert _interrupt(proc) == (130, INTERRUPTED)
    assert files_in(out) == []


def test_ctrl_c_during_replay_leaves_no_events_file(tmp_path: Path) -> None:
    from mmugather.cli.bench_ops import write_ops

    ops = tmp_path / "big.ops.jsonl"
    write_ops(str(ops), 300_000, 1)
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["replay", str(ops), "--check", "--detail", "--events",
                   str(out / "e.jsonl")])
    _wait_for(lambda: any(p.stat().st_size for p in _parts(out)), proc, "writing events")
    assert _interrupt(proc) == (130, INTERRUPTED)
    assert files_in(out) == []


def test_ctrl_c_during_compare_leaves_no_plot(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, 1 << 20)
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["compare", str(path), "--plot", str(out / "cost.png")])
    _wait_for(lambda: _parts(out), proc, "opening the plot")
    assert _interrupt(proc) == (130, INTERRUPTED)
    assert files_in(out) == []


def test_ctrl_c_as_the_output_file_is_created_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C the moment the temporary file exists, before the command
    knows of it (the window the test above can hit on a busy machine): it
    is held off until the file is registered, then removed."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp_then_ctrl_c(*args: Any, **kw: Any) -> tuple[int, str]:
        made = real(*args, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_ctrl_c)
    out = tmp_path / "out"
    out.mkdir()
    path = scenario_file(tmp_path, 64)
    assert cli.main(["run", str(path), "--events", str(out / "e.jsonl")]) == 130
    assert files_in(out) == []


def test_ctrl_c_during_analyze_leaves_no_trace(tmp_path: Path, event_log: Path) -> None:
    """The log is a FIFO the test keeps open: analyze waits in the middle of
    reading it, with its trace file open."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["analyze", str(fifo), "--trace", str(out / "t.json")])
    with open(fifo, "wb") as writer:
        writer.write(event_log.read_bytes()[:4096])
        writer.flush()
        _wait_for(lambda: _parts(out), proc, "opening the trace")
        assert _interrupt(proc) == (130, INTERRUPTED)
    assert files_in(out) == []


def test_ctrl_c_during_bench_leaves_the_output_alone(tmp_path: Path) -> None:
    doc = tmp_path / "perf.md"
    doc.write_text("# Performance\n")
    work = tmp_path / "tmp"
    work.mkdir()
    proc = _start(["bench", "--ops", "200000", "--repeat", "1", "--output", str(doc)],
                  env=dict(os.environ, TMPDIR=str(work)))
    _wait_for(lambda: any(work.rglob("*.jsonl")), proc, "generating its replay file")
    assert _interrupt(proc) == (130, INTERRUPTED)
    assert doc.read_text() == "# Performance\n"
    assert files_in(tmp_path) == ["perf.md", "tmp"]
    assert files_in(work) == []
