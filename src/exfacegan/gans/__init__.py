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

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exfacegan.errors import CheckpointError, ConfigError
from exfacegan.gans.latent import Truncation, ws_from_w

__all__ = ["ARCHITECTURES", "Truncation", "build_generator", "load_generator", "random_generator", "ws_from_w"]

# arch -> (module path, class name); imported on first use.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "stylegan2": ("exfacegan.gans.stylegan2", "Generator"),
    "stylegan3": ("exfacegan.gans.stylegan3", "Generator"),
    "gan_control": ("exfacegan.gans.gan_control", "Generator"),
}


def build_generator(arch: str, **init_kwargs: Any) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown generator architecture {arch!r}; use one of {sorted(ARCHITECTURES)}")
    module_path, class_name = ARCHITECTURES[arch]
    generator_class = getattr(importlib.import_module(module_path), class_name)
    return generator_class(**init_kwargs)


def load_generator(source: str | Path, device: str | torch.device = "cpu", **options: Any) -> nn.Module:
    """Generator from a registry name, an official `.pkl` path or a GAN-Control folder
    (`options` go to `exfacegan.gans.gan_control.load_gan_control`)."""
    from exfacegan import weights
    from exfacegan.gans.pickles import load_generator_pickle

    if isinstance(source, str) and source in weights.REGISTRY:
        return load_generator_pickle(weights.fetch(source), device=device)
    path = Path(source).expanduser()
    if path.is_dir():
        from exfacegan.gans.gan_control import load_gan_control

        return load_gan_control(path, device=device, **options)
    if not path.is_file():
        raise CheckpointError(
            f"generator checkpoint {source} not found: give an official .pkl path, a GAN-Control folder, "
            f"or a registry name ({', '.join(sorted(weights.REGISTRY))})"
        )
    if options:
        raise ConfigError(f"options {sorted(options)} apply to GAN-Control folders only, not to {path}")
    return load_generator_pickle(path, device=device)


def random_generator(arch: str, seed: int = 0, **init_kwargs: Any) -> nn.Module:
    """Deterministic random network: parameters drawn from `seed` without touching the global
    RNG state. For StyleGAN, `w_avg` is set to the mean w of 1,024 seeded z (as a trained
    model's running mean would be), so that truncation behaves as it does with real weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = build_generator(arch, **init_kwargs)
        mapping = getattr(generator, "mapping", None)
        if arch in ("stylegan2", "stylegan3") and isinstance(getattr(mapping, "w_avg", None), torch.Tensor):
            with torch.no_grad():
                z = torch.randn(1024, generator.z_dim)
                c = torch.zeros(1024, generator.c_dim)
                if generator.c_dim > 0:
                    c[torch.arange(1024), torch.randint(generator.c_dim, (1024,))] = 1
                mapping.w_avg.copy_(mapping(z, c)[:, 0].mean(dim=0))
    return generator.eval()
