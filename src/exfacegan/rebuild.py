"""A finished run's saved config and the networks it names, rebuilt for commands that work on a run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from exfacegan.errors import ConfigError, ExFaceGANError

RUN_CONFIGS = ("config.yaml", ".hydra/config.yaml")


def load_run_config(run_dir: Path) -> tuple[Path, DictConfig] | None:
    """(path, config) of the config a run saved, or None if it saved none."""
    from exfacegan.config import register_resolvers

    register_resolvers()
    for name in RUN_CONFIGS:
        path = Path(run_dir) / name
        if path.is_file():
            return path, OmegaConf.load(path)
    return None


def rebuild_network(node: DictConfig, source: Path, device: str | torch.device, hint: str = "") -> torch.nn.Module:
    """The network a saved config node instantiates, frozen on `device`; one-line error if it cannot be built."""
    from hydra.utils import instantiate

    try:
        module = instantiate(node, _convert_="all")
    except ExFaceGANError:
        raise
    except Exception as error:  # an unresolvable or outdated saved config
        raise ConfigError(f"cannot rebuild a network from {source} ({error}){hint}") from error
    return module.eval().requires_grad_(False).to(device)
