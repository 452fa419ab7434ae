"""A data file's compression, told by its first bytes (its magic number), never by its name alone.

A file named ``<name>.gz`` is read as it is (decompressed on the fly); a compressed file under a
text name (a gzip file called ratings.csv) is a problem naming the compression and the command
that decompresses it -- never "not UTF-8", which is what its bytes would otherwise look like.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import IO

from recopt.schemas import Problem

# magic bytes -> (compression, the command that decompresses `{name}` into `{plain}`)
MAGIC = {b"\x1f\x8b": ("gzip", "gunzip -c < {name} > {plain}"), b"PK\x03\x04": ("zip", "unzip -p {name} > {plain}"),
         b"BZh": ("bzip2", "bunzip2 -c < {name} > {plain}"), b"\xfd7zXZ\x00": ("xz", "unxz -c < {name} > {plain}"),
         b"\x28\xb5\x2f\xfd": ("zstd", "unzstd -c < {name} > {plain}")}
GZ = ".gz"
DAMAGED = (EOFError, OSError, zlib.error)  # what reading a cut or corrupt .gz raises (gzip, polars)


def locate(folder: Path, name: str) -> Path | None:
    """`folder/name`, else `folder/name.gz` (read as is), else None."""
    for path in (folder / name, folder / f"{name}{GZ}"):
        if path.is_file():
            return path
    return None


def open_data(path: Path) -> IO[bytes]:
    """The bytes of `path`, decompressed when it is named `.gz`."""
    return gzip.open(path, "rb") if path.name.endswith(GZ) else path.open("rb")


def damaged(path: Path, err: BaseException) -> Problem | None:
    """The problem of a `.gz` file that cannot be decompressed to its end (`err`: one of DAMAGED); None for
    a file not named `.gz`, whose error is not about compression."""
    if not path.name.endswith(GZ):
        return None
    return Problem(str(path), None, f"is a damaged gzip file ({err})", "download or compress it again")


def compression_problem(path: Path) -> Problem | None:
    """What is wrong with the compression of `path`: compressed bytes under a text name, or a `.gz` name on
    bytes that are not gzip; None when nothing is."""
    with path.open("rb") as f:
        head = f.read(8)
    found = next((value for magic, value in MAGIC.items() if head.startswith(magic)), None)
    name = path.name
    if name.endswith(GZ):
        if found is not None and found[0] == "gzip":
            return None
        what = f" (it is {found[0]}-compressed)" if found else ""
        return Problem(str(path), None, f"is named {GZ} but is not gzip-compressed{what}",
                       f"decompress it with the right tool, or rename it without {GZ} if it is plain text")
    if found is None:
        return None
    kind, command = found
    plain = Path(name).with_suffix(f".plain{Path(name).suffix}")
    rename = f"rename it to {name}{GZ}, which is read as it is, or " if kind == "gzip" else ""
    return Problem(str(path), None, f"is {kind}-compressed, not text (it starts with the {kind} signature)",
                   f"{rename}decompress it: {command.format(name=name, plain=plain)}, then use that file as {name}")
