"""Stage bookkeeping: fingerprints, finished/partial stage folders, and the shared stage cache.

A stage computes into `<run_dir>/<stage>.partial/` and is renamed to `<run_dir>/<stage>/` once
complete, so a stage folder under its final name is always whole. Its `fingerprint.json` names
the configuration (and upstream fingerprints) it was computed from; its `contents.json`, written when it
is committed, the SHA-256 and size of every file and the run and time that computed it
(`exfacegan.contents`). Finished stages are also copied into a cache keyed by fingerprint, so that runs of
a sweep share what they have in common (e.g. the sample stage of a threshold sweep). A cache entry is a
copy, never a hard link, so that editing a run's file cannot change it; it is checked against its record
before it is reused, and discarded (the stage recomputed) when a file differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exfacegan.contents import CONTENTS_FILE, check_hashes, check_listing, copy_files, read_record, record_contents
from exfacegan.data.artifacts import load_json, replace_dir, save_json, save_npz
from exfacegan.data.run_artifacts import read_json
from exfacegan.errors import ConfigError

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
# Partial stage folders this process created: the only ones RunDirectory.discard_unstarted may remove.
_created_here: set[Path] = set()


def fingerprint(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable payload."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunDirectory:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def partial_dir(self, stage: str) -> Path:
        return self.root / f"{stage}.partial"

    def finished_fingerprint(self, stage: str) -> str | None:
        path = self.stage_dir(stage) / FINGERPRINT_FILE
        if not path.is_file():
            return None
        return read_json(path, stage, {"fingerprint": str})["fingerprint"]

    def require(self, stage: str) -> Path:
        path = self.stage_dir(stage)
        if self.finished_fingerprint(stage) is None:
            raise ConfigError(f"no finished '{stage}' stage in {self.root}; run it first (add it to stages=[...])")
        return path

    def check_finished(self, stage: str, stage_fingerprint: str, *, needed_by: str | None = None) -> None:
        """Refuse a finished `stage` computed from another configuration than `stage_fingerprint` stands for,
        to be replaced by this run or, with `needed_by`, to be read by that stage."""
        finished = self.finished_fingerprint(stage)
        if finished is None or finished == stage_fingerprint:
            return
        if needed_by is None:
            raise ConfigError(
                f"{self.stage_dir(stage)} was computed from another configuration; "
                "pass overwrite=true to replace it, or use another run_dir"
            )
        raise ConfigError(
            f"{needed_by} would read {self.stage_dir(stage)}, which was computed from another configuration; "
            f"add {stage} to stages=[...] with overwrite=true, or use the settings it was computed with"
        )

    def begin(self, stage: str, stage_fingerprint: str, *, overwrite: bool) -> Path:
        """The partial folder to compute `stage` into, resuming one with the same fingerprint."""
        if not overwrite:
            self.check_finished(stage, stage_fingerprint)
        partial = self.partial_dir(stage)
        if partial.exists() and _marker_fingerprint(partial) != stage_fingerprint:
            log.info("discarding an unfinished '%s' stage of another configuration (or with an unreadable %s)", stage,
                     FINGERPRINT_FILE)
            shutil.rmtree(partial)
        if partial.exists():
            log.info("resuming the unfinished '%s' stage in %s", stage, partial)
        else:
            self._create_partial(stage, stage_fingerprint)
        return partial

    def _create_partial(self, stage: str, stage_fingerprint: str) -> None:
        """Make the partial folder appear with its marker in one rename, so that shards starting together
        never see it without one (which would make them discard it)."""
        partial = self.partial_dir(stage)
        fresh = partial.with_name(f".{partial.name}.{os.getpid()}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        save_json(fresh / FINGERPRINT_FILE, {"stage": stage, "fingerprint": stage_fingerprint})
        try:
            os.rename(fresh, partial)
        except OSError:  # another shard created it first
            shutil.rmtree(fresh, ignore_errors=True)
            return
        _created_here.add(partial.resolve())

    def discard_unstarted(self) -> list[Path]:
        """Remove the partial stage folders that this process created and saved nothing in but the marker.

        A run stopped by bad input then leaves no trace; folders of other processes (shards) are left alone.
        """
        discarded = []
        for partial in sorted(self.root.glob("*.partial")):
            key = partial.resolve()
            if key in _created_here and [p.name for p in partial.iterdir()] == [FINGERPRINT_FILE]:
                shutil.rmtree(partial)
                _created_here.discard(key)
                discarded.append(partial)
        return discarded

    def commit(self, stage: str) -> Path:
        """Record the partial folder's contents (`contents.json`) and give it the stage's name."""
        partial = self.partial_dir(stage)
        for stray in partial.rglob(".*.tmp"):  # temporary files of a killed writer
            stray.unlink()
        record_contents(partial, stage=stage, fingerprint=load_json(partial / FINGERPRINT_FILE)["fingerprint"],
                        computed_in=self.root)
        replace_dir(partial, self.stage_dir(stage))
        return self.stage_dir(stage)


def _marker_fingerprint(partial: Path) -> str | None:
    """The fingerprint a partial folder was begun for; None when its marker is missing or unreadable."""
    try:
        return str(json.loads((partial / FINGERPRINT_FILE).read_text(encoding="utf-8"))["fingerprint"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


@dataclass
class StageCache:
    """Finished stage folders shared between runs, keyed by stage fingerprint: `<root>/<stage>/<fingerprint>/`,
    a read-only copy of the stage folder with its `contents.json`."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def entry(self, stage: str, stage_fingerprint: str) -> Path:
        return self.root / stage / stage_fingerprint

    def fetch(self, stage: str, stage_fingerprint: str, destination: Path) -> dict[str, Any] | None:
        """Copy a cached stage into `destination` and return its record; None when nothing is cached, or when
        the entry does not match its record (it is then discarded, with one warning naming the file).

        The copies are hashed, not the entry: what the run receives is what was checked."""
        entry = self.entry(stage, stage_fingerprint)
        if not entry.is_dir():
            return None
        record, problem = read_record(entry, stage=stage, fingerprint=stage_fingerprint)
        tmp = destination.with_name(f".{destination.name}.{os.getpid()}.fetch")
        shutil.rmtree(tmp, ignore_errors=True)
        if record is not None:
            try:
                difference = check_listing(entry, record)
                if difference is None:
                    copy_files(entry, tmp, [*record["files"], CONTENTS_FILE])
                    difference = check_hashes(tmp, record)
            except OSError as error:  # e.g. another job of a sweep discarded the entry meanwhile
                difference = f"could not be read ({type(error).__name__}: {error})"
            problem = f"differs from its record: {difference}" if difference else None
        if problem is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("%s: the cached result %s %s; discarded, the stage is recomputed", stage, entry, problem)
            self.discard(stage, stage_fingerprint)
            return None
        replace_dir(tmp, destination)
        return record

    def store(self, stage: str, stage_fingerprint: str, source: Path) -> None:
        """Copy a finished stage folder (as its record lists it) into the cache, its files read-only."""
        entry = self.entry(stage, stage_fingerprint)
        record, problem = read_record(source, stage=stage, fingerprint=stage_fingerprint)
        if entry.exists() or record is None:
            if problem is not None:
                log.warning("%s: not cached: %s %s", stage, source, problem)
            return
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        copy_files(source, tmp, [*record["files"], CONTENTS_FILE], read_only=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another job of the sweep stored it first
            shutil.rmtree(tmp, ignore_errors=True)

    def discard(self, stage: str, stage_fingerprint: str) -> None:
        entry = self.entry(stage, stage_fingerprint)
        trash = entry.with_name(f".{entry.name}.{os.getpid()}.discarded")
        try:
            os.replace(entry, trash)
        except OSError:  # already gone (another job discarded it)
            return
        shutil.rmtree(trash, ignore_errors=True)


class ChunkStore:
    """Completed chunks of a long computation, one atomic .npz each, for resuming at chunk granularity."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, start: int) -> Path:
        return self.folder / f"{start:09d}.npz"

    def done(self, start: int) -> bool:
        return self.path(start).is_file()

    def save(self, start: int, **arrays: np.ndarray) -> None:
        save_npz(self.path(start), **arrays)

    def load_all(self, starts: list[int]) -> Iterator[dict[str, np.ndarray]]:
        for start in starts:
            with np.load(self.path(start)) as chunk:
                yield {key: chunk[key] for key in chunk.files}

    def concatenate(self, starts: list[int]) -> dict[str, np.ndarray]:
        chunks = list(self.load_all(starts))
        return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
