"""The one reader of row files: TSV, CSV, JSONL and plain text, streamed row by row.

Every command that reads a file (training and evaluation data, ``predict``'s input, label-free
calibration texts, ``retrofit``'s texts) reads it here, so a file means the same thing everywhere:

- UTF-8, a leading byte-order mark removed; a line that is not UTF-8 is an error naming its line;
- LF or CRLF line endings; blank lines at the end of the file are ignored, a blank line between
  rows is an error (an empty row is never silently dropped nor read as data);
- TSV is read with ``csv.QUOTE_NONE`` (GLUE's sentences hold unbalanced quotes); CSV with the CSV
  quoting rules, so a quoted field may span lines (the row's line number is its first line), and an
  unterminated quote is an error;
- JSONL: one JSON object per line; text (``.txt``): one text per line, no header.

``on_error="raise"`` stops at the first bad row with ``DataError("file:line: what is wrong")``;
``"report"`` yields it as a ``Row`` with ``error`` set and goes on, for callers that skip and
count bad rows (``metabert predict --skip-bad``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}
ON_ERROR = ("raise", "report")


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass(frozen=True)
class Row:
    """One row of a file: its first line (1-based), its values (a list for TSV/CSV/text, a dict for
    JSONL, the selected columns after ``read_table``), or what is wrong with it."""

    line: int
    values: list | dict | None = None
    error: str | None = None


def file_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format the file's extension names."""
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise DataError(f"{path}: unknown format {fmt!r} (tsv, csv, jsonl or txt)")
        return fmt
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise DataError(f"{path}: cannot tell the format from the extension ({', '.join(FORMATS)}); "
                        "pass --format tsv|csv|jsonl|txt")
    return found


def _lines(stream: BinaryIO, errors: dict[int, str]) -> Iterator[str]:
    """Decoded lines with their line endings; a line that is not UTF-8 is decoded with replacement
    characters and its error kept in ``errors`` (line number -> message) for the row it falls in."""
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            errors[number] = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            line = raw.decode("utf-8", errors="replace")
        yield line.removeprefix("\ufeff") if number == 1 else line


class Replayed:
    """A binary stream (stdin) whose first line is read ahead (``first``) and read again: iterating
    it yields that line, then the rest of the stream."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.first = stream, stream.readline()
        self.name = getattr(stream, "name", "input")

    def __iter__(self):
        if self.first:
            yield self.first
        yield from self.stream

    def read(self, *args):  # a stream for ``_open``; only ever iterated
        raise OSError("a replayed stream is read line by line")


def _open(source: str | Path | BinaryIO, name: str | None) -> tuple[BinaryIO, str, bool]:
    if hasattr(source, "read"):
        return source, name or getattr(source, "name", "input"), False
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return open(path, "rb"), name or str(path), True


def read_rows(source: str | Path | BinaryIO, fmt: str, name: str | None = None,
              on_error: str = "raise") -> Iterator[Row]:
    """Every row of a file (a path or a binary stream) in ``fmt``: ``Row.values`` a list of strings
    (TSV, CSV, text) or a dict (JSONL). See the module docstring for what counts as an error."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    stream, name, close = _open(source, name)
    try:
        yield from _checked(_parse(stream, fmt, name), name, on_error)
    finally:
        if close:
            stream.close()


def _parse(stream: BinaryIO, fmt: str, name: str) -> Iterator[Row]:
    errors: dict[int, str] = {}
    lines = _lines(stream, errors)
    if fmt in ("tsv", "csv"):
        yield from _parse_delimited(lines, fmt, errors)
        return
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if number in errors:
            yield Row(number, error=errors[number])
        elif not text.strip():
            yield Row(number, values=None)  # blank: an error unless only blank lines follow
        elif fmt == "txt":
            yield Row(number, [text])
        elif fmt == "jsonl":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield Row(number, error=f"invalid JSON ({err.msg})")
                continue
            yield Row(number, obj) if isinstance(obj, dict) else Row(
                number, error=f"expected a JSON object, got {type(obj).__name__}")
        else:
            raise DataError(f"{name}: unknown format {fmt!r} (tsv, csv, jsonl or txt)")


