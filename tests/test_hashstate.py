"""recopt.hashstate: an unchanged file is verified by its identity alone, a changed one is always hashed
anew -- even when its size and mtime are put back -- and the table is shared by processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recopt import hashstate
from recopt.hashstate import HashState
from tests.conftest import ROOT, tool_env


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file hashstate reads to hash it."""
    seen: list[Path] = []
    real = hashstate.sha256_file

    def counting(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashstate, "sha256_file", counting)
    return seen


def test_an_unchanged_file_is_hashed_once_across_processes(tmp_path: Path, reads: list[Path]) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"x" * 1000)
    truth = hashlib.sha256(f.read_bytes()).hexdigest()
    assert HashState(tmp_path / "runs").digest(f) == truth and reads == [f]
    assert HashState(tmp_path / "runs").digest(f) == truth and reads == [f]  # a new table object: the file
    code = (f"from recopt.hashstate import HashState, sha256_file; import recopt.hashstate as h; "
            f"h.sha256_file = lambda p: 'read'; print(HashState({str(tmp_path / 'runs')!r}).digest({str(f)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=tool_env(), capture_output=True, text=True)
    assert out.stdout.strip() == truth  # another process took it from the table, without reading the file


def test_a_change_that_keeps_size_and_mtime_is_still_caught(tmp_path: Path, reads: list[Path]) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"a" * 100)
    state = HashState(tmp_path / "runs")
    before = state.digest(f)
    st = f.stat()
    f.write_bytes(b"b" * 100)  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    after = HashState(tmp_path / "runs").digest(f)
    assert after != before and after == hashlib.sha256(b"b" * 100).hexdigest() and len(reads) == 2


def test_a_replaced_file_is_hashed_anew(tmp_path: Path, reads: list[Path]) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"one")
    state = HashState(tmp_path / "runs")
    state.digest(f)
    other = tmp_path / "other.bin"
    other.write_bytes(b"two")
    os.replace(other, f)
    assert state.digest(f) == hashlib.sha256(b"two").hexdigest() and len(reads) == 2


def test_remember_spares_the_next_reader_and_a_table_that_cannot_be_written_only_costs_time(
        tmp_path: Path, reads: list[Path]) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"payload")
    truth = hashlib.sha256(b"payload").hexdigest()
    HashState(tmp_path / "runs").remember(f, truth)
    assert HashState(tmp_path / "runs").digest(f) == truth and reads == []
    (tmp_path / "blocked").write_text("a file where the table's folder would be")
    assert HashState(tmp_path / "blocked").digest(f) == truth and reads == [f]
