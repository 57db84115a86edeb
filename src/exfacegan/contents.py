"""Content records of finished stage folders: the SHA-256 and size of every file.

A stage writes its record, `contents.json`, when it is committed: which stage and fingerprint, the run
directory and UTC time that computed it, and every file's hash. The stage cache keeps the record with its
copy of the files and checks the files against it before they are reused; provenance.json lists it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exfacegan.data.artifacts import save_json

CONTENTS_FILE = "contents.json"
# Files are hashed and copied by a few threads: hashlib and file I/O release the GIL, and small files are
# dominated by the time to open them.
WORKERS = min(8, os.cpu_count() or 1)


def hash_file(path: Path, chunk: int = 1 << 20) -> dict[str, Any]:
    """{"sha256": hex digest, "size": bytes} of one file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "size": size}


def list_files(folder: Path) -> list[str]:
    """Every file under `folder` but its record, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != CONTENTS_FILE)


def hash_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(names, pool.map(lambda name: hash_file(folder / name), names)))


def record_contents(folder: Path, *, stage: str, fingerprint: str, computed_in: Path) -> dict[str, Any]:
    """Hash every file of a finished stage folder and write the record as `folder/contents.json`."""
    record = {
        "stage": stage, "fingerprint": fingerprint, "computed_in": str(Path(computed_in).resolve()),
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": hash_files(folder, list_files(folder)),
    }
    save_json(folder / CONTENTS_FILE, record)
    return record


def record_digest(folder: Path) -> str:
    """SHA-256 of a folder's record file: one hash that stands for every file's."""
    return hash_file(folder / CONTENTS_FILE)["sha256"]


def read_record(folder: Path, *, stage: str, fingerprint: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the record of `folder`, None), or (None, what is wrong with it) when it is missing, unreadable or
    made for another stage or fingerprint."""
    path = folder / CONTENTS_FILE
    if not path.is_file():
        return None, f"has no {CONTENTS_FILE} (an unverifiable entry, e.g. of an older exfacegan)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        if not all(isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)
                   for entry in files.values()):
            raise TypeError("a file entry lacks its sha256 or size")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        return None, f"has an unreadable {CONTENTS_FILE} ({type(error).__name__}: {error})"
    if (record.get("stage"), record.get("fingerprint")) != (stage, fingerprint):
        return None, f"has a {CONTENTS_FILE} of another stage or fingerprint"
    return record, None


def check_listing(folder: Path, record: dict[str, Any]) -> str | None:
    """None when `folder` holds exactly the recorded files with their recorded sizes, else the first
    difference, naming the file (a cheap check: no file is read)."""
    recorded: dict[str, dict[str, Any]] = record["files"]
    present = list_files(folder)
    missing = sorted(recorded.keys() - set(present))
    extra = sorted(set(present) - recorded.keys())
    if missing:
        return f"{missing[0]} is missing ({len(missing)} recorded files in all)"
    if extra:
        return f"{extra[0]} is not in its record ({len(extra)} such files in all)"
    for name in present:
        size = (folder / name).stat().st_size
        if size != recorded[name]["size"]:
            return f"{name} has {size} bytes, {recorded[name]['size']} recorded"
    return None


def check_hashes(folder: Path, record: dict[str, Any]) -> str | None:
    """None when every recorded file of `folder` has its recorded SHA-256, else the first that has not."""
    recorded: dict[str, dict[str, Any]] = record["files"]
    names = sorted(recorded)
    hashes = hash_files(folder, names)
    for name in names:
        if hashes[name]["sha256"] != recorded[name]["sha256"]:
            return f"{name} has sha256 {hashes[name]['sha256'][:16]}…, {recorded[name]['sha256'][:16]}… recorded"
    return None


def check_files(folder: Path, record: dict[str, Any]) -> str | None:
    """The listing, then the hashes: None when `folder` holds exactly what `record` says."""
    return check_listing(folder, record) or check_hashes(folder, record)


def copy_file(source: Path, destination: Path) -> None:
    """A byte copy (a reflink where the file system makes one for copy_file_range, e.g. XFS or Btrfs): never
    a hard link, so that editing one file cannot change the other."""
    try:
        with open(source, "rb") as src, open(destination, "wb") as dst:
            remaining = os.fstat(src.fileno()).st_size
            while remaining > 0 and (copied := os.copy_file_range(src.fileno(), dst.fileno(), remaining)) > 0:
                remaining -= copied
        return
    except OSError:  # copy_file_range unsupported between these file systems or by this kernel
        pass
    shutil.copyfile(source, destination)


def copy_files(source: Path, destination: Path, names: list[str], *, read_only: bool = False) -> None:
    """Copy `names` (relative paths) from `source` into a new folder `destination`."""
    destination.mkdir(parents=True)
    for folder in sorted({Path(name).parent for name in names}):
        (destination / folder).mkdir(parents=True, exist_ok=True)

    def copy(name: str) -> None:
        copy_file(source / name, destination / name)
        if read_only:
            os.chmod(destination / name, 0o444)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(copy, names))
