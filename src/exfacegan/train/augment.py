"""Training augmentation on batched float images in [0, 1] on the training device (kornia ops).

`RandAugment` follows Cubuk et al. (2020): every image gets `num_ops` operations drawn uniformly
from `OPERATIONS`, each at one global `magnitude` on a 0..30 scale, with a random sign for the
symmetric ones. Unlike kornia's `auto.RandAugment`, which draws one set of operations per batch,
the draw here is per image; each operation runs once per round on the images that drew it.
"""
from __future__ import annotations

import math

import kornia.color
import kornia.enhance
import kornia.geometry.transform
import torch
from torch import nn

from exfacegan.errors import ConfigError

MAX_MAGNITUDE = 30
OPERATIONS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
              "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
# Strength at magnitude 30 (the torchvision / RandAugment paper table); translate is a fraction of the width.
STRENGTH = {"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331, "translate_y": 150 / 331, "rotate": 30.0,
            "brightness": 0.9, "color": 0.9, "contrast": 0.9, "sharpness": 0.9, "posterize": 4.0, "solarize": 1.0}
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
          "sharpness"}


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Warp [B, C, H, W] by source->destination pixel affines `matrix` [B, 2, 3]; zeros enter at the borders."""
    return kornia.geometry.transform.warp_affine(x, matrix, x.shape[-2:], padding_mode="zeros", align_corners=False)


def _about_centre(linear: torch.Tensor, shift: torch.Tensor, height: int, width: int) -> torch.Tensor:
    centre = linear.new_tensor([(width - 1) / 2, (height - 1) / 2])
    offset = centre - (linear @ centre) + shift
    return torch.cat([linear, offset[:, :, None]], dim=2)


def _geometric(name: str, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    linear = torch.eye(2, dtype=x.dtype, device=x.device).repeat(b, 1, 1)
    shift = x.new_zeros(b, 2)
    if name == "shear_x":
        linear[:, 0, 1] = value
    elif name == "shear_y":
        linear[:, 1, 0] = value
    elif name == "translate_x":
        shift[:, 0] = value * w
    elif name == "translate_y":
        shift[:, 1] = value * h
    else:
        angle = value * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        linear = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _warp(x, _about_centre(linear, shift, h, w))


def _blend(x: torch.Tensor, base: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (base + factor.view(-1, 1, 1, 1) * (x - base)).clamp(0, 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return torch.where(high > low, (x - low) * scale, x).clamp(0, 1)


def apply_operation(name: str, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One RandAugment operation on [B, 3, H, W] in [0, 1]; `value` [B] is the signed strength."""
    if name == "identity":
        return x
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _geometric(name, x, value)
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + value)
    if name == "color":
        return _blend(x, kornia.color.rgb_to_grayscale(x).expand_as(x), 1 + value)
    if name == "contrast":
        mean = kornia.color.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), 1 + value)
    if name == "sharpness":
        return kornia.enhance.sharpness(x, 1 + value).clamp(0, 1)
    if name == "posterize":
        return kornia.enhance.posterize(x, (8 - value.floor()).to(torch.int64))
    if name == "solarize":
        return kornia.enhance.solarize(x, 1 - value)
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return kornia.enhance.equalize(x)
    raise ConfigError(f"unknown augmentation operation {name!r}; choose from {OPERATIONS}")


class RandAugment(nn.Module):
    def __init__(self, num_ops: int = 2, magnitude: float = 9, operations: tuple[str, ...] = OPERATIONS) -> None:
        super().__init__()
        if not 0 <= magnitude <= MAX_MAGNITUDE or num_ops < 1:
            raise ConfigError(f"RandAugment needs num_ops >= 1 and magnitude in [0, 30], got {num_ops}, {magnitude}")
        unknown = set(operations) - set(OPERATIONS)
        if unknown:
            raise ConfigError(f"unknown augmentation operations {sorted(unknown)}; choose from {OPERATIONS}")
        self.num_ops, self.magnitude, self.operations = int(num_ops), float(magnitude), tuple(operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_ops):
            choice = torch.randint(len(self.operations), (len(x),), device=x.device)
            sign = torch.randint(0, 2, (len(x),), device=x.device, dtype=x.dtype) * 2 - 1
            out = x.clone()
            for index, name in enumerate(self.operations):
                rows = (choice == index).nonzero().squeeze(1)
                if len(rows) == 0 or name == "identity":
                    continue
                value = torch.full((len(rows),), STRENGTH.get(name, 0.0) * self.magnitude / MAX_MAGNITUDE,
                                   dtype=x.dtype, device=x.device)
                if name in SIGNED:
                    value = value * sign[rows]
                out[rows] = apply_operation(name, x[rows], value)
            x = out
        return x


class BatchAugment(nn.Module):
    """uint8 [B, 3, H, W] -> float in [-1, 1]: optional RandAugment, then a random horizontal flip per image."""

    def __init__(self, flip: bool = True, randaugment: RandAugment | None = None) -> None:
        super().__init__()
        self.flip, self.randaugment = flip, randaugment

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if self.randaugment is not None:
            x = self.randaugment(x)
        if self.flip:
            flipped = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
        return x.sub_(0.5).div_(0.5)
