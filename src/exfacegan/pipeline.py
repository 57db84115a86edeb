"""Stage bookkeeping: fingerprints, finished/partial stage folders, and the shared stage cache.

A stage computes into `<run_dir>/<stage>.partial/` and is renamed to `<run_dir>/<stage>/` once
complete, so a stage folder under its final name is always whole. Its `fingerprint.json` names
the configuration (and upstream fingerprints) it was computed from. Finished stages are also
hard-linked into a cache keyed by fingerprint, so that runs of a sweep share what they have in
common (e.g. the sample stage of a threshold sweep).
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

from exfacegan.data.artifacts import link_tree, load_json, replace_dir, save_json, save_npz
from exfacegan.errors import ConfigError

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"


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
        return load_json(path)["fingerprint"] if path.is_file() else None

    def require(self, stage: str) -> Path:
        path = self.stage_dir(stage)
        if self.finished_fingerprint(stage) is None:
            raise ConfigError(f"no finished '{stage}' stage in {self.root}; run it first (add it to stages=[...])")
        return path

    def begin(self, stage: str, stage_fingerprint: str, *, overwrite: bool) -> Path:
        """The partial folder to compute `stage` into, resuming one with the same fingerprint."""
        finished = self.finished_fingerprint(stage)
        if finished is not None and finished != stage_fingerprint and not overwrite:
            raise ConfigError(
                f"{self.stage_dir(stage)} was computed from another configuration; "
                "pass overwrite=true to replace it, or use another run_dir"
            )
        partial = self.partial_dir(stage)
        marker = partial / FINGERPRINT_FILE
        if partial.exists() and (not marker.is_file() or load_json(marker)["fingerprint"] != stage_fingerprint):
            log.info("discarding an unfinished '%s' stage computed from another configuration", stage)
            shutil.rmtree(partial)
        if partial.exists():
            log.info("resuming the unfinished '%s' stage in %s", stage, partial)
        partial.mkdir(parents=True, exist_ok=True)
        save_json(marker, {"stage": stage, "fingerprint": stage_fingerprint})
        return partial

    def commit(self, stage: str) -> Path:
        replace_dir(self.partial_dir(stage), self.stage_dir(stage))
        return self.stage_dir(stage)


@dataclass
class StageCache:
    """Finished stage folders shared between runs, keyed by stage fingerprint."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def entry(self, stage: str, stage_fingerprint: str) -> Path:
        return self.root / stage / stage_fingerprint

    def fetch(self, stage: str, stage_fingerprint: str, destination: Path) -> bool:
        """Link a cached stage into `destination`; False when nothing is cached."""
        entry = self.entry(stage, stage_fingerprint)
        if not (entry / FINGERPRINT_FILE).is_file():
            return False
        tmp = destination.with_name(f".{destination.name}.fetch")
        shutil.rmtree(tmp, ignore_errors=True)
        link_tree(entry, tmp)
        replace_dir(tmp, destination)
        return True

    def store(self, stage: str, stage_fingerprint: str, source: Path) -> None:
        entry = self.entry(stage, stage_fingerprint)
        if entry.exists():
            return
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        link_tree(source, tmp)
        try:
            os.replace(tmp, entry)
        except OSError:  # another job of the sweep stored it first
            shutil.rmtree(tmp, ignore_errors=True)


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
