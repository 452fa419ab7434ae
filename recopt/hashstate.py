"""Content hashes remembered by file identity, so an unchanged input is verified by `stat` alone.

As DVC's state database does: a file's sha256 is stored under its identity -- path, inode, size,
mtime and ctime (nanoseconds) -- in a small SQLite table under ``paths.runs``. A file whose
identity is unchanged is not read again; any write to a file changes its ctime (which no user
call can set back) and a replacement changes its inode, so a changed file is always hashed anew.
Processes share the table through SQLite's own locking. A table that cannot be opened or written
is not used: every file is then hashed, as without it (only speed depends on it, never a result).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

NAME = "hash_state.sqlite"
Identity = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def sha256_file(path: Path) -> str:
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _identity(st: os.stat_result) -> Identity:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class HashState:
    """sha256 of files, remembered by identity in `folder`/hash_state.sqlite (`folder` None: in memory only)."""

    def __init__(self, folder: Path | None) -> None:
        self.db = Path(folder) / NAME if folder is not None else None
        self.known: dict[str, tuple[Identity, str]] | None = None
        self.con: sqlite3.Connection | None = None

    def _load(self) -> dict[str, tuple[Identity, str]]:
        if self.known is None:
            self.known = {}
            if self.db is not None:
                try:
                    self.db.parent.mkdir(parents=True, exist_ok=True)
                    self.con = sqlite3.connect(self.db, timeout=30)
                    self.con.execute("CREATE TABLE IF NOT EXISTS state (path TEXT PRIMARY KEY, inode INTEGER, "
                                     "size INTEGER, mtime INTEGER, ctime INTEGER, sha256 TEXT)")
                    for path, *ident, value in self.con.execute("SELECT * FROM state"):
                        self.known[path] = (tuple(ident), value)  # type: ignore[assignment]
                except (sqlite3.Error, OSError):
                    self.con = None
        return self.known

    def digest(self, path: Path, st: os.stat_result | None = None) -> str:
        """The sha256 of `path`, read from the file only when its identity is new."""
        st = st or os.stat(path)
        hit = self._load().get(str(Path(path).resolve()))
        if hit is not None and hit[0] == _identity(st):
            return hit[1]
        value = sha256_file(path)
        self.remember(path, value, st)
        return value

    def remember(self, path: Path, value: str, st: os.stat_result | None = None) -> None:
        """Record that `path`, as it is now, has sha256 `value` (e.g. its writer just hashed it)."""
        key, ident = str(Path(path).resolve()), _identity(st or os.stat(path))
        self._load()[key] = (ident, value)
        if self.con is None:
            return
        try:
            with self.con:
                self.con.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?)", (key, *ident, value))
        except sqlite3.Error:
            self.con = None  # not remembered from now on: later readers hash the files
