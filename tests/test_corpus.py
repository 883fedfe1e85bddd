"""The historical-bug corpus (``mmugather explore --corpus``): every bug is
found where it applies, v6.5 + the seed finds nothing on the same scenarios
but the race it really has, and the fix of that race removes it; the
command's table, timelines, errors and exit status.  (What each run costs
is docs/performance.md's, not a test's.)"""

from __future__ import annotations

import attrs
import pytest
from mmugather.core import fixes
from mmugather.core.arch import registry
from mmugather.core.explore import spec

from mmugather import cli, corpus
from mmugather.mutants import MUTANTS

ENTRIES = {e.name: e for e in corpus.CORPUS}


def test_the_corpus_has_the_bugs_of_the_issue() -> None:
    assert [(e.commit, e.mutant) for e in corpus.CORPUS] == [
        ("5df397dec7c4", "rmap-before-flush"),
        ("", "free-before-flush"),
        ("5e5f6dc10546", "arm64-no-rcu-table-free"),
        ("99baac21e458", "no-nested-flush"),
        ("3ea277194daa", "no-flush-batched-pending"),
        ("7a30df49f63a", "nested-drops-freed-tables"),
        ("b67fbebd4cf9", "pfnmap-no-flush"),
        ("a4a118f2eead", "unshare-no-flush"),
        ("", "free-before-flush-rmaps"),
        ("1013af4f585f", None),
    ]


@pytest.mark.parametrize("name", ENTRIES)
def test_each_entry_is_consistent_with_its_mutant(name: str) -> None:
    """The mutant's fixing commit is the entry's; the entry runs only where
    the mutant applies; the scenario exists and its bug is the property."""
    e = ENTRIES[name]
    assert spec.load_builtin(e.scenario)
    if e.mutant is None:
        assert e.fixes == (e.commit,) and fixes.get(e.commit).title in e.title
        return
    m = MUTANTS[e.mutant]
    assert m.fixed_by.split(" ")[0] == e.commit if e.commit else not m.fixed_by
    assert all(m.applies(registry().get(a)) for a in e.arches)
    if m.explore == e.scenario:
        assert m.prop == e.prop


@pytest.mark.parametrize("name", ENTRIES)
def test_each_bug_is_found_and_v65_finds_nothing(name: str) -> None:
    e = ENTRIES[name]
    runs = list(corpus.run((e,)))
    assert [(r.arch, r.label) for r in runs] == [
        (a, label) for a in e.arches for label in (
            ("v6.5 + seed", "fix 1013af4f585f") if e.mutant is None
            else (f"mutant {e.mutant}", "v6.5 + seed"))]
    for r in runs:
        assert r.ok, (r.arch, r.label, r.found)
        assert r.found == (e.prop if r.expect else None)
        if r.label == "v6.5 + seed" and not r.expect:
            # Within the bound, and the bound was not what stopped it.
            assert r.result.counts.interleavings > 0 and r.result.counts.cutoffs == 0
        r.engine.close()


def test_a_run_not_as_expected_fails_the_command(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Reclaim defers no flush on generic-smp: the mutant is not found there."""
    wrong = attrs.evolve(ENTRIES["reclaim-batched-flush"], arches=("generic-smp",))
    monkeypatch.setattr(corpus, "CORPUS", (wrong,))
    assert cli.main(["explore", "--corpus"]) == 1
    out = capsys.readouterr().out
    assert "  generic-smp      mutant no-flush-batched-pending   no (NOT AS EXPECTED: yes: " \
           "stale-after-return)" in out
    assert out.rstrip().endswith("1 of 2 runs not as expected")


def test_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explore", "--corpus"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "  arch             run                               found?" in out
    for e in corpus.CORPUS:
        assert any(line.startswith(f"{e.name}  {e.commit or '(no commit)'}  ")
                   for line in lines), e.name
    assert ("  arm64            v6.5 + seed                       yes: "
            "lockless-walk-freed-table") in out
    assert "  arm64            fix 1013af4f585f                  no  " in out
    runs = sum(2 * len(e.arches) for e in corpus.CORPUS)
    assert lines[-1].startswith(f"all {runs} runs as expected")
    assert "step |" not in out  # the timelines come with one bug


def test_one_bug_with_its_timelines(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explore", "--corpus", "99baac21e458"]) == 0
    out = capsys.readouterr().out
    assert "dontneed-flush-miss  99baac21e458  mm: fix MADV_[FREE|DONTNEED] TLB flush miss" in out
    assert out.count("step | CPU0 zap0") == 3
    assert ("dontneed-flush-miss (99baac21e458) on x86-64, mutant no-nested-flush: mmugather "
            "explore dontneed-race --arch x86-64 --mutant no-nested-flush") in out
    assert "after step" in out and "stale-after-return" in out


@pytest.mark.parametrize("argv,message", [
    (["--corpus", "nope"], "no corpus entry 'nope' (entries: lost-write, "),
    (["--corpus", "--mutant", "free-before-flush"],
     "--corpus runs the configurations of its entries: --mutant does not go with it"),
    (["dontneed-race", "--corpus"],
     "--corpus runs the configurations of its entries: SCENARIO does not go with it"),
])
def test_corpus_errors(argv: list[str], message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explore", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err
