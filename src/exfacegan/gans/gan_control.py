"""GAN-Control (Shoshan et al., ICCV 2021): the released FFHQ generator and its attribute controllers.

Our own modules for the model amazon-science/gan-control distributes. The generator is a
StyleGAN2 (rosinality layout, 512x512, 16 ws, transposed-convolution upsampling) whose mapping is
split into groups: each group has its own MLP (pixel norm, `n_mlp` scaled linear layers through a
256-wide middle) on its slice of z, and w is the concatenation of the group outputs:
id 0:128, expression 128:192, orientation 192:256, gamma (illumination) 256:320, age 320:384,
hair 384:448, other 448:512. Each attribute controller is an MLP from an attribute value (pose in
degrees [yaw, pitch, roll], age in years, 27 spherical-harmonics lighting coefficients, 64 3DMM
expression coefficients, hair colour) to its group's slice of w.

Released folder layout (what `load_gan_control` reads and `write_gan_control_folder` writes):
    <folder>/generator/args.json                 model_config + training_config.sub_groups_dict
    <folder>/generator/checkpoint/<step>.pt      torch.save dict with `g_ema` (also g, d, optimisers)
    <folder>/<group>*/args.json                  a controller: model_config in_dim, mid_dim, n_mlp, lr_mlp
    <folder>/<group>*/checkpoint/<step>.pt       dict with `controller` (keys fc_stack.<i>.weight/bias)
    <folder>/expressions.npy                     optional: float [K, 64] bank of expression samples
The expression bank ExFaceGAN draws from is the `expression3d` column of GAN-Control's
`ffhq_1K_attributes_samples_df.pkl` (a pandas pickle, not read here); convert it once where pandas is
installed: `np.save("expressions.npy", np.stack(pd.read_pickle(p).expression3d))`. Without a bank the
expression slice is left as the mapping produced it.

Which latent the ExFaceGAN boundaries live in: the 512-d concatenated w (all seven groups, after
truncation toward `mapping.w_avg`), *before* `prepare_ws` lets the controllers overwrite the
orientation, age, illumination and expression slices. That is the w the paper code stores for its
neutral samples (its `gen_batch` runs no controller), fits the SVMs on and moves along the normal; only
when an image is rendered are the four attribute slices replaced by controller outputs for random
attributes. Keeping the boundaries in this space keeps the latents interchangeable with the other
backbones' w; the identity itself is carried by the id group (0:128), and the controller-owned slices
carry no identity by GAN-Control's training, so whatever the normal holds there is overwritten anyway.
Differences from the paper code: it draws one set of attributes per batch, we draw one per image
from the image's seed (deterministic, independent of batching); truncation toward the group means is
the same as toward `w_avg`, since the groups tile w.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

GROUPS: dict[str, tuple[int, int]] = {
    "id": (0, 128), "expression": (128, 192), "orientation": (192, 256), "gamma": (256, 320),
    "age": (320, 384), "hair": (384, 448), "other": (448, 512),
}
CONTROLLED_GROUPS = ("orientation", "age", "gamma", "expression")  # those ExFaceGAN randomises
NOISE_MODES = ("const", "random", "none")
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
SQRT2 = math.sqrt(2.0)
SH_BAND0, SH_BAND1 = 0.282094791773878140, 0.488602511902919920
W_AVG_SAMPLES = 10_000  # z drawn (seed 0) for mapping.w_avg, which the checkpoints do not hold


# ----------------------------------------------------------------------------------------------
# Layers


class ScaledLinear(nn.Module):
    """Linear layer with equalised learning rate; `activate` adds the sqrt(2)-scaled leaky ReLU."""

    def __init__(self, in_features: int, out_features: int, *, lr_mul: float = 1.0, bias_init: float = 0.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.activate else x


def scaled_mlp(in_dim: int, mid_dim: int, out_dim: int, num_layers: int, lr_mul: float) -> nn.Sequential:
    """`num_layers` activated layers: in_dim -> mid_dim -> ... -> mid_dim -> out_dim."""
    if num_layers < 2:
        raise ConfigError(f"a GAN-Control MLP needs at least 2 layers, got n_mlp={num_layers}")
    dims = [in_dim] + [mid_dim] * (num_layers - 1) + [out_dim]
    return nn.Sequential(*(ScaledLinear(a, b, lr_mul=lr_mul, activate=True) for a, b in zip(dims[:-1], dims[1:])))


def _fir(x: torch.Tensor, pad: tuple[int, int], gain: float) -> torch.Tensor:
    """The separable [1,3,3,1] low-pass filter per channel, after zero padding (before, after) each axis.

    Written as shifted sums (the taps are symmetric): on CPU this is several times faster than a
    depthwise convolution.
    """
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    x = (x[..., :-3] + x[..., 3:]).add_(x[..., 1:-2] + x[..., 2:-1], alpha=3.0)
    x = (x[..., :-3, :] + x[..., 3:, :]).add_(x[..., 1:-2, :] + x[..., 2:-1, :], alpha=3.0)
    return x.mul_(gain / sum(BLUR_TAPS) ** 2)


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """Zero insertion then the [1,3,3,1] filter with gain 4 (rosinality's Upsample, pad (2, 1))."""
    n, c, h, w = x.shape
    spread = x.new_zeros(n, c, h, 2, w, 2)
    spread[:, :, :, 0, :, 0] = x
    return _fir(spread.view(n, c, 2 * h, 2 * w), (2, 1), gain=4.0)


class ModulatedConv(nn.Module):
    """Style-modulated convolution; with `up`, a stride-2 transposed convolution then the blur filter.

    Computed by scaling the activations rather than the weights (one shared kernel for the batch);
    demodulation scales the output channels, which commutes with the per-channel blur.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, *,
                 demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.affine = ScaledLinear(w_dim, in_channels, bias_init=1.0)
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        weight = self.weight[0] * self.weight_gain
        x = x * styles[:, :, None, None].to(x.dtype)
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
            x = _fir(x, (1, 1), gain=4.0)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=weight.shape[-1] // 2)
        if self.demodulate:
            demod = torch.rsqrt(styles.square() @ weight.square().sum((2, 3)).T + 1e-8)
            demod = demod[:, :, None, None].to(x.dtype)
            x = x * demod if x.requires_grad else x.mul_(demod)  # autograd would need x before the product
        return x


class StyledLayer(nn.Module):
    """Modulated 3x3 convolution, noise injection, bias and scaled leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.conv(x, w)
        if noise_mode == "const":
            x = x.add_((self.noise_strength * self.noise_const).to(x.dtype))
        elif noise_mode == "random":
            x = x.add_((self.noise_strength * torch.randn_like(x[:, :1])).to(x.dtype))
        # leaky ReLU is positively homogeneous: lrelu(x) * sqrt(2) == lrelu(x * sqrt(2)), all in place
        x = x.add_(self.bias[None, :, None, None].to(x.dtype)).mul_(SQRT2)
        return F.leaky_relu(x, 0.2, inplace=True)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, img_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, img_channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        y = self.conv(x, w) + self.bias.to(x.dtype)
        return y if skip is None else y + upsample_2x(skip)


# ----------------------------------------------------------------------------------------------
# Networks


def _check_groups(groups: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    ordered = dict(sorted(((str(k), (int(v[0]), int(v[1]))) for k, v in groups.items()), key=lambda kv: kv[1][0]))
    end = 0
    for name, (start, stop) in ordered.items():
        if start != end or stop <= start:
            raise ConfigError(f"latent groups must tile w without gaps or overlaps; group {name!r} is [{start}, {stop}) after {end}")
        end = stop
    return ordered


class GroupedMapping(nn.Module):
    """z -> ws: one MLP per latent group on its slice of z; w is their concatenation."""

    def __init__(self, groups: Mapping[str, tuple[int, int]], num_ws: int, n_mlp: int = 8, mid_dim: int = 256,
                 lr_mul: float = 0.01) -> None:
        super().__init__()
        self.groups = _check_groups(groups)
        self.z_dim = self.w_dim = max(stop for _, stop in self.groups.values())
        self.c_dim = 0
        self.num_ws = num_ws
        self.mlps = nn.ModuleDict({
            name: scaled_mlp(stop - start, mid_dim, stop - start, n_mlp, lr_mul) for name, (start, stop) in self.groups.items()
        })
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    def w(self, z: torch.Tensor) -> torch.Tensor:
        parts = []
        for name, (start, stop) in self.groups.items():
            part = z[:, start:stop]
            part = part * torch.rsqrt(part.square().mean(1, keepdim=True) + 1e-8)
            parts.append(self.mlps[name](part))
        return torch.cat(parts, 1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise DataError(f"z has shape {tuple(z.shape)}, GAN-Control expects [N, {self.z_dim}]")
        ws = self.w(z).unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    @torch.no_grad()
    def update_w_avg(self, num_samples: int = W_AVG_SAMPLES, seed: int = 0, chunk: int = 5_000) -> None:
        """Mean w over `num_samples` z drawn from a fixed seed (same z on every device)."""
        z = torch.randn(num_samples, self.z_dim, generator=torch.Generator().manual_seed(seed))
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=self.w_avg.device)
        for part in z.split(chunk):
            total += self.w(part.to(self.w_avg.device)).double().sum(0)
        self.w_avg.copy_(total / num_samples)


def layer_channels(resolution: int, channel_multiplier: float, channel_max: int) -> int:
    """GAN-Control's channel table: `channel_max` up to 32x32, then 16384 * multiplier / resolution."""
    return channel_max if resolution <= 32 else int(16384 * channel_multiplier / resolution)


class Synthesis(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, C, size, size] in about [-1, 1]."""

    def __init__(self, size: int, w_dim: int, channel_multiplier: float = 2.0, channel_max: int = 512,
                 img_channels: int = 3) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if size < 8 or 2**log_size != size:
            raise ConfigError(f"GAN-Control size must be a power of two >= 8, got {size}")
        self.img_resolution, self.img_channels, self.w_dim = size, img_channels, w_dim
        self.num_ws = 2 * log_size - 2
        channels = [layer_channels(2**k, channel_multiplier, channel_max) for k in range(2, log_size + 1)]
        self.const = nn.Parameter(torch.randn(1, channels[0], 4, 4))
        layers = [StyledLayer(channels[0], channels[0], w_dim, 4)]
        torgbs = [ToRGB(channels[0], img_channels, w_dim)]
        for k in range(1, len(channels)):
            resolution = 4 * 2**k
            layers += [StyledLayer(channels[k - 1], channels[k], w_dim, resolution, up=True),
                       StyledLayer(channels[k], channels[k], w_dim, resolution)]
            torgbs.append(ToRGB(channels[k], img_channels, w_dim))
        self.layers = nn.ModuleList(layers)
        self.torgbs = nn.ModuleList(torgbs)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", **_: object) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise DataError(f"ws has shape {tuple(ws.shape)}, GAN-Control expects [N, {self.num_ws}, {self.w_dim}]")
        if noise_mode not in NOISE_MODES:
            raise DataError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.layers[0](x, ws[:, 0], noise_mode)
        image = self.torgbs[0](x, ws[:, 1], None)
        for block, torgb in enumerate(self.torgbs[1:]):
            index = 1 + 2 * block
            x = self.layers[index](x, ws[:, index], noise_mode)
            x = self.layers[index + 1](x, ws[:, index + 1], noise_mode)
            image = torgb(x, ws[:, index + 2], image)
        return image.float()


class Controller(nn.Module):
    """Attribute values [N, in_dim] -> their group's slice of w [N, out_dim] (GAN-Control's FcStack)."""

    def __init__(self, in_dim: int, out_dim: int, n_mlp: int = 4, mid_dim: int = 512, lr_mlp: float = 0.01) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.config = {"in_dim": in_dim, "mid_dim": mid_dim, "n_mlp": n_mlp, "lr_mlp": lr_mlp}
        self.layers = scaled_mlp(in_dim, mid_dim, out_dim, n_mlp, lr_mlp)

    def forward(self, attributes: torch.Tensor) -> torch.Tensor:
        return self.layers(attributes)


# ----------------------------------------------------------------------------------------------
# Random attributes per image seed


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


# ----------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """GAN-Control generator with the project's generator interface (see CONTEXT.md).

    Keyword arguments follow generator/args.json (see `generator_kwargs`); `channel_max`, `mid_dim`
    and `lr_mlp` are fixed in the released code (512, 256, 0.01) and exist here for small test networks.
    """

    def __init__(self, size: int = 512, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: float = 2.0,
                 groups: Mapping[str, tuple[int, int]] | None = None, *, img_channels: int = 3, lr_mlp: float = 0.01,
                 mid_dim: int = 256, channel_max: int = 512) -> None:
        super().__init__()
        groups = _check_groups(GROUPS if groups is None else groups)
        self.synthesis = Synthesis(size, style_dim, channel_multiplier, channel_max, img_channels)
        self.mapping = GroupedMapping(groups, self.synthesis.num_ws, n_mlp, mid_dim, lr_mlp)
        if self.mapping.w_dim != style_dim:
            raise ConfigError(f"latent groups cover {self.mapping.w_dim} dimensions but style_dim is {style_dim}")
        self.z_dim = self.w_dim = style_dim
        self.c_dim = 0
        self.num_ws = self.synthesis.num_ws
        self.img_resolution, self.img_channels = size, img_channels
        self.config = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": channel_multiplier,
                       "groups": {k: list(v) for k, v in groups.items()}, "img_channels": img_channels,
                       "lr_mlp": lr_mlp, "mid_dim": mid_dim, "channel_max": channel_max}
        self.controllers = nn.ModuleDict()
        self.register_buffer("expressions", None)
        self.attribute_ranges = AttributeRanges()

    def add_controller(self, group: str, controller: Controller) -> None:
        if group not in self.mapping.groups:
            raise CheckpointError(f"controller for {group!r}, but the generator's groups are {list(self.mapping.groups)}")
        start, stop = self.mapping.groups[group]
        if controller.out_dim != stop - start:
            raise CheckpointError(f"the {group} controller outputs {controller.out_dim} values, its latent group has {stop - start}")
        self.controllers[group] = controller

    def set_expressions(self, bank: torch.Tensor | np.ndarray) -> None:
        bank = torch.as_tensor(np.asarray(bank, dtype=np.float32))
        expected = self.controllers["expression"].in_dim if "expression" in self.controllers else None
        if bank.ndim != 2 or len(bank) == 0 or (expected is not None and bank.shape[1] != expected):
            raise DataError(f"the expression bank has shape {tuple(bank.shape)}, expected [K, {expected or 'D'}] with K > 0")
        self.expressions = bank.to(self.mapping.w_avg.device)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode=noise_mode)

    def prepare_ws(self, ws: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Overwrite the orientation, age, illumination and expression slices with controller outputs
        for random attributes drawn from each image's seed; every other slice (id included) is kept."""
        if seeds.shape != (ws.shape[0],):
            raise DataError(f"need one seed per image: seeds have shape {tuple(seeds.shape)} for {ws.shape[0]} images")
        groups = [g for g in CONTROLLED_GROUPS if g in self.controllers]
        if not groups:
            return ws
        attributes = random_attributes(seeds, self.attribute_ranges, self.expressions)
        ws = ws.clone()
        for group in groups:
            if group in attributes:
                start, stop = self.mapping.groups[group]
                value = self.controllers[group](attributes[group].to(ws.device, self.mapping.w_avg.dtype))
                ws[:, :, start:stop] = value[:, None].to(ws.dtype)
        return ws


def small_random_gan_control(seed: int = 0, size: int = 64, n_mlp: int = 2, mid_dim: int = 32, channel_max: int = 32,
                             channel_multiplier: float = 0.125, controller_mid_dim: int = 32, num_expressions: int = 16,
                             w_avg_samples: int = W_AVG_SAMPLES) -> Generator:
    """A small network in the GAN-Control layout (512-d grouped w, all five controllers, an expression
    bank) with random weights from `seed`: for tests and the smoke experiment, not a face model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(size, 512, n_mlp, channel_multiplier, mid_dim=mid_dim, channel_max=channel_max)
        for layer in generator.synthesis.layers:
            nn.init.normal_(layer.noise_strength, std=0.1)
        for group, in_dim in {"orientation": 3, "age": 1, "gamma": 27, "expression": 64, "hair": 3}.items():
            start, stop = GROUPS[group]
            generator.add_controller(group, Controller(in_dim, stop - start, n_mlp, controller_mid_dim))
        generator.set_expressions(torch.randn(num_expressions, 64) * 0.5)
    generator.mapping.update_w_avg(w_avg_samples)
    return generator.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# The released folder layout


def generator_kwargs(args: Mapping) -> dict:
    """`Generator` keyword arguments from the contents of generator/args.json."""
    try:
        model = args["model_config"]
        if model.get("vanilla", False) or not model.get("split_fc", True) or model.get("marge_fc", False):
            raise CheckpointError("only GAN-Control generators with a split (grouped) mapping are supported "
                                  "(args.json model_config needs split_fc true, vanilla and marge_fc false)")
        if not model.get("conv_transpose", True) or model.get("g_noise_mode", "normal") not in ("normal", "same_for_same_id"):
            raise CheckpointError("args.json asks for conv_transpose false or a g_noise_mode other than normal, "
                                  "which the released GAN-Control code does not run")
        groups = {name: tuple(group["place_in_latent"]) for name, group in args["training_config"]["sub_groups_dict"].items()}
        return {"size": int(model["size"]), "style_dim": int(model["latent_size"]), "n_mlp": int(model["n_mlp"]),
                "channel_multiplier": float(model["channel_multiplier"]), "groups": groups,
                "img_channels": int(model.get("img_channels", 3)), "lr_mlp": float(model.get("lr_mlp", 0.01)),
                "mid_dim": int(model.get("mid_dim", 256)), "channel_max": int(model.get("channel_max", 512))}
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"generator args.json lacks the field {error} (model_config / training_config.sub_groups_dict)") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a GAN-Control model folder")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON ({error})") from None


def latest_checkpoint(directory: Path) -> Path:
    """`<directory>/checkpoint/<step>.pt` with the highest step (other names only when none is numbered)."""
    files = sorted((directory / "checkpoint").glob("*.pt"))
    if not files:
        raise CheckpointError(f"{directory / 'checkpoint'} holds no <step>.pt checkpoint")
    numbered = [f for f in files if f.stem.isdigit()]
    return max(numbered, key=lambda f: int(f.stem)) if numbered else files[-1]


def _load_entry(path: Path, entry: str) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(entry), dict):
        raise CheckpointError(f"{path} has no {entry!r} state dict: not a GAN-Control checkpoint")
    state = checkpoint[entry]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def generator_key_table(generator: Generator) -> dict[str, str]:
    """Checkpoint (rosinality / GAN-Control) key -> our key, for every generator parameter and buffer."""
    table = {}
    for name, mlp in generator.mapping.mlps.items():
        for i in range(len(mlp)):  # index 0 of the checkpoint's stack is the parameter-free pixel norm
            table |= {f"style.{name}.{i + 1}.{p}": f"mapping.mlps.{name}.{i}.{p}" for p in ("weight", "bias")}
    table["input.input"] = "synthesis.const"
    for j in range(len(generator.synthesis.layers)):
        src, dst = ("conv1" if j == 0 else f"convs.{j - 1}"), f"synthesis.layers.{j}"
        table |= {f"{src}.conv.weight": f"{dst}.conv.weight", f"{src}.conv.modulation.weight": f"{dst}.conv.affine.weight",
                  f"{src}.conv.modulation.bias": f"{dst}.conv.affine.bias", f"{src}.noise.weight": f"{dst}.noise_strength",
                  f"{src}.activate.bias": f"{dst}.bias", f"noises.noise_{j}": f"{dst}.noise_const"}
    for j in range(len(generator.synthesis.torgbs)):
        src, dst = ("to_rgb1" if j == 0 else f"to_rgbs.{j - 1}"), f"synthesis.torgbs.{j}"
        table |= {f"{src}.conv.weight": f"{dst}.conv.weight", f"{src}.conv.modulation.weight": f"{dst}.conv.affine.weight",
                  f"{src}.conv.modulation.bias": f"{dst}.conv.affine.bias", f"{src}.bias": f"{dst}.bias"}
    return table


# Fixed [1,3,3,1] filter buffers of the checkpoint: recomputed here, so accepted and not read.
FILTER_KEY = re.compile(r"(convs\.\d+\.conv\.blur|to_rgbs\.\d+\.upsample)\.kernel")


def _load_renamed(module: nn.Module, state: Mapping[str, torch.Tensor], table: Mapping[str, str], what: str,
                  ignored: re.Pattern | None = None) -> None:
    unexpected = [k for k in state if k not in table and not (ignored and ignored.fullmatch(k))]
    if unexpected:
        raise CheckpointError(f"{what} has unexpected key {unexpected[0]!r} ({len(unexpected)} in all): "
                              "not a GAN-Control network of the shape its args.json describes")
    missing = [k for k in table if k not in state]
    if missing:
        raise CheckpointError(f"{what} lacks key {missing[0]!r} ({len(missing)} missing): truncated or of another architecture")
    ours = module.state_dict()
    renamed = {}
    for src, dst in table.items():
        value = state[src]
        if not torch.is_tensor(value) or value.shape != ours[dst].shape:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise CheckpointError(f"{what} key {src!r} has shape {shape}, but args.json implies {tuple(ours[dst].shape)}")
        renamed[dst] = value
    module.load_state_dict(renamed, strict=False)  # the table names every weight; w_avg is computed, controllers load apart


def _controller_dirs(folder: Path, groups: list[str]) -> dict[str, Path]:
    """A controller folder's name starts with its group's name ('expression_q*' is a different controller)."""
    found = {}
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "generator")
    for group in groups:
        matches = [p for p in subdirs if p.name.startswith(group) and not (group == "expression" and p.name.startswith("expression_q"))]
        if matches:
            found[group] = matches[0]
    return found


def load_controller(directory: Path, out_dim: int) -> Controller:
    model = _read_json(directory / "args.json").get("model_config", {})
    try:
        controller = Controller(int(model["in_dim"]), out_dim, int(model["n_mlp"]), int(model["mid_dim"]), float(model["lr_mlp"]))
    except KeyError as error:
        raise CheckpointError(f"{directory / 'args.json'} lacks model_config field {error}") from None
    path = latest_checkpoint(directory)
    table = {f"fc_stack.{i}.{p}": f"layers.{i}.{p}" for i in range(len(controller.layers)) for p in ("weight", "bias")}
    _load_renamed(controller, _load_entry(path, "controller"), table, f"{path} 'controller'")
    return controller


def load_gan_control(folder: str | Path, device: str | torch.device = "cpu", *, expressions: str | Path | None = None,
                     w_avg_samples: int = W_AVG_SAMPLES) -> Generator:
    """The released GAN-Control folder (see the module docstring) as a `Generator` with its controllers.

    The latest step of each checkpoint folder is used. `expressions` is a .npy bank [K, 64]
    (default: `<folder>/expressions.npy` when present). `mapping.w_avg` is the mean w of
    `w_avg_samples` z drawn from seed 0, as the checkpoint holds none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"GAN-Control folder {folder} does not exist (expected <folder>/generator/args.json)")
    generator = Generator(**generator_kwargs(_read_json(folder / "generator" / "args.json")))
    path = latest_checkpoint(folder / "generator")
    _load_renamed(generator, _load_entry(path, "g_ema"), generator_key_table(generator), f"{path} 'g_ema'", FILTER_KEY)
    for group, directory in _controller_dirs(folder, list(generator.mapping.groups)).items():
        start, stop = generator.mapping.groups[group]
        generator.add_controller(group, load_controller(directory, stop - start))
    bank = Path(expressions) if expressions is not None else folder / "expressions.npy"
    if bank.is_file():
        try:
            generator.set_expressions(np.load(bank, allow_pickle=False))
        except ValueError as error:
            raise DataError(f"{bank} is not a numeric .npy array ({error})") from None
    elif expressions is not None:
        raise DataError(f"expression bank {bank} does not exist")
    elif "expression" in generator.controllers:
        log.warning("no expressions.npy in %s: the expression slice is left as the mapping produced it", folder)
    generator = generator.eval().requires_grad_(False).to(device)
    generator.mapping.update_w_avg(w_avg_samples)
    log.info("GAN-Control %s: checkpoint %s, controllers %s", folder, path.name, sorted(generator.controllers))
    return generator


