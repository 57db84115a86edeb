"""GAN-Control's attribute controllers and the random attributes ExFaceGAN draws for them, per image seed.

Each controller is an MLP from an attribute value (pose in degrees [yaw, pitch, roll], age in
years, 27 spherical-harmonics lighting coefficients, 64 3DMM expression coefficients, hair colour)
to its latent group's slice of w; see `exfacegan.gans.gan_control` for the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from exfacegan.errors import ConfigError
from exfacegan.gans.ops.fc import FullyConnectedLayer
from exfacegan.gans.recorded import records_init_kwargs

SH_BAND0, SH_BAND1 = 0.282094791773878140, 0.488602511902919920


def scaled_mlp(in_dim: int, mid_dim: int, out_dim: int, num_layers: int, lr_mul: float) -> nn.Sequential:
    """`num_layers` equalised-lr layers with scaled leaky ReLU: in_dim -> mid_dim -> ... -> mid_dim -> out_dim."""
    if num_layers < 2:
        raise ConfigError(f"a GAN-Control MLP needs at least 2 layers, got n_mlp={num_layers}")
    dims = [in_dim] + [mid_dim] * (num_layers - 1) + [out_dim]
    return nn.Sequential(*(FullyConnectedLayer(a, b, activation="lrelu", lr_multiplier=lr_mul) for a, b in zip(dims[:-1], dims[1:])))


@records_init_kwargs
class Controller(nn.Module):
    """Attribute values [N, in_dim] -> their group's slice of w [N, out_dim] (GAN-Control's FcStack)."""

    def __init__(self, in_dim: int, out_dim: int, n_mlp: int = 4, mid_dim: int = 512, lr_mlp: float = 0.01) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.layers = scaled_mlp(in_dim, mid_dim, out_dim, n_mlp, lr_mlp)

    def forward(self, attributes: torch.Tensor) -> torch.Tensor:
        return self.layers(attributes)


@dataclass(frozen=True)
class AttributeRanges:
    """What ExFaceGAN's GAN-Control script draws (integers, both ends included)."""

    yaw: tuple[int, int] = (-50, 50)
    pitch: tuple[int, int] = (-10, 10)
    age: tuple[int, int] = (10, 80)
    illumination_strength: float = 0.6


def seed_uniforms(seeds: np.ndarray, num_streams: int) -> np.ndarray:
    """Uniform [0, 1) float64 [N, num_streams], a splitmix64 hash of (seed, stream): batch-independent."""
    state = np.asarray(seeds, dtype=np.int64).view(np.uint64)[:, None]
    streams = np.arange(1, num_streams + 1, dtype=np.uint64)[None]
    with np.errstate(over="ignore"):
        z = state * np.uint64(0xD1B54A32D192ED03) + streams * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sh_first_order(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """27 lighting coefficients (9 per colour; bands 0 and 1 set) for a light from direction (x, y, z)."""
    basis = torch.zeros(x.shape[0], 9, dtype=torch.float64)
    basis[:, 0] = SH_BAND0
    basis[:, 1] = -SH_BAND1 * y
    basis[:, 2] = SH_BAND1 * z
    basis[:, 3] = -SH_BAND1 * x
    return basis.repeat(1, 3)


def random_attributes(seeds: torch.Tensor, ranges: AttributeRanges = AttributeRanges(),
                      expressions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Controller inputs (float32, CPU) for one random face per seed, as ExFaceGAN draws them.

    orientation [N, 3] = (yaw, pitch, roll=0) in degrees; age [N, 1] in years; gamma [N, 27]: a light
    from -x, +x, -z, +z or ambient only (axis and direction drawn like the paper code) times
    `illumination_strength`; expression [N, D]: a row of the bank (when given).
    """
    u = torch.from_numpy(seed_uniforms(seeds.detach().cpu().numpy(), 6))

    def integers(column: int, bounds: tuple[int, int]) -> torch.Tensor:
        low, high = bounds
        return low + torch.floor(u[:, column] * (high - low + 1))

    yaw, pitch, age = integers(0, ranges.yaw), integers(1, ranges.pitch), integers(2, ranges.age)
    on_x_axis = integers(3, (0, 1)) == 0
    direction = integers(4, (-1, 1))
    zero = torch.zeros_like(direction)
    gamma = sh_first_order(torch.where(on_x_axis, direction, zero), zero, torch.where(on_x_axis, zero, direction))
    attributes = {
        "orientation": torch.stack([yaw, pitch, zero], 1),
        "age": age[:, None],
        "gamma": gamma * ranges.illumination_strength,
    }
    if expressions is not None and len(expressions):
        attributes["expression"] = expressions.detach().cpu().double()[integers(5, (0, len(expressions) - 1)).long()]
    return {name: value.float() for name, value in attributes.items()}
