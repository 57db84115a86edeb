"""Input handling shared by the embedders: uint8 or [-1, 1] RGB batches -> float [-1, 1] at a given size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exfacegan.errors import DataError


def to_unit_range(images: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 0..255 -> (x - 127.5) / 127.5; floats are taken as already in [-1, 1]; resized to size (H, W or both)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"embedders take RGB batches [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = (images.float() - 127.5) / 127.5
    elif images.is_floating_point():
        images = images.float()
    else:
        raise DataError(f"embedders take uint8 or float images, got {images.dtype}")
    size = (size, size) if isinstance(size, int) else size
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return images


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float [N, 3, H, W] -> uint8 [N, H, W, 3] on the CPU (the layout dlib reads)."""
    pixels = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu()
