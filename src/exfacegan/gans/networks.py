"""Our generator modules by architecture name: built from constructor arguments, or with seeded random weights."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from exfacegan.errors import ConfigError

# arch -> (module path, class name); imported on first use.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "stylegan2": ("exfacegan.gans.stylegan2", "Generator"),
    "stylegan3": ("exfacegan.gans.stylegan3", "Generator"),
    "gan_control": ("exfacegan.gans.gan_control", "Generator"),
}


def build_generator(arch: str, **init_kwargs: Any) -> nn.Module:
    """`arch`'s generator class called with `init_kwargs` (an official pickle's, or a YAML `small:` node's)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown generator architecture {arch!r}; use one of {sorted(ARCHITECTURES)}")
    module_path, class_name = ARCHITECTURES[arch]
    generator_class = getattr(importlib.import_module(module_path), class_name)
    return generator_class(**init_kwargs)


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
