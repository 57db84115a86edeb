"""GAN-Control (Shoshan et al., ICCV 2021): the released FFHQ generator and its attribute controllers.

Our own modules for the model amazon-science/gan-control distributes. The generator is a
StyleGAN2 (rosinality layout, 512x512, 16 ws, transposed-convolution upsampling) whose mapping is
split into groups: each group has its own MLP (pixel norm, `n_mlp` scaled linear layers through a
256-wide middle) on its slice of z, and w is the concatenation of the group outputs:
id 0:128, expression 128:192, orientation 192:256, gamma (illumination) 256:320, age 320:384,
hair 384:448, other 448:512. Each attribute controller is an MLP from an attribute value (pose in
degrees [yaw, pitch, roll], age in years, 27 spherical-harmonics lighting coefficients, 64 3DMM
expression coefficients, hair colour) to its group's slice of w.

Controllers and their random attributes: `exfacegan.gans.gan_control_controllers`; the released
folder layout (loading and writing): `exfacegan.gans.gan_control_folder`.

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

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.errors import CheckpointError, ConfigError, DataError
from exfacegan.gans.gan_control_controllers import AttributeRanges, Controller, random_attributes, scaled_mlp
from exfacegan.gans.ops.fc import FullyConnectedLayer
from exfacegan.gans.ops.upfirdn2d import fir_filter2d, setup_filter, upsample2d
from exfacegan.gans.recorded import records_init_kwargs
from exfacegan.gans.stylegan_common import check_synthesis_input

GROUPS: dict[str, tuple[int, int]] = {
    "id": (0, 128), "expression": (128, 192), "orientation": (192, 256), "gamma": (256, 320),
    "age": (320, 384), "hair": (384, 448), "other": (448, 512),
}
CONTROLLED_GROUPS = ("orientation", "age", "gamma", "expression")  # those ExFaceGAN randomises
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
SQRT2 = math.sqrt(2.0)
W_AVG_SAMPLES = 10_000  # z drawn (seed 0) for mapping.w_avg, which the checkpoints do not hold


# ----------------------------------------------------------------------------------------------
# Layers


class ModulatedConv(nn.Module):
    """Style-modulated convolution; with `up`, a stride-2 transposed convolution then the blur filter.

    Computed by scaling the activations rather than the weights (one shared kernel for the batch);
    demodulation scales the output channels, which commutes with the per-channel blur.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, *,
                 demodulate: bool = True, up: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.up = up
        self.register_buffer("resample_filter", setup_filter(BLUR_TAPS), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        weight = self.weight[0] * self.weight_gain
        x = x * styles[:, :, None, None].to(x.dtype)
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
            x = fir_filter2d(x, self.resample_filter, (1, 1, 1, 1), gain=4.0)
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
        self.register_buffer("resample_filter", setup_filter(BLUR_TAPS), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        y = self.conv(x, w) + self.bias.to(x.dtype)
        return y if skip is None else y + upsample2d(skip, self.resample_filter)


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
        check_synthesis_input(ws, noise_mode, self.num_ws, self.w_dim)
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.layers[0](x, ws[:, 0], noise_mode)
        image = self.torgbs[0](x, ws[:, 1], None)
        for block, torgb in enumerate(self.torgbs[1:]):
            index = 1 + 2 * block
            x = self.layers[index](x, ws[:, index], noise_mode)
            x = self.layers[index + 1](x, ws[:, index + 1], noise_mode)
            image = torgb(x, ws[:, index + 2], image)
        return image.float()




@records_init_kwargs
class Generator(nn.Module):
    """GAN-Control generator with the project's generator interface (see CONTEXT.md).

    Keyword arguments follow generator/args.json (see `exfacegan.gans.gan_control_folder.generator_kwargs`); `channel_max`, `mid_dim`
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