def _parse_delimited(lines: Iterable[str], fmt: str, errors: dict[int, str]) -> Iterator[Row]:
    if fmt == "tsv":
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(lines, strict=True)
    end = 0  # last line of the previous row
    while True:
        start = end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            end = reader.line_num
            yield Row(start, error=f"unreadable row ({err})")
            continue
        end = reader.line_num
        bad = [errors[n] for n in range(start, end + 1) if n in errors]
        if bad:
            yield Row(start, error=bad[0])
        elif not values or values == [""]:
            yield Row(start, values=None)
        else:
            yield Row(start, values)


def _checked(rows: Iterator[Row], name: str, on_error: str) -> Iterator[Row]:
    """Blank rows held back until a row follows (then they are errors); errors raised or yielded."""
    blank: list[int] = []
    for row in rows:
        if row.error is None and row.values is None:
            blank.append(row.line)
            continue
        for line in blank:
            yield _fail(Row(line, error="empty line"), name, on_error)
        blank.clear()
        yield _fail(row, name, on_error) if row.error else row


def _fail(row: Row, name: str, on_error: str) -> Row:
    if on_error == "raise":
        raise DataError(f"{name}:{row.line}: {row.error}")
    return row


def read_table(source: str | Path | BinaryIO, fmt: str, columns: Sequence, header: bool = True,
               num_columns: int | None = None, name: str | None = None, on_error: str = "raise",
               roles: Sequence[str] = ()) -> Iterator[Row]:
    """The ``columns`` of every data row, in that order (``Row.values`` a list): names, found in the
    header (TSV/CSV) or in each object (JSONL), or 0-based positions (``-1``: the last); a text file
    has one column, ``0``. A row with another number of columns than the header (or
    ``num_columns``), or without one of the fields, is a bad row. A name missing from the header
    stops at once, naming the file, the columns found and the flag that chooses columns (``roles``:
    what each column is, e.g. ``("text", "label")``, for that message)."""
    stream, name, close = _open(source, name)
    try:
        rows = read_rows(stream, fmt, name, on_error)
        if fmt == "jsonl":
            for row in rows:
                yield row if row.error else _fail_or(_fields(row, columns), name, on_error)
            return
        index, expected = list(columns), num_columns
        if header and fmt != "txt":
            first = next(rows, None)
            if first is None:
                raise DataError(f"{name}: empty file (expected a header line)")
            if first.error:
                raise DataError(f"{name}:{first.line}: {first.error} (in the header line)")
            index = [_position(name, first.values, c, role) for c, role in zip(columns, [*roles, *[''] * len(columns)])]
            expected = expected or len(first.values)
        for row in rows:
            if row.error:
                yield row
            elif expected is not None and len(row.values) != expected:
                yield _fail(Row(row.line, error=f"expected {expected} columns, found {len(row.values)}"), name, on_error)
            else:
                try:
                    yield Row(row.line, [row.values[i] for i in index])
                except IndexError:
                    yield _fail(Row(row.line, error=f"too few columns ({len(row.values)})"), name, on_error)
    finally:
        if close:
            stream.close()


def _position(name: str, header: list[str], column, role: str = "") -> int:
    if isinstance(column, int):
        return column
    if column not in header:
        flag = "--label-column" if role == "label" else "--text-columns"
        raise DataError(f"{name}:1: no {role + ' ' if role else ''}column {column!r} in the header {header}; "
                        f"name it with {flag}")
    return header.index(column)


def _fields(row: Row, columns: Sequence) -> Row:
    missing = [c for c in columns if c not in row.values]
    if missing:
        return Row(row.line, error=f"missing field {missing[0]!r}")
    return Row(row.line, [row.values[c] for c in columns])


def _fail_or(row: Row, name: str, on_error: str) -> Row:
    return _fail(row, name, on_error) if row.error else row


def first_row(source: str | Path, fmt: str) -> list | dict:
    """The first row of a file (its header for TSV/CSV, its first object for JSONL)."""
    row = next(read_rows(source, fmt), None)
    if row is None:
        raise DataError(f"{source}: empty file")
    return row.values
