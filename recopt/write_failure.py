"""What a failed write means: which limit ran out (a full disk, a quota, the file-size limit), where,
and the fix -- from an ``OSError`` or from a library's own exception carrying the OS's text (polars'
``ComputeError``, sqlite's "database or disk is full", numpy's short write, which has no errno).
"""

from __future__ import annotations

import errno
import os
import re
import resource
from pathlib import Path
from typing import Any

from recopt.errors import RecoptError

# errno -> what ran out, and the fix ({elsewhere}: where else to write)
_RAN_OUT = {errno.ENOSPC: ("the disk is full", "free space on that disk, or {elsewhere} on a disk with room"),
            errno.EDQUOT: ("the disk quota is used up", "free space within your quota, or {elsewhere} on another disk"),
            errno.EFBIG: ("a file reached the file-size limit", "raise the limit (`ulimit -f unlimited`), or "
                          "{elsewhere} on a filesystem that allows larger files")}
_TEXTS = {"No space left on device": errno.ENOSPC, "database or disk is full": errno.ENOSPC,
          "Disk quota exceeded": errno.EDQUOT, "File too large": errno.EFBIG}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile: no errno


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} TiB"


def _space(path: Path) -> tuple[int, int] | None:
    """(bytes free to this user, bytes in all) on the filesystem of `path` (or of its nearest existing folder)."""
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return None


def _file_limit() -> int | None:
    """The largest file this process may write (`ulimit -f`), in bytes; None when unlimited."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if limit == resource.RLIM_INFINITY else limit


def _related(name: Any, folders: tuple[Path, ...], *, above: bool = True) -> bool:
    """Whether file `name` is in one of `folders` (or, with `above`, one of their parent folders)."""
    if not name:
        return False
    p = Path(os.fsdecode(name)).resolve()
    return any(p == f or f in p.parents or (above and p in f.parents) for f in (x.resolve() for x in folders))


def _code(err: BaseException, target: Path | None, written: tuple[Path, ...]) -> tuple[int, str] | None:
    """(errno, the OS's text) of a failed write anywhere in `err`'s chain; None when it is not one."""
    seen: BaseException | None = None if isinstance(err, RecoptError) else err  # already explained
    while seen is not None:
        text = str(seen)
        if isinstance(seen, OSError) and seen.errno in _RAN_OUT:
            return seen.errno, os.strerror(seen.errno)
        for words, code in _TEXTS.items():
            if words in text:
                return code, words
        if isinstance(seen, OSError) and _SHORT_WRITE.search(text):  # what ran out: the disk, else the limit
            space = _space(target or Path.cwd())
            code = (errno.ENOSPC if space is not None and space[0] < 1 << 20 else
                    errno.EFBIG if _file_limit() is not None else errno.EIO)
            return code, f"{os.strerror(code)}: {text}"
        if isinstance(seen, OSError) and _related(seen.filename, written):
            return seen.errno or errno.EIO, seen.strerror or text
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return None


def explain_write_failure(err: BaseException, target: Path | None = None, key: str | None = None,
                          written: tuple[Path, ...] = ()) -> str | None:
    """One sentence for a write that failed: what ran out (or the OS's reason), which path, the fix.

    Args:
        err: the exception raised while writing (any library's).
        target: the path being written, named when `err` names no file outside `written`.
        key: the config key that names `target` (the fix says to point it elsewhere).
        written: folders being written: any OSError on a path in (or above) them is a write failure
            (permissions, a read-only disk), not only the out-of-space ones.

    Returns:
        "cannot write <path>: <cause> — <fix>", or None when `err` is not a failed write.
    """
    found = _code(err, target, written)
    if found is None:
        return None
    code, text = found
    name = getattr(err, "filename", None)  # a file in a staging folder is shown as the artifact it builds
    path = Path(os.fsdecode(name)) if name and not _related(name, written, above=False) else target
    elsewhere = f"set {key} to a folder" if key else "write to a folder"
    what, fix = _RAN_OUT.get(code, (None, "make the folder writable, or {elsewhere} you can write"))
    details = [text]
    if code == errno.ENOSPC and (space := _space(path or Path.cwd())) is not None:
        details.append(f"{_size(space[0])} of {_size(space[1])} free there")
    if code == errno.EFBIG and (limit := _file_limit()) is not None:
        details.append(f"this process may write files of at most {_size(limit)}, `ulimit -f`")
    cause = f"{what} ({'; '.join(details)})" if what else text
    return f"cannot write {path or 'a file'}: {cause} — {fix.format(elsewhere=elsewhere)}"
