"""Checks on a composed config that run before any heavy work."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from exfacegan.errors import ConfigError
from exfacegan.weights import preflight

KNOWN_STAGES = {"sample", "label", "fit", "generate", "merge", "analyze"}
# What to give for the settings that configs leave mandatory (???).
MISSING_HINTS = {
    "embedder.checkpoint": "the .pth state dict of an arcface_torch iresnet backbone",
    "gan.network.source": "an official checkpoint path or a registry name",
    "embedder.path": "an ONNX face model file or a registry name",
}
# Typical encoded size of one 112x112 face, with headroom.
BYTES_PER_IMAGE = {"png": 30_000, "jpg": 8_000}


def resolve_device(name: str, job_number: int | None = None) -> torch.device:
    """`auto` is CUDA when present; with `job_number` (parallel jobs on one machine) job k takes GPU k mod count.

    The GPU is chosen by index rather than through CUDA_VISIBLE_DEVICES, because a launcher's worker
    process may run several jobs one after another, and CUDA reads that variable only once.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if job_number is None:
            return torch.device("cuda")
        return torch.device("cuda", job_number % torch.cuda.device_count())
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device={name!r} is not a device name (use auto, cpu, cuda or cuda:N)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but no CUDA device is available; use device=cpu")
    return device


def validate_config(cfg: DictConfig) -> None:
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        hints = "; ".join(f"{key}: {MISSING_HINTS[key]}" for key in missing if key in MISSING_HINTS)
        raise ConfigError(
            f"set {', '.join(f'{key}=...' for key in missing)} on the command line"
            + (f" ({hints})" if hints else "") + "; experiment=smoke runs without any checkpoint"
        )
    unknown = set(cfg.stages) - KNOWN_STAGES
    if unknown:
        raise ConfigError(f"unknown stages {sorted(unknown)}; choose from {sorted(KNOWN_STAGES)}")
    threshold = cfg.label.threshold
    if threshold != "median":
        if not isinstance(threshold, (int, float)) or not -1.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"label.threshold must be 'median' or a cosine similarity in [-1, 1], got {threshold!r}")
    if cfg.boundary.margin < 0:
        raise ConfigError(f"boundary.margin must be >= 0, got {cfg.boundary.margin}")
    num_samples = cfg.sample.num_samples
    if num_samples < 2:
        raise ConfigError(f"sample.num_samples must be at least 2, got {num_samples}")
    references = cfg.label.num_references
    if references is not None and not 1 <= references <= num_samples:
        raise ConfigError(f"label.num_references={references} must be between 1 and sample.num_samples={num_samples}")
    sampling = cfg.sampling
    if sampling.per_class < 1:
        raise ConfigError(f"sampling.per_class must be at least 1, got {sampling.per_class}")
    if not 0 <= sampling.min_off <= sampling.max_off:
        raise ConfigError(f"need 0 <= sampling.min_off <= sampling.max_off, got {sampling.min_off} and {sampling.max_off}")
    if cfg.dataset.image_format not in BYTES_PER_IMAGE:
        raise ConfigError(f"dataset.image_format must be one of {sorted(BYTES_PER_IMAGE)}, got {cfg.dataset.image_format!r}")
    if not 0 <= cfg.generate.shard < cfg.generate.num_shards:
        raise ConfigError(f"generate.shard={cfg.generate.shard} must be in [0, generate.num_shards={cfg.generate.num_shards})")
    if cfg.get("fit", {}).get("references_per_chunk", 1) < 1:
        raise ConfigError(f"fit.references_per_chunk must be at least 1, got {cfg.fit.references_per_chunk}")
    if cfg.generate.get("references_per_chunk", 1) < 1:
        raise ConfigError(f"generate.references_per_chunk must be at least 1, got {cfg.generate.references_per_chunk}")
    resolve_device(cfg.device)
    if "generate" in cfg.stages:
        _check_disk_space(cfg, references or num_samples)
    preflight(cfg)


def _missing_keys(node: object, prefix: str = "") -> list[str]:
    """Dotted keys whose value is still `???` (OmegaConf.missing_keys trips over interpolations to them)."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _missing_keys(value, f"{prefix}{name}.")]
    if isinstance(node, list):
        return [key for index, value in enumerate(node) for key in _missing_keys(value, f"{prefix}{index}.")]
    return [prefix[:-1]] if node == "???" else []


def _check_disk_space(cfg: DictConfig, references: int) -> None:
    sides = 2 if cfg.sampling.both_sides else 1
    needed = references * sides * cfg.sampling.per_class * BYTES_PER_IMAGE[cfg.dataset.image_format] // cfg.generate.num_shards
    target = Path(cfg.run_dir or ".").resolve()
    while not target.exists():
        target = target.parent
    free = shutil.disk_usage(target).free
    if needed > free:
        raise ConfigError(
            f"the dataset needs about {needed / 1e9:.1f} GB but only {free / 1e9:.1f} GB are free under {target}"
        )
