"""The replay benchmark: its generated input and the ``bench`` command.

Behaviour only: nothing here asserts a timing (the figures live in
docs/performance.md, written by ``mmugather bench --output``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import ARCHES
from mmugather.arches import BUILTIN
from mmugather.core.arch import make_machine
from mmugather.core.events import make_emit
from mmugather.core.replay import C_FINISH, C_FLUSH, C_GATHER, C_QUEUE, Compiled, parse

from mmugather.cli import main
from mmugather.cli.bench import END_MARK, START_MARK, write_section
from mmugather.cli.bench_ops import QUEUE_CAPACITY, generate_ops, write_default_json
from mmugather.cli.bench_replay import collect_events, command_env, stock_structlog_emit

#: Big enough for gathers that fill the whole queue (seed 0 has one).
N_FULL, SEED_FULL = 60_000, 0


def _compile(n: int, seed: int) -> list[Compiled]:
    return parse(generate_ops(n, seed), f"generated(n={n}, seed={seed})", 4096)


@pytest.fixture(scope="module")
def big() -> list[Compiled]:
    return _compile(N_FULL, SEED_FULL)


def test_generated_file_is_valid_and_exactly_n_ops() -> None:
    for n in (0, 1, 47, 48, 500, 5_000):
        assert len(_compile(n, 3)) == n


def test_generator_is_deterministic_for_a_seed() -> None:
    first = b"".join(generate_ops(5_000, 7))
    assert first == b"".join(generate_ops(5_000, 7))
    assert first != b"".join(generate_ops(5_000, 8))


def test_generator_mimics_the_kernel_callers(big: list[Compiled]) -> None:
    ops = [op[2] for op in big]
    # Pages make up most of the file: entry, batch_rmap query, queue.
    assert ops.count("__tlb_remove_page_size") > len(ops) / 4
    assert ops.count("tlb_remove_tlb_entry") >= ops.count("__tlb_remove_page_size")
    # Both teardown flows: exit (fullmm) and munmap.
    fullmm = [op[3] for op in big if op[1] == C_GATHER]
    assert True in fullmm and False in fullmm
    for name in (
        "tlb_start_vma",
        "tlb_end_vma",
        "tlb_flush_rmaps",
        "tlb_discard_rmaps",
        "tlb_change_page_size",
        "pte_free_tlb",
        "tlb_finish_mmu",
    ):
        assert name in ops


@pytest.mark.parametrize("arch", ARCHES)
def test_generated_file_replays_without_a_bug(big: list[Compiled], arch: str) -> None:
    events = collect_events(big, make_machine(arch))
    names = {name for name, _ in events}
    assert "bug" not in names
    assert "warning" not in names


def test_queue_is_flushed_when_full_and_never_overrun(big: list[Compiled]) -> None:
    """On generic-smp every __tlb_remove_page_size that reports the queue
    full is followed by tlb_flush_mmu (or the finish) before the next page."""
    events = collect_events(big, make_machine("generic-smp"))
    returns = [
        fields["value"]
        for name, fields in events
        if name == "return" and fields["op"] == "__tlb_remove_page_size"
    ]
    queue_at = [i for i, op in enumerate(big) if op[1] == C_QUEUE]
    assert len(returns) == len(queue_at)
    full_at = [i for i, value in zip(queue_at, returns, strict=True) if value]
    assert full_at, "the file should fill the queue at least once"
    for i in full_at:
        following = next(op[1] for op in big[i + 1 :] if op[1] in (C_QUEUE, C_FLUSH, C_FINISH))
        assert following in (C_FLUSH, C_FINISH)
    # The generator's own count of the queue agrees with the kernel's limit.
    assert QUEUE_CAPACITY == 9_698


def test_make_emit_writes_what_structlog_stock_path_writes(big: list[Compiled]) -> None:
    """The lean event path is an optimisation only: the same bytes."""
    events = collect_events(big[:20_000], make_machine("rcu-table-free"))
    lean, stock = io.BytesIO(), io.BytesIO()
    for emit in (make_emit(file=lean), stock_structlog_emit(stock)):
        assert emit is not None
        for name, fields in events:
            emit(name, **dict(fields))
    assert lean.getvalue() == stock.getvalue()
    assert lean.getvalue().count(b"\n") == len(events)


def test_write_section_replaces_only_the_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    write_section(str(doc), "first\n")  # a new file
    assert doc.read_text() == f"{START_MARK}\nfirst\n{END_MARK}\n"
    doc.write_text(f"# Title\n\nintro\n\n{START_MARK}\nold\n{END_MARK}\n\n## After\n\nkept\n")
    write_section(str(doc), "new figures\n")
    section = f"{START_MARK}\nnew figures\n{END_MARK}\n"
    assert doc.read_text() == f"# Title\n\nintro\n\n{section}\n## After\n\nkept\n"
    (tmp_path / "plain.md").write_text("# Only prose")
    write_section(str(tmp_path / "plain.md"), "appended")
    assert (tmp_path / "plain.md").read_text() == (
        f"# Only prose\n\n{START_MARK}\nappended\n{END_MARK}\n"
    )


def test_bench_command_writes_the_marked_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nHow to run it.\n\n{START_MARK}\nstale\n{END_MARK}\n")
    for _ in range(2):
        assert main(["bench", "--ops", "2000", "--repeat", "1", "--output", str(doc)]) == 0
    out, err = capsys.readouterr()
    assert "| replay, events to /dev/null" in out
    # stderr is no terminal here: no progress, only where the figures went
    assert err == f"bench: figures written to {doc}\n" * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["performance.md"]
    text = doc.read_text()
    assert text.startswith("# Performance\n\nHow to run it.\n\n")
    assert text.count(START_MARK) == 1 and text.count(END_MARK) == 1
    section = text.split(START_MARK)[1].split(END_MARK)[0]
    assert "stale" not in section
    assert "2,000 ops" in section and "`generic-smp`" in section
    for form in ("| **compact** file", "| **json.dumps** file"):
        assert section.count(form) == 1
    # Each figure next to its same-run reference.
    assert section.count("| reference: stdlib `json.loads` of each line |") == 2
    assert section.count("| whole command: `mmugather replay FILE --events /dev/null` |") == 2
    assert section.count("| ... the same under `PYTHONDONTWRITEBYTECODE=1`, no bytecode "
                         "written |") == 2
    assert "its bytecode cached, as a package installed by pip has it" in section
    assert section.count(" x json |") == 8
    assert "| reference: the same events alone through structlog (`make_structlog_emit`) |" in (
        section)
    assert "x structlog |" in section
    assert "| the whole command on the json.dumps file: at least 1,000,000 ops/s |" in section
    assert "| ... in at most 0.5 x the stdlib json parse of that file |" in section
    assert "| the compact file no slower than before" in section
    assert "CPython" in section or "PyPy" in section


def test_bench_command_rejects_an_unknown_arch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--ops", "100", "--arch", "no-such-arch"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    known = ", ".join(s.name for s in BUILTIN)
    assert captured.err == f"mmugather: unknown arch 'no-such-arch' (known: {known})\n"


def test_default_json_form_compiles_the_same(tmp_path: Path) -> None:
    from mmugather.core.replay import parse_file

    compact, spaced = tmp_path / "c.jsonl", tmp_path / "s.jsonl"
    compact.write_bytes(b"".join(generate_ops(3_000, 9)))
    write_default_json(str(compact), str(spaced))
    lines = spaced.read_text().splitlines()
    assert lines[0].startswith("# mmugather bench")
    assert lines[1] == '{"op": "tlb_gather_mmu"}' or lines[1] == (
        '{"op": "tlb_gather_mmu", "fullmm": true}')
    assert all(", " in line and ": " in line for line in lines[2:] if '"op": "tlb_' in line
               and len(line) > 40)
    assert parse_file(str(spaced), 4096) == parse_file(str(compact), 4096)


def test_whole_command_env_caches_bytecode_or_compiles_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("MMUGATHER_ARCH", "s390")
    cached = command_env("/tmp/somewhere/pycache")
    assert "PYTHONDONTWRITEBYTECODE" not in cached
    assert cached["PYTHONPYCACHEPREFIX"] == "/tmp/somewhere/pycache"
    assert cached["MMUGATHER_ARCH"] == "s390"  # the rest of the environment is kept
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", "/elsewhere")
    cold = command_env(None)
    assert cold["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "PYTHONPYCACHEPREFIX" not in cold
