"""Generators: our own StyleGAN2/StyleGAN3/GAN-Control modules and official-checkpoint loading.

- `build_generator(arch, **init_kwargs)`: a module from the constructor arguments that
  official pickles store (`arch` in `ARCHITECTURES`).
- `load_generator(source, device)`: a registry name (see `exfacegan.weights`), the path
  of an official NVIDIA `.pkl` (read without executing its embedded code, see
  `exfacegan.gans.pickles`), or a GAN-Control model folder.
- `random_generator(arch, seed, **init_kwargs)`: the same module with random weights drawn
  from `seed` (for smoke runs; not a face model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from exfacegan.errors import CheckpointError, ConfigError
from exfacegan.gans.latent import Truncation, ws_from_w
from exfacegan.gans.networks import ARCHITECTURES, build_generator, random_generator
from exfacegan.gans.pickles import load_generator_pickle

__all__ = ["ARCHITECTURES", "Truncation", "build_generator", "load_generator", "random_generator", "ws_from_w"]


def load_generator(source: str | Path, device: str | torch.device = "cpu", **options: Any) -> nn.Module:
    """Generator from a registry name, an official `.pkl` path or a GAN-Control folder
    (`options` go to `exfacegan.gans.gan_control_folder.load_gan_control`)."""
    from exfacegan import weights

    if isinstance(source, str) and source in weights.REGISTRY:
        return load_generator_pickle(weights.fetch(source), device=device)
    path = Path(source).expanduser()
    if path.is_dir():
        from exfacegan.gans.gan_control_folder import load_gan_control

        return load_gan_control(path, device=device, **options)
    if not path.is_file():
        raise CheckpointError(
            f"generator checkpoint {source} not found: give an official .pkl path, a GAN-Control folder, "
            f"or a registry name ({', '.join(sorted(weights.REGISTRY))})"
        )
    if options:
        raise ConfigError(f"options {sorted(options)} apply to GAN-Control folders only, not to {path}")
    return load_generator_pickle(path, device=device)
