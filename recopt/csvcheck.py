"""Read one delimited text file into a frame; every way it can be malformed is a `Problem`.

A private helper of `recopt.movielens`, whose docstring states the rules. Two
layouts: "csv" (',' separated, a header line, '"' quotes, UTF-8) and the headerless
ones, no quotes, UTF-8 or else latin-1: "dat" ('::' separated, ml-1m / ml-10m), "tab"
and "pipe" (TAB and '|' separated: ml-100k's u.data and u.item).

The happy path is one typed, vectorised polars pass. Only when polars fails,
or the pass finds a problem that may come from a malformed line, does `_scan`
re-read the file line by line, so that each problem names the line an editor
shows (the header is line 1): bytes that are not UTF-8, a wrong number of
fields, an unclosed or misplaced quote, a repeated header. The other lines are
then validated as text, so one run lists every problem of the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import polars as pl

from recopt.compression import DAMAGED, compression_problem, damaged, open_data
from recopt.schemas import N_EXAMPLES, Problem, Schema, first_few, validate_frame

_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SEPARATORS = {",": "','", ";": "';'", "\t": "TAB ('\\t': tab-separated)", "|": "'|'"}
_HEADERLESS = {"dat": "::", "tab": "\t", "pipe": "|"}  # layout -> field separator
_NUMBER = re.compile(r"\s*[-+]?\d+(\.\d*)?\s*")  # a header line never holds one


@dataclass(frozen=True)
class Table:
    """A file as read.

    `frame` holds the file's columns, in canonical dtypes or as text (None when
    the file cannot be read at all); it is valid only when `problems` is empty.
    Row i is line `lines[i]`, or line `i + first_line` when `lines` is None.
    """

    frame: pl.DataFrame | None
    problems: list[Problem]
    first_line: int
    lines: pl.Series | None = None
    bom: bool = False
    blank_lines: int = 0
    latin1: bool = False


def read_table(path: Path, schema: Schema, layout: str) -> Table:
    """Read `path` (a layout of the module docstring; named `.gz`: decompressed) against `schema`."""
    first_line = 2 if layout == "csv" else 1
    problem = compression_problem(path)
    if problem is not None:
        return Table(None, [problem], first_line)
    try:
        return _read_csv(path, schema) if layout == "csv" else _read_headerless(path, schema, layout)
    except DAMAGED as err:
        problem = damaged(path, err)
        if problem is None:
            raise
        return Table(None, [problem], first_line)


def _read_csv(path: Path, schema: Schema) -> Table:
    file = str(path)
    with open_data(path) as f:
        head = f.read(1 << 16)
    bom = head.startswith(_BOM)
    text = head[len(_BOM):] if bom else head
    if not text.strip():
        return Table(None, [_empty(file, schema, "csv")], 2, bom=bom)
    first = text.split(b"\n", 1)[0].removesuffix(b"\r")
    problems = _header_problems(file, head, first, ",")
    if problems:
        return Table(None, problems, 2, bom=bom)
    try:
        header = next(csv.reader([first.decode("utf-8")], strict=True))
    except (UnicodeDecodeError, csv.Error):
        return _scan(open_data(path), file, schema, "csv", bom)
    if not set(header) & set(schema.columns) and any(_NUMBER.fullmatch(h) for h in header):
        expected = ",".join(schema.columns)
        return Table(None, [Problem(file, None, f"line 1 is not the header line '{expected}': it reads "
                                                f"{first.decode('utf-8')[:80]!r}, a row of values",
                                    f"add the header line {expected} as line 1")], 2, bom=bom)
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        return Table(None, [Problem(file, c, f"appears {header.count(c)} times in the header line",
                                    f"keep one column named '{c}'") for c in twice], 2, bom=bom)
    typed = {c: schema.columns[c].dtype for c in header if c in schema.columns}
    try:
        df = pl.read_csv(path, schema_overrides=typed, infer_schema=False)
    except pl.exceptions.PolarsError:
        return _scan(open_data(path), file, schema, "csv", bom)
    if df.columns and df.columns[0].startswith("\ufeff"):  # polars versions differ on the BOM
        df = df.rename({df.columns[0]: df.columns[0].removeprefix("\ufeff")})
    return _checked(df, file, schema, 2, bom, False) or _scan(open_data(path), file, schema, "csv", bom)


def _read_headerless(path: Path, schema: Schema, layout: str) -> Table:
    file, sep = str(path), _HEADERLESS[layout]
    with open_data(path) as f:
        raw = f.read()
    bom = raw.startswith(_BOM)
    raw = raw[len(_BOM):] if bom else raw
    if not raw.strip():
        return Table(None, [_empty(file, schema, layout)], 1, bom=bom)
    latin1 = False
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # ml-1m, ml-100k are latin-1; every byte string is valid latin-1
            raw, latin1 = raw.decode("latin-1").encode("utf-8"), True
    head = raw[:1 << 16]
    first = next((line for line in head.split(b"\n") if line.strip()), b"").removesuffix(b"\r")
    problems = _header_problems(file, head, first, sep)
    if problems:
        return Table(None, problems, 1, bom=bom, latin1=latin1)
    names = list(schema.columns)
    try:
        df = pl.read_csv(io.BytesIO(raw.replace(sep.encode(), b"\x1f")), has_header=False, new_columns=names,
                         separator="\x1f", quote_char=None, infer_schema=False,
                         schema_overrides={c: schema.columns[c].dtype for c in names})
    except pl.exceptions.PolarsError:
        return _scan(io.BytesIO(raw), file, schema, layout, bom, latin1)
    return (_checked(df, file, schema, 1, bom, latin1)
            or _scan(io.BytesIO(raw), file, schema, layout, bom, latin1))


def _empty(file: str, schema: Schema, layout: str) -> Problem:
    header = ",".join(schema.columns)
    return Problem(file, None, "file is empty",
                   f"write the {schema.name} rows (header line '{header}')" if layout == "csv"
                   else f"write the {schema.name} rows")


def _header_problems(file: str, head: bytes, first: bytes, sep: str) -> list[Problem]:
    """Whole-file faults visible on the first line: encoding, line endings, separator."""
    name = Path(file).name
    if head.startswith(_UTF16_BOMS) or b"\x00" in first:
        return [Problem(file, None, "is not UTF-8: it is UTF-16 (byte-order mark or NUL bytes "
                                    "on line 1)",
                        f"convert it: iconv -f utf-16 -t utf-8 {name} > {_renamed(name, 'utf8')}, "
                        f"then use that file as {name}")]
    if sep == "," and not first.strip():
        return [Problem(file, None, "line 1 is empty; the header line must come first",
                        "delete the empty lines before the header line")]
    if b"\r" in first:
        return [Problem(file, None, "lines end with a bare carriage return (CR, old Mac style)",
                        f"convert the line ends to LF, e.g. tr '\\r' '\\n' < {name} > "
                        f"{_renamed(name, 'lf')}, then use that file as {name}")]
    text = first.decode("utf-8", "replace")
    if sep in text:
        return []
    expected = _SEPARATORS.get(sep, repr(sep))
    found = max(_SEPARATORS, key=text.count)
    if text.count(found) == 0:
        return [] if sep == "," else [Problem(
            file, None, f"line 1 is not separated by '{sep}': {text[:80]!r}",
            f"write one record per line with the fields separated by {expected}")]
    fix = (f"re-save it comma-separated, e.g. pandas.read_csv('{name}', sep={found!r})"
           f".to_csv('{name}', index=False), or sed 's/{found.encode('unicode_escape').decode()}/,/g'"
           f" if no value contains {found!r} or ','") if sep == "," else (
           f"separate the fields with {expected}" + (
               f" (or use the CSV layout: {Path(name).stem}.csv with a header line)" if sep == "::" else ""))
    return [Problem(file, None, f"the file is separated by {_SEPARATORS[found]}, not {expected}", fix)]


def _checked(df: pl.DataFrame, file: str, schema: Schema, first_line: int,
             bom: bool, latin1: bool) -> Table | None:
    """Validate a frame polars parsed; None when only a line scan can explain its problems."""
    blank = df.select(pl.all_horizontal(pl.all().is_null())).to_series()
    n_blank = int(blank.sum())
    lines = None
    if n_blank:  # a line with no values: polars keeps it as an all-null row
        lines = pl.Series("line", range(first_line, first_line + df.height)).filter(~blank)
        df = df.filter(~blank)
    text = [c for c, t in df.schema.items() if t == pl.String]
    if text and df.select(pl.any_horizontal(pl.col(text).str.contains("[\r\n]").any())).item():
        return None  # a quoted value spans lines: a quote was left open
    problems = validate_frame(df, schema, file, first_line, lines)
    required = [c for c, rule in schema.columns.items() if c in df.columns and not rule.nullable]
    if problems and required and df.select(pl.any_horizontal(pl.col(required).is_null().any())).item():
        return None  # missing values may be short lines
    return Table(df, problems, first_line, lines, bom, n_blank, latin1)


def _scan(stream: IO[bytes], file: str, schema: Schema, layout: str,
          bom: bool, latin1: bool = False) -> Table:
    """Check every line on its own; validate the well-formed ones as text."""
    sep = "," if layout == "csv" else _HEADERLESS[layout]
    header = None if layout == "csv" else list(schema.columns)
    not_utf8, quotes, widths, repeated = _Fault(), _Fault(), _Fault(), _Fault()
    good, body, blank = array("q"), io.BytesIO(), 0
    with stream:
        for no, raw in enumerate(stream, start=1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            raw = raw.removeprefix(_BOM) if no == 1 else raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                not_utf8.add(no, f"line {no} has byte 0x{raw[err.start]:02X} (byte {err.start + 1} "
                                 f"of the line)")
                text = raw.decode("latin-1")
            try:
                fields = _split(text, sep)
            except csv.Error:
                quotes.add(no)
                header = text.split(sep) if header is None else header
                continue
            if header is None:
                header = fields
            elif not any(f.strip() for f in fields):
                blank += 1
            elif len(fields) != len(header):
                widths.add(no, f"line {no} has {len(fields)}")
            elif layout == "csv" and fields == header:
                repeated.add(no)
            else:
                good.append(no)  # re-joined without quotes, so polars reads what csv parsed
                body.write("\x1f".join(fields).encode() + b"\n")
    problems = _line_problems(file, header or [], sep, not_utf8, quotes, widths, repeated)
    first_line = 2 if layout == "csv" else 1
    try:
        df = _parse_lines(body, header or [], schema)
    except pl.exceptions.PolarsError as err:  # a value holding the 0x1F byte, say
        return Table(None, problems + [Problem(
            file, None, f"cannot be parsed: {str(err).splitlines()[0]}",
            f"make every line hold exactly the fields {sep.join(schema.columns)}")],
            first_line, None, bom, blank, latin1)
    lines = pl.Series("line", good, dtype=pl.Int64)
    if df.height or not problems:
        problems += validate_frame(df, schema, file, lines=lines)
    return Table(df, problems, first_line, lines, bom, blank, latin1)


def _parse_lines(body: io.BytesIO, header: list[str], schema: Schema) -> pl.DataFrame:
    """The well-formed lines (fields joined by 0x1F): typed if they all parse, else as text."""
    if not body.tell():
        return pl.DataFrame(schema={c: pl.String for c in header})
    body.seek(0)
    options: dict = {"has_header": False, "new_columns": header, "separator": "\x1f",
                     "quote_char": None, "infer_schema": False}
    typed = {c: schema.columns[c].dtype for c in header if c in schema.columns}
    try:
        return pl.read_csv(body, schema_overrides=typed, **options)
    except pl.exceptions.ComputeError:
        body.seek(0)
    numeric = [c for c in header if c in typed and typed[c].is_numeric()]
    df = pl.read_csv(body, **options)
    return df.with_columns(pl.col(numeric).str.strip_chars())  # " 4.0 " is 4.0, as polars reads " 4"


def _split(text: str, sep: str) -> list[str]:
    if sep != ",":  # headerless layouts have no quoting
        return text.split(sep)
    return text.split(sep) if '"' not in text else next(csv.reader([text], strict=True))


@dataclass
class _Fault:
    """Lines with one kind of fault: how many, and the first few (memory stays small)."""

    count: int = 0
    lines: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, line: int, note: str = "") -> None:
        self.count += 1
        if len(self.lines) < N_EXAMPLES:
            self.lines.append(line)
            self.notes.append(note)

    def shown(self) -> str:
        return first_few(self.lines, self.count)


def _line_problems(file: str, header: list[str], sep: str, not_utf8: _Fault, quotes: _Fault,
                   widths: _Fault, repeated: _Fault) -> list[Problem]:
    name, fields = Path(file).name, sep.join(header)
    problems = []
    if not_utf8.count:
        problems.append(Problem(
            file, None, f"is not UTF-8: {not_utf8.notes[0]}, which is not valid UTF-8; "
                        f"{not_utf8.count} line(s) hold such bytes: {not_utf8.shown()}",
            f"convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 {name} > "
            f"{_renamed(name, 'utf8')} (if it is latin-1), then use that file as {name}"))
    if quotes.count:
        problems.append(Problem(
            file, None, f"cannot be parsed: {quotes.count} line(s) have an unclosed or misplaced "
                        f"quote (\"), e.g. line(s) {quotes.shown()}",
            "close every quote on the line it opens (no value may span lines) and write a "
            "quote inside a quoted value as \"\""))
    if widths.count:
        problems.append(Problem(
            file, None, f"cannot be parsed: {widths.count} line(s) do not have {len(header)} "
                        f"fields, e.g. {first_few(widths.notes, widths.count)}",
            f"make every line hold exactly the fields {fields}"
            + (" (quote a value that contains ',')" if sep == "," else "")))
    if repeated.count:
        problems.append(Problem(
            file, None, f"the header line is repeated at line(s) {repeated.shown()}",
            "delete the repeated header lines (were files concatenated?)"))
    return problems


def _renamed(name: str, tag: str) -> str:
    """movies.csv -> movies.utf8.csv"""
    path = Path(name)
    return f"{path.stem}.{tag}{path.suffix}"