def write_gan_control_folder(path: str | Path, generator: Generator, *, step: int = 10_000) -> Path:
    """Write `generator` (and its controllers and expression bank) in the released folder layout."""
    path = Path(path)
    cfg = generator.config
    sub_groups = {name: {"place_in_latent": list(bounds)} for name, bounds in cfg["groups"].items()}
    args = {"model_config": {"vanilla": False, "img_channels": cfg["img_channels"], "split_fc": True, "marge_fc": False,
                             "latent_size": cfg["style_dim"], "size": cfg["size"], "n_mlp": cfg["n_mlp"],
                             "channel_multiplier": cfg["channel_multiplier"], "conv_transpose": True,
                             "g_noise_mode": "normal", "lr_mlp": cfg["lr_mlp"], "mid_dim": cfg["mid_dim"],
                             "channel_max": cfg["channel_max"]},
            "training_config": {"sub_groups_dict": sub_groups}}
    ours = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    g_ema = {src: ours[dst] for src, dst in generator_key_table(generator).items()}
    blur = torch.tensor(BLUR_TAPS)
    kernel = torch.outer(blur, blur) / blur.sum() ** 2
    for j in range(len(generator.synthesis.torgbs) - 1):
        g_ema |= {f"convs.{2 * j}.conv.blur.kernel": kernel * 4, f"to_rgbs.{j}.upsample.kernel": kernel * 4}
    _write(path / "generator", args, {"g_ema": g_ema}, step)
    for group, controller in generator.controllers.items():
        state = {f"fc_stack.{k.removeprefix('layers.')}": v.detach().cpu().clone() for k, v in controller.state_dict().items()}
        args = {"model_config": {"latent_size": cfg["style_dim"], "size": cfg["size"], **controller.config, "loss": f"{group}_loss"}}
        _write(path / f"{group}_loss", args, {"controller": state}, step)
    if generator.expressions is not None:
        np.save(path / "expressions.npy", generator.expressions.cpu().numpy())
    return path


def _write(directory: Path, args: dict, checkpoint: dict, step: int) -> None:
    (directory / "checkpoint").mkdir(parents=True, exist_ok=True)
    (directory / "args.json").write_text(json.dumps(args, indent=2))
    torch.save(checkpoint, directory / "checkpoint" / f"{step:06d}.pt")
