"""Checks on a composed config that run before any heavy work."""

from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from exfacegan.devices import resolve_device
from exfacegan.errors import ConfigError

KNOWN_STAGES = {"sample", "label", "fit", "generate", "merge", "analyze"}
# What to give for the settings that configs leave mandatory (???).
MISSING_HINTS = {
    "embedder.checkpoint": "the .pth state dict of an arcface_torch iresnet backbone",
    "gan.network.source": "an official checkpoint path or a registry name",
}
# Typical encoded size of one 112x112 face, with headroom.
BYTES_PER_IMAGE = {"png": 30_000, "jpg": 8_000}


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
    _check_sampling_and_pool(cfg, references, num_samples)
    from exfacegan.stages.identity_filter import check_identity_controls

    check_identity_controls(cfg)
    if cfg.get("fit", {}).get("references_per_chunk", 1) < 1:
        raise ConfigError(f"fit.references_per_chunk must be at least 1, got {cfg.fit.references_per_chunk}")
    resolve_device(cfg.device)
    if "generate" in cfg.stages:
        _check_disk_space(cfg, references or cfg.label.get("pool_size") or num_samples)


def _check_sampling_and_pool(cfg: DictConfig, references: int | None, num_samples: int) -> None:
    """The generate stage's settings (sampling, gan.truncation, dataset, shards), checked by the spec it runs
    on, and `label.pool_size`."""
    from exfacegan.stages.generate import GenerateSpec

    GenerateSpec.from_config(cfg)
    pool = cfg.label.get("pool_size")
    if pool is None:
        return
    if isinstance(pool, bool) or not isinstance(pool, int) or not 2 <= pool <= num_samples:
        raise ConfigError(f"label.pool_size must be null or an integer in [2, sample.num_samples={num_samples}], "
                          f"got {pool!r}")
    if references is not None and references > pool:
        raise ConfigError(f"label.num_references={references} is more than label.pool_size={pool}: references are "
                          "the first codes of the pool")


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
