"""The CSV tables that list a dataset's images, read through one strict reader: the generate stage's
`manifest.csv` and progress records, and an export's `samples.csv`.

Such a file may come from anyone (a downloaded dataset), so the reader trusts nothing: it opens only a
regular file inside the folder it was given (no symbolic link, no path leading out), reads it line by line
with a bound on each line and on the number of rows, and refuses non-UTF-8 text, NUL bytes, missing columns,
ragged rows, paths that are absolute or climb out (`..`), and values of the wrong form, each in one
`DataError` line naming the file and line.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from exfacegan.errors import DataError

# Every manifest row; records written before a column existed may lack the last ones (sha256, then the pose).
REQUIRED_MANIFEST_FIELDS = ["path", "class", "reference", "side", "k", "attempt", "found", "rejected"]
POSE_FIELDS = ["yaw", "pitch", "roll"]  # degrees, from the aligner's landmarks; "nan" without them
MANIFEST_FIELDS = [*REQUIRED_MANIFEST_FIELDS, "sha256", *POSE_FIELDS]
SAMPLES_FIELDS = ["key", "class", "folder", "source", "sha256"]
MAX_LINE_BYTES = 4096
MAX_ROWS = 10**8  # far above any dataset; callers that know the folder pass a tighter bound

_INTEGER = re.compile(r"-?\d{1,12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9_]{1,64}")
_ANGLE = re.compile(r"-?\d{1,3}\.\d{1,6}|nan")
_COMPONENT = re.compile(r"[^/\\\x00-\x1f\x7f]{1,255}")


def is_relative_path(value: str) -> bool:
    """A '/'-separated path that stays inside its folder: not absolute, no '', '.' or '..' component, no
    backslash or control character."""
    parts = value.split("/")
    return all(_COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts)


_CHECKS = {
    "class": lambda v: _INTEGER.fullmatch(v), "reference": lambda v: _INTEGER.fullmatch(v),
    "k": lambda v: _INTEGER.fullmatch(v), "attempt": lambda v: _INTEGER.fullmatch(v),
    "side": lambda v: v in ("same", "other"), "found": lambda v: v in ("0", "1"),
    "rejected": lambda v: v == "" or _NAME.fullmatch(v), "sha256": lambda v: v == "" or _SHA256.fullmatch(v),
    "path": lambda v: v == "" or is_relative_path(v), "source": is_relative_path, "folder": is_relative_path,
    "key": is_relative_path, **{angle: lambda v: _ANGLE.fullmatch(v) for angle in POSE_FIELDS},
}


def inside(root: Path, relative: str) -> Path:
    """root/relative, refused unless it is a path inside root that passes through no symbolic link."""
    if not is_relative_path(relative):
        raise DataError(f"{relative!r} is not a relative path inside {root}")
    path = root
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link (datasets hold none); refused")
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{path} leads out of {root}; refused")
    return path


@contextmanager
def open_inside(root: Path, relative: str) -> Iterator[BinaryIO]:
    """A regular file inside `root`, opened for reading without following a symbolic link."""
    path = inside(root, relative)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise DataError(f"cannot open {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path} is not a regular file")
        yield handle


def iter_table(root: Path, name: str, required: Sequence[str], *, max_rows: int = MAX_ROWS) -> Iterator[dict[str, str]]:
    """The rows of the CSV file root/name as dicts, each checked; at most `max_rows` of them."""
    with open_inside(root, name) as handle:
        yield from _rows(handle, root / name, required, max_rows)


def decode_text(data: bytes, where: str, kind: str) -> str:
    """UTF-8 text without NUL bytes, else one DataError line naming `where` and what it is not (`kind`)."""
    if b"\x00" in data:
        raise DataError(f"{where} holds a NUL byte; not {kind}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text; not {kind}") from None


def _rows(handle: BinaryIO, path: Path, required: Sequence[str], max_rows: int) -> Iterator[dict[str, str]]:
    header: list[str] | None = None
    for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"{path}: line {number} is longer than {MAX_LINE_BYTES} bytes; not a dataset table")
        text = decode_text(raw, f"{path}: line {number}", "a dataset table")
        fields = _split(text, path, number)
        if header is None:
            header = fields
            absent = [column for column in required if column not in header]
            if absent or len(set(header)) != len(header):
                raise DataError(f"{path} lacks the column(s) {', '.join(absent) or 'with distinct names'} "
                                f"(header: {','.join(header)[:200]}); not an exfacegan table")
            continue
        if number - 1 > max_rows:
            raise DataError(f"{path} lists more than {max_rows} rows, more than its folder can hold; refused")
        if len(fields) != len(header):
            raise DataError(f"{path}: line {number} has {len(fields)} fields, the header {len(header)}")
        row = dict(zip(header, fields))
        _check_row(row, path, number)
        yield row
    if header is None:
        raise DataError(f"{path} is empty; not an exfacegan table")


def _split(text: str, path: Path, number: int) -> list[str]:
    try:
        rows = list(csv.reader([text.rstrip("\r\n")]))
    except csv.Error as error:
        raise DataError(f"{path}: line {number} is not CSV ({error})") from None
    return rows[0] if rows else []


def _check_row(row: dict[str, str], path: Path, number: int) -> None:
    for column, check in _CHECKS.items():
        if column in row and not check(row[column]):
            raise DataError(f"{path}: line {number}: {column}={row[column][:80]!r} is not a valid value")
    if "path" in row and "rejected" in row and (row["path"] == "") != (row["rejected"] != ""):
        raise DataError(f"{path}: line {number}: a kept image needs a path, a rejected render none")
    if "path" in row and row.get("sha256", "") != "" and row["path"] == "":
        raise DataError(f"{path}: line {number}: a hash without an image path")


def read_manifest(path: Path, *, required: Sequence[str] = REQUIRED_MANIFEST_FIELDS,
                  max_rows: int = MAX_ROWS) -> list[dict[str, str]]:
    """The checked rows of a manifest or progress record (`sha256` and the pose may be absent: records written
    before them)."""
    path = Path(path)
    return list(iter_table(path.parent, path.name, required, max_rows=max_rows))
