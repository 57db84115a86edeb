"""Image batches as the aligners and embedders take them: uint8 0..255 or float [-1, 1] RGB [N, 3, H, W].

One home for the range conversions, imported by `exfacegan.align` and `exfacegan.embedders` alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exfacegan.errors import DataError


def check_batch(images: torch.Tensor) -> None:
    """Refuses anything but an RGB batch [N, 3, H, W] of uint8 or floats, in one line."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"images must be RGB batches [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(f"images must be uint8 (0..255) or float ([-1, 1]), got {images.dtype}")


def to_unit_range(images: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 0..255 -> (x - 127.5) / 127.5; floats are taken as already in [-1, 1]; resized to size (H, W or both)."""
    check_batch(images)
    images = (images.float() - 127.5) / 127.5 if images.dtype == torch.uint8 else images.float()
    size = (size, size) if isinstance(size, int) else size
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return images


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] on the images' device: uint8 as is, [-1, 1] floats as round((x + 1) * 127.5), clamped."""
    check_batch(images)
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # +128 then truncation = rounding


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] on the CPU (the layout dlib reads) from uint8 or [-1, 1] float [N, 3, H, W]."""
    return to_pixels(images).permute(0, 2, 3, 1).contiguous().cpu()
