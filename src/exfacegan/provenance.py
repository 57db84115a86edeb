"""What a run was made from: package version, git revision, command line, checkpoint hashes."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import exfacegan
from exfacegan.data.artifacts import save_json
from exfacegan.weights import REGISTRY, SOURCE_KEYS, sha256_of, weights_path

REPO = Path(__file__).resolve().parents[2]


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


def write_provenance(path: Path, cfg: DictConfig) -> None:
    save_json(path, {
        "exfacegan_version": exfacegan.__version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": sys.argv,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoints": {name: {"path": str(p), "sha256": sha256_of(p)} for name, p in checkpoint_paths(cfg).items()},
    })
